"""Scenario ``soak``: 8 sessions talking for a long time; what the actors hold at the end.

Off in ``--quick``. Eight sessions stream silence from their microphones and say one long
reply after another (mock TTS) for ``VOXMESH_BENCH_SOAK_S`` seconds (default 1800, the
recovery issue's 30 minutes). Per actor, at the start (after one round of replies) and at
the end: RSS and open file descriptors; over the run: restarts, underruns, replies played,
requests lost (a say with neither audio nor an error). Memory that grows with the run's
length, not with the number of sessions, is a leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

import psutil

from .faults import ACTORS, Talker, actor_pids, streaming
from .mesh import Mesh, pool
from .registry import BenchContext, Outcome, Skip, scenario
from .report import Figure, Row

SESSIONS = 8
SOAK_S = float(os.environ.get("VOXMESH_BENCH_SOAK_S", "1800"))
UNDERRUNS = "voxmesh_transport_underruns_total"


@dataclass
class Usage:
    rss_mb: float
    fds: int


def usage(mesh: Mesh) -> dict[str, Usage]:
    """RSS and open fds of each actor process now."""
    out: dict[str, Usage] = {}
    for name, pid in actor_pids(mesh).items():
        if not pid:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            out[name] = Usage(proc.memory_info().rss / 2**20, proc.num_fds())
    return out


def restarts(mesh: Mesh) -> dict[str, int]:
    return {str(a["name"]): int(a.get("restarts", 0)) for a in mesh.status().actors}


async def _soak(mesh: Mesh, seconds: float, log: list[str]) -> dict[str, object]:
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(streaming(mesh.ws_url)) for _ in range(SESSIONS)]
        talkers = [Talker(c) for c in clients]
        try:
            # One round of replies first: models warm, buffers at their working size.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                any(s.outcome == "audio" for s in t.log) for t in talkers
            ):
                await asyncio.sleep(0.2)
            start = usage(mesh)
            underruns0 = mesh.metrics().get(UNDERRUNS, 0.0)
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                await asyncio.sleep(min(10.0, t_end - time.monotonic()))
                log.append(f"soak: {t_end - time.monotonic():.0f} s to go")
            end = usage(mesh)
            underruns = mesh.metrics().get(UNDERRUNS, 0.0) - underruns0
        finally:
            for t in talkers:
                await t.stop()
    says = [s for t in talkers for s in t.log]
    return {
        "start": start,
        "end": end,
        "underruns": underruns,
        "replies": sum(s.outcome == "audio" for s in says),
        "lost": sum(s.outcome == "lost" for s in says),
        "errors": sum(s.outcome == "error" for s in says),
    }


@scenario("soak", "8 sessions for 30 minutes: RSS and fds per actor, restarts, underruns", order=80)
def soak_scenario(ctx: BenchContext, out: Outcome) -> None:
    if ctx.quick:
        raise Skip("off in --quick (VOXMESH_BENCH_SOAK_S sets its length; default 30 min)")
    mesh = pool(ctx).get("mock")
    before = restarts(mesh)
    lines: list[str] = []
    result = asyncio.run(_soak(mesh, SOAK_S, lines))
    after = restarts(mesh)
    start = result["start"]
    end = result["end"]
    assert isinstance(start, dict) and isinstance(end, dict)
    fig = Figure(
        "soak",
        f"Soak: {SESSIONS} sessions talking for {SOAK_S / 60:.0f} min (mock TTS)",
        "per actor: RSS and open fds after one round of replies and at the end",
        unit="MB",
    )
    for name in ACTORS:
        s, e = start.get(name), end.get(name)
        if s is None or e is None:
            continue
        fig.add(
            Row(
                name,
                [e.rss_mb],
                {"actor": name},
                {
                    "rss_start_mb": round(s.rss_mb, 1),
                    "rss_end_mb": round(e.rss_mb, 1),
                    "fds_start": s.fds,
                    "fds_end": e.fds,
                    "restarts": after.get(name, 0) - before.get(name, 0),
                },
            )
        )
    fig.notes.append(
        f"replies played {result['replies']}, errors {result['errors']}, "
        f"requests lost {result['lost']} (must be 0), underruns {result['underruns']:.0f}"
    )
    out.add(fig)
