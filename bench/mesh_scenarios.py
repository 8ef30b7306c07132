"""Scenarios through a real mesh over WebSocket: pause, first-audio latency, jitter and scale.

Each drives sessions with the package's client (``client/``) against ``voxmesh up``
started by ``bench/mesh.py``; times are the client's ``time.monotonic()`` on arrival, and
the server's own stamps where an event carries them (same host, same clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable

import numpy as np

from voxmesh.client import WsClient, event_is, ws_session

from . import baselines, speech
from .mesh import Mesh, histogram_quantile, pool
from .registry import BenchContext, Outcome, scenario
from .report import Figure, Row

FRAME_S = 0.02


async def _clients(mesh: Mesh, n: int, stack: contextlib.AsyncExitStack) -> list[WsClient]:
    return [await stack.enter_async_context(ws_session(mesh.ws_url)) for _ in range(n)]


async def _settle(c: WsClient) -> None:
    """Stop whatever the bot says and wait for silence, so the next trial starts clean."""
    await c.interrupt()
    await c.wait_quiet(0.25, 5.0)


def _issued_clear(event: dict[str, object]) -> bool:
    return event.get("type") == "clear" and bool(event.get("t_issued"))


# --- 1. pause through the mesh ---------------------------------------------------------------


async def _pause_client(c: WsClient, trials: int, rng: random.Random) -> list[dict[str, float]]:
    out = []
    for _ in range(trials):
        first = len(c.frames)
        await c.say(speech.LONG_REPLY)
        await c.wait_frame(first, 15.0)
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        since = c.mark()
        t_sent = await c.interrupt()
        got = await c.next_event(_issued_clear, 5.0, since=since)
        t_issued = float(got.data["t_issued"])
        t_last = float(got.data.get("t_last_frame") or 0.0)
        out.append(
            {
                "stop_ms": (max(t_last, got.t) - t_issued) * 1e3,
                "last_frame_ms": max(0.0, t_last - t_issued) * 1e3,
                "client_ms": (got.t - t_sent) * 1e3,
                "to_router_ms": (t_issued - t_sent) * 1e3,
                "to_client_ms": (got.t - t_issued) * 1e3,
            }
        )
        await c.wait_quiet(0.25, 5.0)
    return out


async def _pause_run(mesh: Mesh, sessions: int, trials: int) -> list[dict[str, float]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = await _clients(mesh, sessions, stack)
        runs = await asyncio.gather(
            *(_pause_client(c, trials, random.Random(i)) for i, c in enumerate(clients))
        )
    return [r for run in runs for r in run]


@scenario("pause", "PAUSE -> last frame sent, through the mesh (mock TTS)", order=20)
def pause_scenario(ctx: BenchContext, out: Outcome) -> None:
    mesh = pool(ctx).get(ctx.tts or "mock")
    fig = Figure(
        "pause",
        f"Pause latency through the mesh ({mesh.tts} TTS)",
        "router's PAUSE/HOLD t_issued -> the transport has stopped: max(its last frame sent, "
        "`clear` received by the client) (an upper bound); and -> its last frame sent, 0 when "
        "no frame left after t_issued (server stamps of the `clear` event)",
        target="p99 <= 1 ms with 16 sessions streaming",
    )
    client = Figure(
        "pause_client",
        "Client interrupt -> `clear` received (through transport and router)",
        "client sends {type: interrupt} -> client receives `clear`",
    )
    for n in ctx.session_ladder([1, 4] if ctx.quick else [1, 4, 16]):
        trials = max(2, (6 if ctx.quick else 40) // n)
        res = asyncio.run(_pause_run(mesh, n, trials))
        params = {"sessions": n, "tts": mesh.tts}
        last = [r["last_frame_ms"] for r in res]
        fig.add(Row(f"{n} sess: issued -> stopped", [r["stop_ms"] for r in res], params))
        fig.add(
            Row(f"{n} sess: issued -> last frame", last, params,
                {"trials_with_a_frame_after_issue": sum(x > 0 for x in last)})
        )  # fmt: skip
        client.add(Row(f"{n} sessions", [r["client_ms"] for r in res], params))
        ctx.log(f"   {n} sessions: stop median {np.median([r['stop_ms'] for r in res]):.2f} ms")
        fig.notes.append(
            f"{n} sess, median stages: client interrupt -> router t_issued "
            f"{np.median([r['to_router_ms'] for r in res]):.2f} ms, t_issued -> `clear` at the "
            f"client {np.median([r['to_client_ms'] for r in res]):.2f} ms; trials with a frame "
            f"sent after t_issued: {sum(x > 0 for x in last)}/{len(last)}"
        )
    out.add(fig)
    out.add(client)


# --- 4. first-audio latency --------------------------------------------------------------------


async def _fal_run(
    mesh: Mesh, texts: list[str], between: Callable[[str], None] | None = None
) -> tuple[list[float], list[float]]:
    """(text sent -> first frame, text sent -> audio_start event) per text, in ms;
    ``between(text)`` runs after each trial (a baseline measured under the same load)."""
    fal, start = [], []
    async with ws_session(mesh.ws_url) as c:
        for text in texts:
            first, since = len(c.frames), c.mark()
            t0 = await c.text(text)
            got = await c.wait_frame(first, 15.0)
            fal.append((got.t - t0) * 1e3)
            with contextlib.suppress(TimeoutError):
                started = await c.next_event(event_is("audio_start"), 1.0, since=since)
                start.append((started.t - t0) * 1e3)
            await _settle(c)
            if between is not None:
                between(text)
    return fal, start


@scenario("fal", "text -> first reply frame (mock, Piper) and Piper called directly", order=40)
def fal_scenario(ctx: BenchContext, out: Outcome) -> None:
    texts = speech.sample(speech.UTTERANCES, 5 if ctx.quick else 24)
    fig = Figure(
        "fal",
        "First-audio latency: text -> first reply frame",
        "client sends {type: text} -> first binary frame arrives (echo responder); library "
        "rows: the same texts' first chunk through Piper in-process",
        target="p95 <= 100 ms, within 10 ms of Piper direct",
    )
    out.add(fig)
    meshes = pool(ctx)
    direct = baselines.PiperDirect()
    for engine in ("mock", "piper"):
        try:
            mesh = meshes.get(engine)
        except Exception as exc:  # Skip or a start failure: the other rows still count
            out.skip(f"fal ({engine})", str(exc))
            continue
        fal, started = asyncio.run(
            _fal_run(mesh, texts, direct.measure if engine == "piper" else None)
        )
        fig.add(Row(f"mesh, {engine} TTS", fal, {"engine": engine, "path": "mesh"}))
        if started:
            fig.add(Row(f"mesh, {engine} TTS: audio_start event", started, {"engine": engine}))
        note = mesh.tts_first_frame_note()
        if note:
            fig.notes.append(note)
    if not direct.ours:  # no Piper mesh: the library alone still counts
        for text in texts:
            direct.measure(text)
    for row in direct.rows():
        fig.add(row)
    mesh_piper = [r for r in fig.rows if r.params == {"engine": "piper", "path": "mesh"}]
    library = [r for r in fig.rows if r.params.get("path") == "library"]
    if mesh_piper and library:
        over = mesh_piper[0].summary.median - library[0].summary.median
        fig.notes.append(f"mesh overhead over Piper direct (medians): {over:+.1f} ms")


# --- 6. jitter and scale -------------------------------------------------------------------------


def grid_errors(frames: list[float], skip: int) -> list[float]:
    """|arrival - ideal 20 ms grid| in ms for frames after the lead burst; the grid's phase
    is the median offset (the grid itself is not known to the client)."""
    if len(frames) <= skip + 1:
        return []
    k = np.arange(len(frames))[skip:]
    offset = np.asarray(frames)[skip:] - k * FRAME_S
    return list(np.abs(offset - np.median(offset)) * 1e3)


async def stream_run(mesh: Mesh, n: int, text: str) -> list[list[float]]:
    """``n`` sessions each play ``text`` to the end; every session's frame arrival times."""
    async with contextlib.AsyncExitStack() as stack:
        clients = await _clients(mesh, n, stack)
        marks = [c.mark() for c in clients]
        for c in clients:
            await c.say(text)
        audio_s = len(text) * 0.06
        # A session whose audio never ends shows as dropped frames, not as a failure.
        await asyncio.gather(
            *(
                c.wait_event("audio_end", audio_s * 2 + 10.0, since=since)
                for c, since in zip(clients, marks, strict=True)
            ),
            return_exceptions=True,
        )
        return [c.frame_times() for c in clients]


