"""A second host for a test: ``voxmesh worker`` in a mount namespace of its own.

The worker host shares no memory with the session host: it runs under ``unshare --mount``
with a fresh tmpfs on ``/dev/shm`` (so no ring segment of the session host is visible to
it; supervisor/launch.py ``WorkerProcess``), and talks to the mesh only over loopback tcp
with CURVE. ``RemoteWorker`` always kills its whole process group on the way out and reaps
it, whatever the test did.

    keys = MeshKeys.make(tmp_path)                   # the mesh's pair + an allow-list dir
    config = remote_config(keys, port)               # [remote] + tts.devices = "none"
    with mesh_up(tmp_path, config=config) as mesh, RemoteWorker(keys.worker("w1"), ...) as w:
        wait_remote(mesh, "w1")
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproc import MeshProc, wait_for

from voxmesh.mesh import curve
from voxmesh.supervisor.launch import WorkerProcess

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


class RemoteWorker(WorkerProcess):
    """``voxmesh worker KIND`` on its "own host" (supervisor/launch.py), for a ``with``."""

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
        kind: str = "tts",
    ) -> None:
        super().__init__(
            tmp_path,
            connect=f"tcp://127.0.0.1:{port}",
            key=key,
            server_key=keys.server_public,
            name=name,
            engine=engine,
            env=mesh.env,
            kind=kind,
        )

    def __enter__(self) -> RemoteWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


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
