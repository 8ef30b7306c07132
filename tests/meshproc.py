"""Start a whole mesh (``python -m voxmesh up``) for a test, and make sure it leaves nothing.

    with mesh_up(tmp_path, tts="mock") as mesh:
        mesh.url, mesh.ws_url, mesh.port, mesh.pid, mesh.actor_pids(), mesh.log_text()

``MeshProc`` is the package's launcher (``supervisor/launch.py``: a free port, a private
run dir and state dir under ``tmp_path``, a log file, Ctrl-C then SIGKILL) with what tests
add: a ``config`` written as a TOML file, ``cli()`` against the mesh, and every supervisor
pid remembered (``STARTED_PIDS``) so conftest can attribute leftovers to the tests.
``mesh_up`` waits for ``GET /health`` == 200, prints the mesh's log when something fails,
and on exit asserts that nothing is left: no process of the group, no
``/dev/shm/voxmesh-<pid>-*`` segment, no run dir, no state file.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from voxmesh.supervisor.launch import (
    SHM_DIR,
    MeshError,
    MeshProcess,
    free_port,
    http_get,
    pid_running,
    segments_of,
    wait_for,
)

__all__ = [
    "SHM_DIR",
    "STARTED_PIDS",
    "MeshError",
    "MeshProc",
    "free_port",
    "http_status",
    "mesh_up",
    "pid_running",
    "segments_of",
    "toml_text",
    "wait_for",
]

# Every supervisor pid a test started, so conftest can attribute leftovers to the tests.
STARTED_PIDS: set[int] = set()


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    got = http_get(url, timeout_s)
    return got[0] if got else None


def toml_text(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML file for the flat sections a mesh config has."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(v)}" for key, v in values.items())
        lines.append("")
    return "\n".join(lines)


class MeshProc(MeshProcess):
    """A running ``voxmesh up`` (see the module docstring)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        tts: str = "mock",
        extra_env: Mapping[str, str] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        args: list[str] | None = None,
    ) -> None:
        with_config: list[str] = []
        if config:
            config_path = tmp_path / "mesh-test.toml"
            config_path.write_text(toml_text(config))
            with_config = ["--config", str(config_path)]
        super().__init__(tmp_path, tts=tts, env=extra_env, args=[*with_config, *(args or [])])
        self.tmp_path = tmp_path
        STARTED_PIDS.add(self.pid)

    def cli(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m voxmesh ARGS`` against this mesh (same state dir and port)."""
        return subprocess.run(
            [sys.executable, "-m", "voxmesh", *args],
            env=self.env,
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


@contextlib.contextmanager
def mesh_up(
    tmp_path: Path,
    *,
    tts: str = "mock",
    extra_env: Mapping[str, str] | None = None,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    args: list[str] | None = None,
) -> Iterator[MeshProc]:
    """A healthy mesh for the ``with`` body; asserts it stops leaving nothing behind."""
    mesh = MeshProc(tmp_path, tts=tts, extra_env=extra_env, config=config, args=args)
    failed = True
    try:
        mesh.wait_healthy()
        yield mesh
        failed = False
    finally:
        problems = mesh.stop()
        if failed or problems:
            sys.stderr.write(f"\n----- voxmesh up log ({mesh.log_path}) -----\n{mesh.log_text()}\n")
        if problems and not failed:
            raise MeshError("the mesh left things behind: " + "; ".join(problems))
