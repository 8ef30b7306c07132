"""A second host for a test: ``voxmesh worker`` in a mount namespace of its own.

The worker host shares no memory with the session host: it runs under ``unshare --mount``
with a fresh tmpfs on ``/dev/shm`` (so no ring segment of the session host is visible to
it), and talks to the mesh only over loopback tcp with CURVE. ``RemoteWorker`` always
kills its whole process group on the way out and reaps it, whatever the test did.

    keys = MeshKeys.make(tmp_path)                   # the mesh's pair + an allow-list dir
    config = remote_config(keys, port)               # [remote] + tts.devices = "none"
    with mesh_up(tmp_path, config=config) as mesh, RemoteWorker(keys.worker("w1"), ...) as w:
        wait_remote(mesh, "w1")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproc import MeshProc, wait_for

from voxmesh.mesh import curve

JOIN_S = 30.0  # a worker's READY seen in `voxmesh status` (it loads its engine first)


@dataclass(frozen=True)
class MeshKeys:
    root: Path
    server_secret: Path  # the mesh's .key_secret (remote.key)
    server_public: Path  # what workers are given
    allowed: Path  # remote.allowed

    @classmethod
    def make(cls, tmp_path: Path) -> MeshKeys:
        root = tmp_path / "keys"
        public, secret = curve.make_keys(root / "mesh", "server")
        allowed = root / "allowed"
        allowed.mkdir(parents=True)
        return cls(root, secret, public, allowed)

    def worker(self, name: str, *, allow: bool = True) -> Path:
        """A worker's secret key file; its public key goes into the allow-list if ``allow``."""
        public, secret = curve.make_keys(self.root / name, name)
        if allow:
            shutil.copy(public, self.allowed / public.name)
        return secret


def remote_config(keys: MeshKeys, port: int, **extra: dict[str, Any]) -> dict[str, Any]:
    """A session host that speaks only through workers, listening on loopback ``port``."""
    config: dict[str, dict[str, Any]] = {
        "tts": {"devices": "none"},
        "vad": {"turn_model": "off"},
        "remote": {
            "listen": f"tcp://127.0.0.1:{port}",
            "key": str(keys.server_secret),
            "allowed": str(keys.allowed),
        },
    }
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    return config


def _namespaced(argv: list[str]) -> list[str]:
    """``argv`` in a private mount namespace with its own, empty /dev/shm."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")  # an unprivileged user namespace gives the mount
    script = 'mount -t tmpfs tmpfs /dev/shm && exec "$@"'
    return [*unshare, "--", "sh", "-c", script, "sh", *argv]


class RemoteWorker:
    """``voxmesh worker tts`` on its "own host"; its log is ``log_path``."""

    def __init__(
        self,
        tmp_path: Path,
        mesh: MeshProc,
        keys: MeshKeys,
        key: Path,
        name: str,
        port: int,
        *,
        engine: str = "mock",
    ) -> None:
        self.name = name
        self.log_path = tmp_path / f"worker-{name}.log"
        argv = [
            sys.executable,
            "-m",
            "voxmesh",
            "worker",
            "tts",
            "--connect",
            f"tcp://127.0.0.1:{port}",
            "--key",
            str(key),
            "--server-key",
            str(keys.server_public),
            "--name",
            name,
            "--engine",
            engine,
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                _namespaced(argv),
                env=mesh.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: killed as a whole host would be
            )

    def __enter__(self) -> RemoteWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        """The host goes away: SIGKILL to every process of the worker, then reap."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def status(mesh: MeshProc) -> dict[str, Any]:
    got = mesh.cli("status", "--json", "--port", str(mesh.port))
    assert got.returncode == 0, got.stderr
    answer: dict[str, Any] = json.loads(got.stdout)
    return answer


def remote_row(mesh: MeshProc, name: str) -> dict[str, Any] | None:
    return next((a for a in status(mesh)["actors"] if a.get("name") == name), None)


def wait_remote(mesh: MeshProc, worker: RemoteWorker) -> dict[str, Any]:
    """The worker's row in `voxmesh status`, once it has joined."""

    def joined() -> dict[str, Any] | None:
        assert worker.proc.poll() is None, f"worker exited:\n{worker.log_text()}"
        return remote_row(mesh, worker.name)

    return wait_for(joined, JOIN_S, f"{worker.name} in voxmesh status", interval_s=0.2)
