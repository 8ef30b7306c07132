"""Scenario ``echo_soak``: does the bot ever interrupt itself on a speakerphone, over minutes?

The speakerphone target of the echo scenario (bench/echo.py), at length: echo at -10 dB and
100 ms, the user silent, server AEC on, for ``VOXMESH_BENCH_ECHO_SOAK_MIN`` minutes of bot
speech (default 10; ``--quick``: 1). Each session is a new room (seed) and says the long
reply back to back for about a minute; every ``clear`` is a false barge-in (the user said
nothing). One session with ``aec`` off shows what the canceller prevents: there the bot
stops for its own echo, hears it, and answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

from voxmesh.client import MicStream, WsClient

from .echo import DELAY_MS, ECHO_DB, RATE, REPLY, Speakerphone
from .mesh import pool
from .registry import BenchContext, Outcome, scenario
from .report import Figure, Row

SESSION_BOT_S = 60.0  # bot speech per session (a new room each)
SOAK_MIN = float(os.environ.get("VOXMESH_BENCH_ECHO_SOAK_MIN", "10"))
FRAME_S = 0.02


@dataclass
class Soak:
    bot_s: float = 0.0
    clears: int = 0
    replies: int = 0
    stopped: int = 0  # replies that ended "interrupted"


async def soak_session(url: str, aec: str, seed: int, bot_s: float) -> Soak:
    """One session saying the long reply until ``bot_s`` of it has played (bounded in time:
    a mesh that stops answering ends it, and what was measured stands)."""
    out = Soak()
    deadline = time.monotonic() + 3 * bot_s + 60.0
    async with contextlib.AsyncExitStack() as stack:
        c = await WsClient.connect(url, sample_rate=RATE, aec=aec)
        stack.push_async_callback(c.close)
        phone = Speakerphone(c, ECHO_DB, DELAY_MS, seed=seed)
        await stack.enter_async_context(MicStream(phone, RATE))
        since, first = c.mark(), len(c.frames)
        while (len(c.frames) - first) * FRAME_S < bot_s and time.monotonic() < deadline:
            mark = c.mark()
            await c.say(REPLY)
            try:
                end = await c.wait_event("audio_end", 60.0, since=mark)
            except TimeoutError:
                break
            out.replies += 1
            out.stopped += end.get("reason") == "interrupted"
        out.bot_s = (len(c.frames) - first) * FRAME_S
        out.clears = len(c.received("clear", since))
        await c.interrupt()
        await c.wait_quiet(0.3, 10.0)
    return out


@scenario("echo_soak", "speakerphone echo at length: false barge-ins in minutes of bot speech", 36)
def echo_soak_scenario(ctx: BenchContext, out: Outcome) -> None:
    minutes = 1.0 if ctx.quick else SOAK_MIN
    mesh = pool(ctx).get("piper")
    fig = out.add(
        Figure(
            "echo_soak",
            f"False barge-ins over minutes of bot speech (echo {ECHO_DB:g} dB, {DELAY_MS:g} ms, "
            "silent user, Piper)",
            "clears per session, the user silent; each session a new room, the long reply "
            "said back to back for ~1 minute",
            unit="clears",
            target="AEC on: 0 false barge-ins in 10 minutes of bot speech",
        )
    )
    plan = [("server", max(1, round(minutes * 60 / SESSION_BOT_S))), ("off", 1)]
    for aec, sessions in plan:
        runs: list[Soak] = []
        for seed in range(sessions):
            runs.append(asyncio.run(soak_session(mesh.ws_url, aec, seed, SESSION_BOT_S)))
            ctx.log(f"   aec {aec}, session {seed}: {runs[-1]}")
        bot_min = sum(r.bot_s for r in runs) / 60
        clears = sum(r.clears for r in runs)
        fig.add(
            Row(
                f"aec {aec}",
                [float(r.clears) for r in runs],
                {"aec": aec, "echo_db": ECHO_DB, "delay_ms": DELAY_MS},
                {
                    "bot_min": round(bot_min, 2),
                    "false_barge_ins": clears,
                    "per_min": round(clears / max(bot_min, 1e-9), 2),
                    "replies": sum(r.replies for r in runs),
                    "replies_stopped": sum(r.stopped for r in runs),
                    "sessions": len(runs),
                },
            )
        )
