"""The bench's mesh: ``voxmesh up`` started and stopped by the package's launcher
(``supervisor/launch.py``), plus what the bench reads off it (metrics, CPU, the actors'
heartbeat info). ``MeshPool`` keeps one mesh per configuration for the whole bench run, so
scenarios share the start-up cost; a mesh that does not start skips the scenario, with
the tail of its log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from voxmesh.supervisor.launch import MeshError, MeshProcess, http_get
from voxmesh.supervisor.status import StatusUnavailable

from .registry import BenchContext, Skip

HEALTH_TIMEOUT_S = 120.0  # Piper, Whisper and Silero load on a busy 2-core box


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


def histogram_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float
) -> float | None:
    """The ``q`` quantile of what histogram ``name`` observed between two scrapes
    (``parse_metrics``), linear within a bucket as Prometheus' histogram_quantile; None if
    it observed nothing."""
    prefix = name + '_bucket{le="'
    edges = sorted(
        (float(key[len(prefix) : -2]), after[key] - before.get(key, 0.0))
        for key in after
        if key.startswith(prefix)
    )
    total = edges[-1][1] if edges else 0.0
    if total <= 0:
        return None
    lo, below = 0.0, 0.0
    for le, count in edges:
        if count >= q * total:
            if le == float("inf"):
                return lo  # past the last finite bucket: its bound is all we know
            inside = count - below
            return lo + (le - lo) * ((q * total - below) / inside if inside else 1.0)
        lo, below = le, count
    return lo


class Mesh(MeshProcess):
    """One running ``voxmesh up --tts TTS`` in a temp dir of its own; ``env`` adds
    VOXMESH_* overrides (e.g. max sessions)."""

    def __init__(
        self, tts: str, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
    ) -> None:
        super().__init__(tts=tts, env=env, args=args)

    def metrics(self) -> dict[str, float]:
        got = http_get(self.url + "metrics")
        return parse_metrics(got[1]) if got and got[0] == 200 else {}

    def actor_info(self) -> dict[str, dict[str, Any]]:
        """Each actor's last heartbeat info, from the supervisor's STATUS ({} if none)."""
        try:
            status = self.status()
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

    def settle(self, quiet_pct: float = 10.0, timeout_s: float = 20.0) -> None:
        """Wait (bounded) for the start-up work to end: warm spares load their models after
        the mesh is healthy, and an idle figure taken then is theirs."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and self.idle_cpu_pct(0.5) > quiet_pct:
            pass

    def idle_cpu_pct(self, seconds: float = 2.0) -> float:
        """The mesh's CPU with no session (heartbeats, timers), % of one core."""
        cpu0, t0 = self.cpu_s(), time.monotonic()
        time.sleep(seconds)
        return self.cpu_pct_since(cpu0, t0)


class MeshPool:
    """One mesh at a time, by (tts, overrides): asking for another stops the running one
    (an idle mesh still costs CPU, which would skew the next measurement); ``close()``
    stops whatever runs."""

    def __init__(self) -> None:
        self._meshes: dict[tuple[Any, ...], Mesh] = {}

    def get(self, tts: str, env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> Mesh:
        key = (tts, tuple(sorted((env or {}).items())), tuple(args))
        mesh = self._meshes.get(key)
        if mesh is not None and mesh.proc.poll() is None:
            return mesh
        self.close()
        mesh = Mesh(tts, env, args)
        self._meshes[key] = mesh
        try:
            mesh.wait_healthy(HEALTH_TIMEOUT_S)
        except MeshError as exc:
            raise Skip(f"voxmesh up --tts {tts}: {exc}") from None
        mesh.settle()
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
