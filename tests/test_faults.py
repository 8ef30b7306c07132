"""No lost work when an actor dies: kill -9 of any actor, seen from outside
(docs/client-protocol.md).

Every test runs a real ``voxmesh up`` (mock TTS) and uses it as a user would: WebSocket
sessions (``voxmesh.client``) that stream mic audio (silence) and send ``say``, and
``GET /health``. Actors are killed with SIGKILL by the pid the supervisor reports.

- A: ``/health`` is 503, with the killed actor not ``up``, while it is gone; 200 once back.
- B: kill -9 of each actor with 4 sessions streaming: a fresh session is served; the old
  ones (the transport's excepted: their sockets close) work again, without a spurious
  ``interrupted``; every ``say`` gets audio or an ``error``.
- C: tts0 killed mid-reply: the reply ends ``done`` (whole) or ``failed`` with an ``error``.
- D: a router restarted under a session whose epoch is > 0: interrupt and say still work.
- E: a ``say`` sent while the router is down is served after the restart, or answered with
  ``error`` ``unavailable``.

Bounds are generous (the timing goals live in ``voxmesh bench --only faults``); every wait
is on a condition with a deadline, and every client is closed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from meshproc import MeshError, MeshProc, mesh_up, pid_running, wait_for

from voxmesh.actors.tts.adapters import mock_samples
from voxmesh.client import FRAME_BYTES, WsClient, ws_session
from voxmesh.speech.chunking import split_for_speech

ACTORS = ("router", "transport", "vad", "asr", "tts0")
HEALTH_STATES = {"up", "starting", "restarting", "lost"}
MIC_RATE = 16000
SESSIONS = 4

SERVED_S = 10.0  # kill -> a fresh session's say has its first frame
BACK_S = 30.0  # kill -> the supervisor reports a new pid and GET /health is 200 again
DOWN_SEEN_S = 5.0  # kill -> GET /health is no longer 200
ANSWER_S = 15.0  # a say -> its audio (audio_start and a frame) or an error
END_S = 20.0  # audio_start -> audio_end
HEALTH_POLL_S = 0.02
WATCHDOG_MS = 2000  # router.watchdog_ms (the default): a stuck turn shows within this

SHORT = "Hello there."  # 0.7 s of mock audio
MEDIUM = "This is a reply of a few seconds."  # 2 s
# Three sentences, 8.8 s of mock audio: longer than any ring, so a kill lands mid-reply.
LONG = (
    "This reply is long enough to be cut in the middle by a fault. It goes on for a while, "
    "sentence after sentence. And then, at last, it comes to its end."
)


# --- what one say got -------------------------------------------------------------------------


@dataclass
class Said:
    """One ``say`` and what came of it: ``audio``, ``error``, ``closed`` (the socket) or
    ``lost`` (nothing within the bound)."""

    text: str
    t_sent: float
    outcome: str = "lost"
    t_first_frame: float | None = None
    start: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        what = {"error": self.error, "audio": self.end}.get(self.outcome)
        return f"say {self.text[:24]!r}: {self.outcome} {what or ''} (events {self.events})"


def _classify(client: WsClient, said: Said, mark: int, first_frame: int) -> bool:
    """Fill ``said`` from what ``client`` has received since the say; True once decided."""
    events = [e.data for e in client.events[mark:]]
    said.events = [str(e.get("type")) for e in events]
    start = next((e for e in events if e.get("type") == "audio_start"), None)
    frames = [f for f in client.frames[first_frame:] if f.t >= said.t_sent]
    if start is not None and frames:
        said.outcome, said.start, said.t_first_frame = "audio", start, frames[0].t
        return True
    if start is None:
        said.error = next((e for e in events if e.get("type") == "error"), None)
        if said.error is not None:
            said.outcome = "error"
            return True
    if client.closed.is_set():
        said.outcome = "closed"
        return True
    return False


async def say(
    client: WsClient, text: str, *, answer_s: float = ANSWER_S, end_s: float | None = END_S
) -> Said:
    """Send ``say``; wait for its audio (then, with ``end_s``, its ``audio_end``) or an error."""
    mark, first_frame = client.mark(), len(client.frames)
    said = Said(text, time.monotonic())
    try:
        await client.say(text)
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        said.outcome = "closed"
        return said
    with contextlib.suppress(TimeoutError):
        await client.wait_until(
            lambda: _classify(client, said, mark, first_frame), answer_s, f"an answer to {text!r}"
        )
    if said.outcome == "audio" and end_s is not None and said.start is not None:
        utterance = said.start.get("utterance_id")
        with contextlib.suppress(TimeoutError, ConnectionError):
            said.end = await client.wait_event(
                "audio_end", end_s, since=mark, utterance_id=utterance
            )
    return said


# --- sessions ---------------------------------------------------------------------------------


def streaming(url: str) -> contextlib.AbstractAsyncContextManager[WsClient]:
    """A session whose microphone streams silence for as long as it is open."""
    return ws_session(url, sample_rate=MIC_RATE, player=True, stream_silence=True)


async def open_sessions(stack: contextlib.AsyncExitStack, url: str, n: int) -> list[WsClient]:
    """``n`` streaming sessions, each with one say answered (audio to its end)."""
    clients = [await stack.enter_async_context(streaming(url)) for _ in range(n)]
    first = await asyncio.gather(*(say(c, SHORT) for c in clients))
    for i, said in enumerate(first):
        assert said.outcome == "audio" and said.end is not None, f"session {i} before the kill"
    return clients


async def fresh_session_served(mesh: MeshProc, t_kill: float, bound_s: float) -> float:
    """Open a new session and say something until its first frame arrives (reconnecting
    while the transport is down, saying again after ``error`` ``unavailable``); the seconds
    from the kill to that frame. Fails after ``bound_s`` with what each attempt got."""
    tried: list[str] = []
    deadline = t_kill + bound_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            client = await WsClient.connect(mesh.ws_url, timeout=min(left, 3.0))
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
            tried.append(f"connect: {type(exc).__name__}")
            await asyncio.sleep(0.05)  # back off before trying again
            continue
        try:
            while (left := deadline - time.monotonic()) > 0:
                said = await say(client, SHORT, answer_s=left, end_s=None)
                tried.append(str(said))
                if said.outcome == "audio" and said.t_first_frame is not None:
                    return said.t_first_frame - t_kill
                if said.outcome == "closed":
                    break
                if said.outcome == "error":
                    code = (said.error or {}).get("code")
                    assert code == "unavailable", (
                        f"a fresh session's say was answered with error {code!r}: neither "
                        f"audio nor the retryable 'unavailable': {said}"
                    )
                await asyncio.sleep(0.1)  # 'unavailable' means retry; not in a tight loop
        finally:
            await client.close()
    raise AssertionError(
        f"no audio frame for a fresh session's say within {bound_s:g} s of the kill; "
        f"attempts: {_squeeze(tried)}"
    )


def _squeeze(items: list[str]) -> str:
    """Repeated items once with a count, so a long retry log stays readable."""
    runs: list[list[Any]] = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1][1] += 1
        else:
            runs.append([item, 1])
    return "; ".join(f"{item} x{n}" if n > 1 else item for item, n in runs[-12:])


def spurious_interrupts(clients: list[WsClient]) -> list[str]:
    return [
        f"session {i}: {e}"
        for i, c in enumerate(clients)
        for e in c.events_of("audio_end")
        if e.get("reason") == "interrupted"
    ]


# --- the mesh from outside -------------------------------------------------------------------


def actor_pid(mesh: MeshProc, name: str) -> int | None:
    pids: dict[str, int | None] = {}
    with contextlib.suppress(Exception):  # the supervisor is busy restarting: ask again
        pids = mesh.actor_pids()
    return pids.get(name)


def kill(mesh: MeshProc, name: str) -> tuple[int, float]:
    """SIGKILL actor ``name``; (its pid, the monotonic time of the kill)."""
    pid = wait_for(lambda: actor_pid(mesh, name), 10.0, f"the pid of {name}")
    os.kill(pid, signal.SIGKILL)
    return pid, time.monotonic()


def wait_back(mesh: MeshProc, name: str, old_pid: int, timeout_s: float = BACK_S) -> float:
    """Wait until ``name`` runs again (a new pid) and GET /health is 200; seconds waited."""
    t0 = time.monotonic()

    def back() -> bool:
        pid = actor_pid(mesh, name)
        return pid is not None and pid != old_pid and pid_running(pid) and mesh.healthy()

    try:
        wait_for(back, timeout_s, f"{name} restarted and GET /health == 200", interval_s=0.1)
    except MeshError as exc:
        code, body = health(mesh)
        raise AssertionError(
            f"{exc}; {name} pid now {actor_pid(mesh, name)} (was {old_pid}); /health {code} {body}"
        ) from None
    return time.monotonic() - t0


def health(mesh: MeshProc) -> tuple[int | None, dict[str, Any]]:
    """(status, JSON body) of GET /health; (None, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(mesh.url + "health", timeout=2.0) as resp:
            return int(resp.status), _json(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), _json(exc.read())
    except (OSError, ValueError):
        return None, {}


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {"unparsable": raw[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {"not_an_object": body}


def states(body: dict[str, Any]) -> dict[str, Any]:
    actors = body.get("actors")
    return dict(actors) if isinstance(actors, dict) else {}


# --- A: /health tells the truth --------------------------------------------------------------


@pytest.fixture(scope="module")
def health_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("faults-health"), tts="mock") as running:
        yield running


def check_healthy_body(body: dict[str, Any]) -> None:
    got = states(body)
    assert set(got) >= set(ACTORS) - {"router"}, f"/health 200 lists {sorted(got)}"
    assert all(s == "up" for s in got.values()), f"/health 200 but not every actor up: {got}"


@pytest.mark.parametrize("name", ["tts0", "asr", "vad", "transport", "router"])
def test_health_is_503_while_an_actor_is_gone(health_mesh: MeshProc, name: str) -> None:
    mesh = health_mesh
    wait_for(mesh.healthy, BACK_S, "GET /health == 200 before the kill", interval_s=0.1)
    code, body = health(mesh)
    assert code == 200, (code, body)
    check_healthy_body(body)

    old_pid, t_kill = kill(mesh, name)
    seen: list[tuple[float, int | None, dict[str, Any]]] = []
    while time.monotonic() - t_kill < DOWN_SEEN_S:
        code, body = health(mesh)
        seen.append((time.monotonic() - t_kill, code, body))
        if code != 200:
            break
        if actor_pid(mesh, name) not in (None, old_pid):
            # A warm standby (mesh.standby: the ASR by default) took over within a poll:
            # 200 is the truth again, from the new process. Nothing more to see here.
            check_healthy_body(body)
            return
        time.sleep(HEALTH_POLL_S)
    t_down, code, body = seen[-1]
    assert code != 200, (
        f"/health stayed 200 for {DOWN_SEEN_S:g} s after kill -9 of {name} "
        f"({len(seen)} polls); last body {body}"
    )
    if name != "transport":  # with the transport gone nothing answers; that is not a 200
        assert code == 503, f"/health answered {code} after kill -9 of {name}: {body}"
        assert states(body).get(name) != "up", f"/health 503 but {name} 'up': {body}"
        if name != "router":  # the transport may not know the router's name for itself
            assert states(body).get(name) in HEALTH_STATES - {"up"}, (name, body)

    # Until it is back: every answer is a truthful 503 (or none while the transport is down).
    deadline = time.monotonic() + BACK_S
    while True:
        code, body = health(mesh)
        bad = set(states(body).values()) - HEALTH_STATES
        assert not bad, f"/health states outside {sorted(HEALTH_STATES)}: {body}"
        if code == 200:
            check_healthy_body(body)
            break
        assert code in (None, 503), f"/health answered {code}: {body}"
        if code == 503 and name != "router":
            # A new transport not yet told the mesh's states knows only its router link:
            # it says so (mesh_ready false) and claims nothing about the others.
            got = states(body)
            untold = body.get("mesh_ready") is False and set(got) <= {"router"}
            assert untold or any(s != "up" for s in got.values()), (
                f"/health 503 with every actor up: {body}"
            )
        assert time.monotonic() < deadline, (
            f"/health not 200 again within {BACK_S:g} s of kill -9 of {name}: {code} {body}"
        )
        time.sleep(HEALTH_POLL_S)
    new_pid = actor_pid(mesh, name)
    assert new_pid is not None and new_pid != old_pid, (
        f"/health 200 again but the supervisor reports {name} pid {new_pid} (was {old_pid})"
    )
    assert t_down < DOWN_SEEN_S


# --- B: kill -9 of each actor with 4 sessions streaming --------------------------------------


@pytest.mark.parametrize("name", ACTORS)
async def test_kill_any_actor_loses_no_work(tmp_path: Path, name: str) -> None:
    with mesh_up(tmp_path, tts="mock") as mesh:
        async with contextlib.AsyncExitStack() as stack:
            olds = await open_sessions(stack, mesh.ws_url, SESSIONS)
            old_pid, t_kill = await asyncio.to_thread(kill, mesh, name)
            # A say right after the kill, while the actor is down: never lost without a word.
            during = (
                asyncio.create_task(say(olds[0], "Sent while an actor is down."))
                if name != "transport"
                else None
            )
            try:
                served_s = await fresh_session_served(mesh, t_kill, SERVED_S)
            finally:
                said_during = await during if during is not None else None
            assert served_s <= SERVED_S
            await asyncio.to_thread(wait_back, mesh, name, old_pid)

            if name == "transport":  # their sockets went with it: closed, not hanging
                for i, c in enumerate(olds):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(c.closed.wait(), 10.0)
                    assert c.closed.is_set(), f"old session {i} still open after the transport died"
                return

            assert said_during is not None
            assert said_during.outcome in ("audio", "error"), (
                f"a say sent right after kill -9 of {name} got neither audio nor an error "
                f"within {ANSWER_S:g} s: {said_during}"
            )
            if said_during.outcome == "audio":
                assert said_during.end is not None, f"its audio never ended: {said_during}"
            for i, c in enumerate(olds):
                assert not c.closed.is_set(), f"old session {i}'s socket closed ({name} killed)"
            after = await asyncio.gather(*(say(c, MEDIUM) for c in olds))
            for i, said in enumerate(after):
                assert said.outcome == "audio", f"old session {i}, after {name} was back: {said}"
                assert said.end is not None and said.end.get("reason") == "done", (
                    f"old session {i}, after {name} was back: {said}"
                )
            assert not spurious_interrupts(olds), (
                f"audio_end 'interrupted' that no client asked for, after kill -9 of {name}: "
                f"{spurious_interrupts(olds)}"
            )


# --- C: tts0 killed mid-reply ----------------------------------------------------------------


async def test_tts_killed_mid_reply_finishes_or_fails_with_an_error(tmp_path: Path) -> None:
    # A small out ring (1.28 s), so most of the reply is still unmade when tts0 dies.
    config = {"mesh": {"out_ring_frames": 64}}
    with mesh_up(tmp_path, tts="mock", config=config) as mesh:
        async with streaming(mesh.ws_url) as client:
            mark, first_frame = client.mark(), len(client.frames)
            await client.say(LONG)
            start = await client.wait_event("audio_start", 10.0, since=mark)
            await client.wait_until(
                lambda: len(client.frames) - first_frame >= 25, 10.0, "25 frames of the reply"
            )
            old_pid, _ = await asyncio.to_thread(kill, mesh, "tts0")
            end = await client.wait_event(
                "audio_end", 30.0, since=mark, utterance_id=start["utterance_id"]
            )
            got = len(client.frames) - first_frame
            # The reply's exact length: the mock voice per chunk, chunked as the router does.
            samples = sum(mock_samples(chunk) for chunk in split_for_speech(LONG))
            want = math.ceil(samples / (FRAME_BYTES // 2))
            assert end.get("reason") in ("done", "failed"), f"tts0 killed mid-reply: {end}"
            if end["reason"] == "done":
                assert got >= want - 3, (
                    f"audio_end 'done' after {got} of the reply's {want} frames: work was lost"
                )
            else:  # failed: an error says so, with it or right after it
                with contextlib.suppress(TimeoutError):
                    await client.wait_event("error", 5.0, since=mark)
                assert "error" in client.types(mark), (
                    f"audio_end 'failed' without an error event: {client.types(mark)}"
                )
            await asyncio.to_thread(wait_back, mesh, "tts0", old_pid)
            said = await say(client, MEDIUM)
            assert said.outcome == "audio" and said.end is not None, (
                f"the next say after the kill: {said}"
            )
            assert said.end.get("reason") == "done", str(said)


# --- D: a restarted router and a session with an epoch > 0 -----------------------------------


async def _interrupt_reply(client: WsClient) -> None:
    """Say LONG, let it play a little, interrupt it, wait for its end."""
    mark = client.mark()
    said = await say(client, LONG, end_s=None)
    assert said.outcome == "audio", str(said)
    await client.wait_until(
        lambda: sum(f.t >= said.t_sent for f in client.frames) >= 10, 10.0, "10 frames"
    )
    await client.interrupt()
    end = await client.wait_event("audio_end", 5.0, since=mark)
    assert end.get("reason") == "interrupted", end


async def _quiet(client: WsClient, gap_s: float, timeout_s: float) -> None:
    """Wait until no frame has arrived for ``gap_s``."""

    def quiet() -> bool:
        last = client.frames[-1].t if client.frames else 0.0
        return time.monotonic() - last >= gap_s

    await client.wait_until(quiet, timeout_s, f"{gap_s} s without frames", poll_s=0.02)


async def test_interrupt_and_say_work_after_a_router_restart(tmp_path: Path) -> None:
    with mesh_up(tmp_path, tts="mock") as mesh:
        async with streaming(mesh.ws_url) as client:
            for _ in range(2):  # the session's epoch is > 0 from here on
                await _interrupt_reply(client)
                await _quiet(client, 0.3, 5.0)
            old_pid, t_kill = await asyncio.to_thread(kill, mesh, "router")
            await asyncio.to_thread(wait_back, mesh, "router", old_pid)
            assert not client.closed.is_set(), "the session's socket closed with the router"
            since_kill = client.mark()

            # A long reply, interrupted: the audio stops.
            said = await say(client, LONG, end_s=None)
            assert said.outcome == "audio", f"a say after the router's restart: {said}"
            await client.wait_until(
                lambda: sum(f.t >= said.t_sent for f in client.frames) >= 25, 10.0, "25 frames"
            )
            mark = client.mark()
            t_interrupt = time.monotonic()
            await client.interrupt()
            stopped = await client.wait_for(
                lambda e: (
                    e.get("type") == "clear"
                    or (e.get("type") == "audio_end" and e.get("reason") == "interrupted")
                ),
                5.0,
                since=mark,
            )
            assert stopped, "no clear / audio_end interrupted after interrupt"
            await _quiet(client, 0.3, 5.0)
            more = sum(f.t > t_interrupt for f in client.frames)
            assert more <= 25, f"{more} frames arrived after the interrupt (router restarted)"

            # A new say plays at once, not queued behind the old reply, and only itself.
            short = await say(client, SHORT, answer_s=5.0)
            assert short.outcome == "audio", f"a say after the interrupt: {short}"
            assert short.t_first_frame is not None
            assert short.t_first_frame - short.t_sent <= 3.0, (
                f"first frame {short.t_first_frame - short.t_sent:.1f} s after the say"
            )
            assert short.start is not None and said.start is not None
            assert short.start["utterance_id"] != said.start["utterance_id"]
            assert short.end is not None and short.end.get("reason") == "done", str(short)
            frames = sum(short.t_sent <= f.t for f in client.frames)
            want = math.ceil(mock_samples(SHORT) / (FRAME_BYTES // 2))
            assert frames <= want + 5, f"{frames} frames for a {want}-frame say: old audio too"

            # No stuck turn (the watchdog reports one within watchdog_ms): wait that long.
            with contextlib.suppress(TimeoutError):
                await client.wait_event(
                    "error", WATCHDOG_MS / 1000 + 0.5, since=since_kill, code="stuck_turn"
                )
            errors = [e.data for e in client.events[since_kill:] if e.data.get("type") == "error"]
            assert not [e for e in errors if e.get("code") == "stuck_turn"], (
                f"stuck_turn after the router's restart (kill -9 at "
                f"-{time.monotonic() - t_kill:.1f} s); errors since: {errors}"
            )


# --- E: a say sent while the router is down --------------------------------------------------


async def test_say_while_the_router_is_down_is_served_or_refused(tmp_path: Path) -> None:
    with mesh_up(tmp_path, tts="mock") as mesh:
        async with streaming(mesh.ws_url) as client:
            warm = await say(client, SHORT)
            assert warm.outcome == "audio", str(warm)
            old_pid, _ = await asyncio.to_thread(kill, mesh, "router")
            said = await say(client, "Sent while the router is down.", answer_s=20.0)
            assert said.outcome in ("audio", "error"), (
                f"a say sent right after kill -9 of the router: silence for 20 s: {said}"
            )
            if said.outcome == "error":
                assert said.error is not None and said.error.get("code") == "unavailable", str(said)
            else:
                assert said.end is not None and said.end.get("reason") == "done", str(said)
            await asyncio.to_thread(wait_back, mesh, "router", old_pid)
            again = await say(client, SHORT)
            assert again.outcome == "audio" and again.end is not None, (
                f"a say once the router is back: {again}"
            )
