"""Pacing under load: the transport's frame clock with the box's cores busy, at normal and
at real-time priority (``server.realtime_priority``), alternated in one run.

16 mock sessions stream at once (as the scale scenario's jitter row): on a quiet box; beside
one busy process per core (standing in for ASR and TTS runs at their normal priority); and
busy with the bench's client loop at real-time priority too (the client shares the cores:
in the other rows its own wait for a core is in the arrival error). Per variant: arrival
error against the 20 ms grid at the client, the transport's own send lag (its histogram),
and its CPU per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
from collections.abc import Iterator
from multiprocessing.synchronize import Event

import psutil

from .mesh import Mesh, pool
from .mesh_scenarios import grid_errors, send_lag, stream_run
from .registry import BenchContext, Outcome, scenario
from .report import Figure, Row

SESSIONS = 16
TEXT = "x" * 134  # 8 s of mock audio per session
LEAD_FRAMES = 4  # the lead burst (server.lead_ms 60 + 1): not on the grid
RT_PRIORITY = 10
# busy-rt-client: busy, and the bench's client loop itself at SCHED_RR for the trial: what
# is left of the arrival error is then the mesh's, not the client's wait for a core.
LOADS = ("quiet", "busy", "busy-rt-client")


def _spin(stop: Event) -> None:
    if hasattr(os, "sched_setscheduler"):  # a real-time parent's policy is inherited
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    while not stop.is_set():
        sum(range(10_000))


def _transport(mesh: Mesh) -> psutil.Process | None:
    for p in mesh.processes():
        with contextlib.suppress(psutil.Error):
            if p.cmdline()[-1:] == ["transport"]:
                return p
    return None


def _cpu_s(p: psutil.Process | None) -> float:
    if p is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = p.cpu_times()
        return t.user + t.system
    return 0.0


@contextlib.contextmanager
def _client_round_robin(on: bool) -> Iterator[None]:
    """The calling thread (the client's event loop) at SCHED_RR while inside, if ``on``."""
    if not on:
        yield
        return
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _trial(mesh: Mesh, load: str) -> tuple[list[float], dict[str, float], float, bool]:
    """(grid errors ms, send lag, transport CPU us per frame, ran SCHED_RR)."""
    busy = load != "quiet"
    transport = _transport(mesh)
    rr = transport is not None and os.sched_getscheduler(transport.pid) == os.SCHED_RR
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    hogs = [spawn.Process(target=_spin, args=(stop,)) for _ in range(psutil.cpu_count() or 1)]
    try:
        for h in hogs if busy else []:
            h.start()
        m0, cpu0 = mesh.metrics(), _cpu_s(transport)
        with _client_round_robin(load == "busy-rt-client"):
            frames = asyncio.run(stream_run(mesh, SESSIONS, TEXT))
        cpu1, m1 = _cpu_s(transport), mesh.metrics()
    finally:
        stop.set()
        for h in hogs:
            if h.pid is not None:  # started
                h.join(5.0)
    errors = [e for f in frames for e in grid_errors(f, LEAD_FRAMES)]
    n = sum(len(f) for f in frames)
    return errors, send_lag(m0, m1), 1e6 * (cpu1 - cpu0) / max(n, 1), rr


@scenario("pacing", "frame clock under load: normal vs real-time priority, alternated", order=61)
def pacing_scenario(ctx: BenchContext, out: Outcome) -> None:
    fig = out.add(
        Figure(
            "pacing",
            f"Frame arrival vs the 20 ms grid, {SESSIONS} mock sessions, cores busy or not",
            "per session, |arrival of frame k - (phase + k x 20 ms)| after the lead burst, at "
            "the client; busy: one spinning process per core at normal priority",
            target=f"p99 <= 2 ms at {SESSIONS} sessions with the other actors busy",
        )
    )
    rounds = 1 if ctx.quick else 3
    variants = [0, RT_PRIORITY]
    got: dict[tuple[str, int], list[tuple[list[float], dict[str, float], float, bool]]] = {}
    for r in range(rounds):
        for load in LOADS:
            for prio in variants if r % 2 == 0 else variants[::-1]:
                env = {"VOXMESH_SERVER_REALTIME_PRIORITY": str(prio)}
                mesh = pool(ctx).get("mock", env)
                got.setdefault((load, prio), []).append(_trial(mesh, load))
    for (load, prio), trials in got.items():
        errors = [e for t in trials for e in t[0]]
        lags = [t[1] for t in trials]
        extra: dict[str, object] = {
            key: round(max(lag.get(key, 0.0) for lag in lags), 2)
            for key in ("send_lag_p50_ms", "send_lag_p99_ms")
        }
        extra["transport_us_per_frame"] = round(sum(t[2] for t in trials) / len(trials), 1)
        extra["sched_rr"] = all(t[3] for t in trials)
        label = f"{load}, realtime_priority {prio}"
        row = fig.add(Row(label, errors, {"load": load, "realtime_priority": prio}, extra))
        ctx.log(f"   {label}: p99 {row.summary.p99:.2f} ms, max {row.summary.max:.1f}, {extra}")
        if prio and not extra["sched_rr"]:
            fig.notes.append(f"{label}: SCHED_RR refused here (root or CAP_SYS_NICE needed)")
    fig.notes.append(f"{rounds} round(s) a variant, alternated; send lag: the worst round's")