# The transport's own frame clock: send time minus the time each frame was due to go out.
LAG_METRIC = "voxmesh_transport_send_lag_seconds"


def send_lag(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The transport's send lag p50/p99 (ms) between two scrapes."""
    return {
        f"send_lag_p{round(q * 100)}_ms": round(1e3 * v, 2)
        for q in (0.5, 0.99)
        if (v := histogram_quantile(before, after, LAG_METRIC, q)) is not None
    }


def _metric_delta(before: dict[str, float], after: dict[str, float], name: str) -> int:
    key = f"voxmesh_transport_{name}_total"
    return int(after.get(key, 0.0) - before.get(key, 0.0))


def _scale_mock(ctx: BenchContext, out: Outcome) -> None:
    from voxmesh.actors.tts.adapters import mock_samples

    base = ctx.session_ladder([1, 4, 16])  # always measured: docs/bench.md's reference points
    ladder = ctx.session_ladder([1, 4, 16] if ctx.quick else [1, 4, 16, 64, 128, 256])
    text = "x" * (50 if ctx.quick else 134)  # 3 s or 8 s of mock audio per session
    expected = math.ceil(mock_samples(text) / 960)
    default_slots = speech.mesh_config().mesh.max_sessions
    slots = {} if max(ladder) <= default_slots else {"VOXMESH_MESH_MAX_SESSIONS": str(max(ladder))}
    mesh = pool(ctx).get("mock", slots)
    skip = int(speech.mesh_config().server.lead_ms) // 20 + 1
    jitter = Figure(
        "jitter", "Frame arrival vs the 20 ms grid, by sessions (mock TTS)",
        "per session, |arrival of frame k - (phase + k x 20 ms)| after the lead burst, "
        "measured at the client (includes the client's own scheduling)",
        plot="scale", target="p99 <= 2 ms at 16 sessions", group_key="tts",
    )  # fmt: skip
    timeline = Figure(
        "jitter_timeline", "Frame arrival error over time (one session per sessions count)",
        "as in jitter; one session's frames in time order", plot="timeline", in_summary=False,
    )  # fmt: skip
    idle = mesh.idle_cpu_pct(1.0 if ctx.quick else 3.0)
    jitter.notes.append(f"mesh CPU while idle: {idle:.1f} % of one core (subtracted per session)")
    reached, held = 0, True
    for n in ladder:
        m0, cpu0, t0 = mesh.metrics(), mesh.cpu_s(), time.monotonic()
        per_session = asyncio.run(stream_run(mesh, n, text))
        pct, m1 = mesh.cpu_pct_since(cpu0, t0), mesh.metrics()
        errors = [grid_errors(f, skip) for f in per_session]
        flat = [e for errs in errors for e in errs]
        extra = {
            **send_lag(m0, m1),
            "underruns": _metric_delta(m0, m1, "underruns"),
            "late_frames": _metric_delta(m0, m1, "late_frames"),
            "dropped_frames": sum(max(0, expected - len(f)) for f in per_session),
            "mesh_cpu_pct": round(pct, 1),
            "cpu_pct_per_session": round(max(0.0, pct - idle) / n, 2),
        }
        row = Row(f"{n} sessions", flat, {"sessions": n, "tts": "mock"}, extra)
        jitter.add(row)
        first = per_session[0]
        timeline.add(
            Row(f"{n} sessions", errors[0], {"sessions": n},
                times=[t - first[0] for t in first[skip:]][: len(errors[0])])
        )  # fmt: skip
        p99 = row.summary.p99
        ctx.log(f"   {n} sessions: jitter p99 {p99:.2f} ms, {extra}")
        held = held and p99 <= 5.0
        reached = n if held else reached
        if not held and n >= max(base):
            break
    jitter.notes.append(f"sessions held with jitter p99 <= 5 ms (mock TTS): {reached}")
    out.add(jitter)
    out.add(timeline)


async def _fal_sessions(mesh: Mesh, n: int, texts: list[str]) -> list[float]:
    async with contextlib.AsyncExitStack() as stack:
        clients = await _clients(mesh, n, stack)

        async def one(c: WsClient, offset: int) -> list[float]:
            got = []
            for text in texts[offset:] + texts[:offset]:
                first = len(c.frames)
                t0 = await c.text(text)
                got.append(((await c.wait_frame(first, 30.0)).t - t0) * 1e3)
                await _settle(c)
            return got

        runs = await asyncio.gather(*(one(c, i) for i, c in enumerate(clients)))
    return [x for run in runs for x in run]


def _scale_piper(ctx: BenchContext, out: Outcome) -> None:
    mesh = pool(ctx).get("piper")
    fig = Figure(
        "scale_piper", "First-audio latency vs sessions (Piper)",
        "every session sends {type: text} in turn; text -> first reply frame",
        plot="scale", target="sessions held: FAL p95 <= 500 ms and send lag p99 <= 5 ms",
        group_key="tts",
    )  # fmt: skip
    texts = speech.sample(speech.UTTERANCES, 4)
    idle = mesh.idle_cpu_pct()
    reached = 0
    for n in ctx.session_ladder([1, 2, 4, 8, 16, 32, 64]):
        m0, cpu0, t0 = mesh.metrics(), mesh.cpu_s(), time.monotonic()
        fal = asyncio.run(_fal_sessions(mesh, n, texts))
        pct, wall, lag = (
            mesh.cpu_pct_since(cpu0, t0),
            time.monotonic() - t0,
            send_lag(m0, mesh.metrics()),
        )
        above_idle_s = max(0.0, pct - idle) / 100 * wall
        row = fig.add(
            Row(f"{n} sessions", fal, {"sessions": n, "tts": "piper"},
                {**lag, "mesh_cpu_pct": round(pct, 1),
                 "cpu_pct_per_session": round(max(0.0, pct - idle) / n, 2),
                 "cpu_s_per_reply": round(above_idle_s / len(fal), 3) if fal else None})
        )  # fmt: skip
        ctx.log(f"   piper {n} sessions: FAL p95 {row.summary.p95:.0f} ms, {lag}")
        if not (row.summary.p95 <= 500.0 and lag.get("send_lag_p99_ms", 0.0) <= 5.0):
            break
        reached = n
    fig.notes.append(
        f"sessions held with FAL p95 <= 500 ms and send lag p99 <= 5 ms (Piper): {reached}"
    )
    out.add(fig)


@scenario("scale", "jitter, underruns, drops as sessions rise; sessions held", order=60)
def scale_scenario(ctx: BenchContext, out: Outcome) -> None:
    _scale_mock(ctx, out)
    if ctx.quick and ctx.tts != "piper":
        out.skip("scale (Piper)", "full run only (or --tts piper): FAL p95 vs sessions")
        return
    _scale_piper(ctx, out)
