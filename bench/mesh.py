"""Start a whole mesh (``python -m voxmesh up``) for the bench, and always stop it.

The mesh runs in its own process group on a free port, with a private run dir and state
dir; its output goes to a log file whose tail is shown when it fails to start. Stopping is
Ctrl-C (SIGINT to the group), then SIGKILL after a grace period, then removal of any
``/dev/shm/voxmesh-<pid>-*`` segment it left. ``MeshPool`` keeps one mesh per
configuration for the whole bench run, so scenarios share the start-up cost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from .registry import BenchContext, Skip

HEALTH_TIMEOUT_S = 120.0  # Piper, Whisper and Silero load on a busy 2-core box
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (OSError, ValueError):
        return None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


class Mesh:
    """One running ``voxmesh up``; ``env`` adds VOXMESH_* overrides (e.g. max sessions)."""

    def __init__(self, tts: str, env: Mapping[str, str] | None = None) -> None:
        self.tts = tts
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="vxb-"))  # short: ipc paths have a limit
        self.log_path = self._dir / "mesh.log"
        (self._dir / "xdg").mkdir(mode=0o700)
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self._dir / "xdg"),
            "VOXMESH_MESH_RUN_DIR": str(self._dir / "run"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "voxmesh", "up", "--port", str(self.port), "--tts", tts]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self._dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> float:
        """Seconds until GET /health == 200; Skip (with the log's tail) if it never is."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise Skip(
                    f"voxmesh up --tts {self.tts} exited with {self.proc.returncode}: "
                    f"{self.log_tail(5)}"
                )
            got = http_get(self.url + "/health")
            if got is not None and got[0] == 200:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise Skip(f"voxmesh up --tts {self.tts} not healthy after {timeout_s:.0f} s")

    def metrics(self) -> dict[str, float]:
        got = http_get(self.url + "/metrics")
        return parse_metrics(got[1]) if got and got[0] == 200 else {}

    def actor_info(self) -> dict[str, dict[str, Any]]:
        """Each actor's last heartbeat info, from the supervisor's STATUS ({} if none)."""
        from voxmesh.supervisor.status import StatusUnavailable, query

        try:
            status = query(f"ipc://{self._dir / 'run'}/supervisor.sock", timeout_s=3.0)
        except StatusUnavailable:
            return {}
        return {str(a.get("name")): dict(a.get("info") or {}) for a in status.actors}

    def tts_first_frame_note(self) -> str:
        """The TTS actors' own SPEAK received -> first frame in the ring (their heartbeat)."""
        time.sleep(0.6)  # one heartbeat after the last trial
        parts = [
            f"{name}: p50 {info['first_frame_ms'].get('p50', 0):.0f} ms, "
            f"p95 {info['first_frame_ms'].get('p95', 0):.0f} ms"
            for name, info in self.actor_info().items()
            if isinstance(info.get("first_frame_ms"), dict) and info["first_frame_ms"]
        ]
        if not parts:
            return ""
        return f"TTS actor, SPEAK received -> first frame in the ring ({self.tts}): " + "; ".join(
            parts
        )

    def processes(self) -> list[psutil.Process]:
        """The supervisor and every actor (for CPU accounting)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def cpu_pct_since(self, cpu0: float, t0: float) -> float:
        """The mesh's CPU since (``cpu_s()``, ``time.monotonic()``) = (cpu0, t0), in % of
        one core."""
        wall = time.monotonic() - t0
        return 100.0 * (self.cpu_s() - cpu0) / wall if wall > 0 else 0.0

    def idle_cpu_pct(self, seconds: float = 2.0) -> float:
        """The mesh's CPU with no session (heartbeats, actors' polling), % of one core."""
        cpu0, t0 = self.cpu_s(), time.monotonic()
        time.sleep(seconds)
        return self.cpu_pct_since(cpu0, t0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        # Whatever did not stop by now is killed, group and all.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for seg in Path("/dev/shm").glob(f"voxmesh-{self.proc.pid}-*"):
            with contextlib.suppress(FileNotFoundError):
                seg.unlink()
        shutil.rmtree(self._dir, ignore_errors=True)


class MeshPool:
    """One mesh at a time, by (tts, overrides): asking for another stops the running one
    (an idle mesh still costs CPU, which would skew the next measurement); ``close()``
    stops whatever runs."""

    def __init__(self) -> None:
        self._meshes: dict[tuple[str, tuple[tuple[str, str], ...]], Mesh] = {}

    def get(self, tts: str, env: Mapping[str, str] | None = None) -> Mesh:
        key = (tts, tuple(sorted((env or {}).items())))
        mesh = self._meshes.get(key)
        if mesh is not None and mesh.proc.poll() is None:
            return mesh
        self.close()
        mesh = Mesh(tts, env)
        self._meshes[key] = mesh
        mesh.wait_healthy()
        return mesh

    def close(self) -> None:
        for mesh in self._meshes.values():
            mesh.stop()
        self._meshes.clear()


def pool(ctx: BenchContext) -> MeshPool:
    """The run's mesh pool (created on first use, closed when the run ends)."""
    meshes = ctx.shared.get("meshes")
    if not isinstance(meshes, MeshPool):
        meshes = MeshPool()
        ctx.shared["meshes"] = meshes
        ctx.on_close(meshes.close)
    return meshes
