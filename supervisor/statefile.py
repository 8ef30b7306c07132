"""Where a running mesh says where it is, so ``voxmesh status`` (and tests) can find it.

One JSON file per HTTP port: ``$XDG_RUNTIME_DIR/voxmesh/<port>.json`` when XDG_RUNTIME_DIR
is set, else ``/tmp/voxmesh-<uid>/<port>.json``. It holds the supervisor's pid, its control
endpoint (``ipc://<run_dir>/supervisor.sock``), the run dir, the ring segment and the URLs.
Written at start, removed after a clean stop; a file whose pid is dead is stale and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from voxmesh.mesh.ring import pid_alive


def state_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "voxmesh"
    return Path(tempfile.gettempdir()) / f"voxmesh-{os.getuid()}"


def state_path(port: int) -> Path:
    return state_dir() / f"{port}.json"


def write(port: int, state: dict[str, Any]) -> Path:
    """Atomically (re)write the state file for ``port``."""
    path = state_path(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{port}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)
    return path


def read(port: int) -> dict[str, Any] | None:
    """The state of the mesh on ``port`` if one is running (its supervisor is alive)."""
    try:
        state = json.loads(state_path(port).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not pid_alive(int(state.get("pid", 0))):
        return None
    return state


def remove(port: int, pid: int) -> None:
    """Remove the state file if it is still ours (a later mesh may have replaced it)."""
    path = state_path(port)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
