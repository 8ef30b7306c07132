"""The supervisor's part in the mesh's metrics (mesh/metrics.py): the multiprocess dir
``<run_dir>/metrics``, and the count of actor restarts, which only the supervisor knows.

``open`` empties the dir (a previous run's files would be added to this run's), names it in
this process's environment, which every actor inherits (supervisor/process.py starts them
with ``os.environ``), and only then imports prometheus_client: the library picks its
multiprocess mode once, at import, from the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("voxmesh.supervisor")

# mesh/metrics.py's MULTIPROC_ENV: not imported from there, that would import the library.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDir:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics"
        self._restarts: Counter | None = None
        self._mark_dead: Callable[[int, str], None] | None = None

    def open(self, actors: Iterable[str]) -> None:
        """Before the first actor starts: a fresh dir, and every actor's restarts at 0."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(mode=0o700, parents=True)
        imported_before = "prometheus_client" in sys.modules
        os.environ[MULTIPROC_ENV] = str(self.path)
        from prometheus_client.multiprocess import mark_process_dead

        from voxmesh.mesh import metrics

        if imported_before:  # an embedder's import: this process counts on its own
            log.warning(
                "prometheus_client was imported before %s: restarts not exported", self.path
            )
        self._restarts, self._mark_dead = metrics.ACTOR_RESTARTS, mark_process_dead
        for name in actors:
            self._restarts.labels(actor=name)

    def restarted(self, actor: str, dead_pid: int | None) -> None:
        """``actor``'s process ``dead_pid`` is being replaced."""
        if self._restarts is None or self._mark_dead is None:
            return
        self._restarts.labels(actor=actor).inc()
        if dead_pid is not None:  # its live gauges go with it (counters stay counted)
            self._mark_dead(dead_pid, str(self.path))

    def close(self) -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(self.path, ignore_errors=True)
