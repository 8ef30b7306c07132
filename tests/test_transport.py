"""The transport actor embedded in-process, against a small fake router and a real client.

The fake router is a ``Hub`` that answers as the protocol says: MESH_HEALTH ready on READY,
and for a ``say`` of "N" it writes N test frames into the session's out ring itself (as a
TTS faster than real time would), FIRST/LAST flags and the session's epoch included. Its
samples are a pattern unique over 65535 samples, so a lost or repeated sample shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import numpy as np
import pytest
import zmq
from promtext import sample

from voxmesh.actors.transport.actor import TransportActor
from voxmesh.client import WsClient
from voxmesh.mesh.hub import Hub, Peer
from voxmesh.mesh.protocol import (
    ClientEvent,
    ClientInterrupt,
    ClientText,
    Hold,
    MeshHealth,
    Message,
    PlaybackEnded,
    PlaybackStarted,
    Release,
    SessionClose,
    SessionOpen,
    Stop,
)
from voxmesh.mesh.ring import (
    FLAG_FIRST,
    FLAG_LAST,
    MIC_FRAME_BYTES,
    OUT_FRAME_BYTES,
    OUT_FRAME_SAMPLES,
    Geometry,
    MicReader,
    RingSegment,
    Slot,
    segment_name,
)
from voxmesh.mesh.settings import LiveKitSettings, ServerSettings
from voxmesh.mesh.spec import MeshPlace

FRAME_S = 0.02
LEAD_MS = 60
LEAD_SAMPLES = 48 * LEAD_MS
MAX_MESSAGE_BYTES = 64 * 1024
SLOTS = 3
HEARTBEAT_S = 0.2
T = TypeVar("T", bound=Message)


def pattern(n: int) -> bytes:
    """n samples, all distinct while n <= 65535."""
    i = np.arange(n, dtype=np.int64)
    return ((i * 7919) % 65535 - 32767).astype("<i2").tobytes()


def utterance_frames(n_frames: int) -> list[bytes]:
    pcm = pattern(n_frames * OUT_FRAME_SAMPLES)
    return [pcm[k * OUT_FRAME_BYTES : (k + 1) * OUT_FRAME_BYTES] for k in range(n_frames)]


class FakeRouter:
    """Just enough router: health, message log, and a TTS that writes test frames."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, seg: RingSegment):
        self.seg = seg
        self.hub = Hub(
            ctx, endpoint, self._on_message, on_ready=self._on_ready, heartbeat_s=HEARTBEAT_S
        )
        self.got: list[Message] = []
        self.epochs: dict[str, int] = {}
        self.slots: dict[str, int] = {}
        self.utterances = 0
        self.ready = True
        self.writers: set[asyncio.Task[None]] = set()
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.hub.tick(time.monotonic())
            await asyncio.sleep(0.02)

    def _on_ready(self, peer: Peer) -> None:
        self.hub.send(peer.name, MeshHealth(ready=self.ready, actors={"transport": "up"}))

    def _on_message(self, peer: Peer, msg: Message) -> None:
        self.got.append(msg)
        if isinstance(msg, SessionOpen):
            self.slots[msg.session] = msg.slot
            self.epochs.setdefault(msg.session, 0)
        elif isinstance(msg, ClientText) and msg.mode == "say":
            self.speak(msg.session, int(msg.text))

    def speak(self, session: str, n_frames: int) -> None:
        self.utterances += 1
        task = asyncio.create_task(self._write(session, self.utterances, n_frames))
        self.writers.add(task)
        task.add_done_callback(self.writers.discard)

    async def _write(self, session: str, utterance: int, n_frames: int) -> None:
        ring = self.seg.slots[self.slots[session]].out
        epoch = self.epochs[session]
        frames = utterance_frames(n_frames)
        for k, frame in enumerate(frames):
            while ring.free() == 0:
                await asyncio.sleep(0.005)
            if self.epochs[session] != epoch:  # STOPped: a TTS drops the rest
                return
            flags = (FLAG_FIRST if k == 0 else 0) | (FLAG_LAST if k == n_frames - 1 else 0)
            ring.write(frame, epoch=epoch, utterance=utterance, flags=flags)

    def send(self, msg: Message) -> None:
        if isinstance(msg, Stop):
            self.epochs[msg.session] = msg.epoch
        assert self.hub.send("transport", msg)

    def of(self, kind: type[T]) -> list[T]:
        return [m for m in self.got if isinstance(m, kind)]

    async def close(self) -> None:
        for task in [self._ticker, *self.writers]:
            task.cancel()
        await asyncio.gather(self._ticker, *self.writers, return_exceptions=True)
        self.hub.close()


@dataclass
class Mesh:
    ctx: zmq.Context[zmq.Socket[bytes]]
    actor: TransportActor
    router: FakeRouter
    seg: RingSegment
    url: str
    http: str
    clients: list[WsClient] = field(default_factory=list)

    async def client(self, **kw: Any) -> WsClient:
        c = await WsClient.connect(self.url, **kw)
        self.clients.append(c)
        return c

    async def slot(self, c: WsClient) -> Slot:
        """The client's ring slot, once the router has its SESSION_OPEN."""
        await until(lambda: c.session_id in self.router.slots, 2, "SESSION_OPEN")
        return self.seg.slots[self.router.slots[c.session_id]]


async def until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


MeshFactory = Callable[..., Awaitable[Mesh]]


@pytest.fixture
async def make_mesh() -> AsyncIterator[MeshFactory]:
    """Builds a ring segment, a fake router and the transport; tears all down always."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    run_dir = tempfile.mkdtemp(prefix="vxt-")  # short: ipc paths are limited to ~100 bytes
    built: list[tuple[Mesh, asyncio.Task[None]]] = []
    segs: list[RingSegment] = []

    async def build(**actor_kw: Any) -> Mesh:
        seg = RingSegment.create(
            segment_name(os.getpid(), "t" + secrets.token_hex(4)), Geometry(SLOTS, 64, 64)
        )
        segs.append(seg)
        endpoint = f"ipc://{run_dir}/router-{len(segs)}.sock"
        router = FakeRouter(ctx, endpoint, seg)
        livekit = actor_kw.pop("livekit", None)
        server: dict[str, Any] = {
            "port": 0,
            "lead_ms": LEAD_MS,
            "max_message_bytes": MAX_MESSAGE_BYTES,
            **actor_kw,
        }
        place = MeshPlace(endpoint, segment=seg.name, heartbeat_s=HEARTBEAT_S)
        actor = TransportActor("transport", place, ServerSettings(**server), livekit, context=ctx)
        task = asyncio.create_task(actor.run())
        mesh = Mesh(ctx, actor, router, seg, "", "")
        built.append((mesh, task))
        await until(lambda: actor.started and "transport" in router.hub.peers, 5, "start")
        mesh.http = f"http://127.0.0.1:{actor.port}"
        mesh.url = f"ws://127.0.0.1:{actor.port}/ws"
        return mesh

    try:
        yield build
    finally:
        for mesh, task in built:
            for c in mesh.clients:
                await c.close()
            mesh.actor.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            await mesh.router.close()
        for seg in segs:
            seg.close()
            seg.unlink()
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
async def mesh(make_mesh: MeshFactory) -> Mesh:
    return await make_mesh()


def intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# --- sessions -------------------------------------------------------------------------------


async def test_hello_ready_and_session_open(mesh: Mesh) -> None:
    c = await mesh.client(sample_rate=16000)
    assert c.ready is not None
    assert c.ready["sample_rate"] == 48000 and c.ready["frame_ms"] == 20
    assert len(c.session_id) == 8 and int(c.session_id, 16) >= 0
    await until(lambda: mesh.router.of(SessionOpen), 2, "SESSION_OPEN")
    opened = mesh.router.of(SessionOpen)[0]
    assert opened.session == c.session_id and opened.client == "ws"
    slot = mesh.seg.slots[opened.slot]
    assert slot.in_use and slot.generation == opened.generation

    await c.bye()
    assert await c.wait_closed(2) == aiohttp.WSCloseCode.OK
    await until(lambda: mesh.router.of(SessionClose), 2, "SESSION_CLOSE")
    assert mesh.router.of(SessionClose)[0].session == c.session_id
    assert not slot.in_use


@pytest.mark.parametrize(("asked", "partial_ms"), [(None, 0), (True, 1), (False, 0), (900, 900)])
async def test_hello_partials_reach_the_router(
    mesh: Mesh, asked: bool | int | None, partial_ms: int
) -> None:
    c = await mesh.client(sample_rate=None, player=False)
    await c.hello(16000, partials=asked)
    await until(lambda: mesh.router.of(SessionOpen), 2, "SESSION_OPEN")
    assert mesh.router.of(SessionOpen)[0].partial_ms == partial_ms


async def test_bad_inputs_get_errors_and_the_session_lives_on(mesh: Mesh) -> None:
    c = await mesh.client(sample_rate=None, player=False)

    async def expect(code: str, send: Callable[[], Awaitable[None]]) -> None:
        since = c.mark()
        await send()
        ev = await c.wait_event("error", 2, since=since)
        assert ev["code"] == code, ev
        assert isinstance(ev["message"], str) and ev["message"]

    await expect("hello_required", lambda: c.send_bytes(b"\x00\x01" * 100))
    await expect("bad_json", lambda: c.send_str("{not json"))
    await expect("hello_required", lambda: c.say("5"))
    await expect("bad_rate", lambda: c.send_json({"type": "hello", "sample_rate": 7999}))
    await expect("bad_rate", lambda: c.send_json({"type": "hello", "sample_rate": "16000"}))
    await expect("missing_field", lambda: c.send_json({"type": "hello"}))
    for bad in ("fast", -1, 1.5):
        hello = {"type": "hello", "sample_rate": 16000, "partials": bad}
        await expect("bad_field", lambda hello=hello: c.send_json(hello))
    await c.hello(16000)

    await expect("bad_json", lambda: c.send_str("]"))
    await expect("bad_message", lambda: c.send_json([1, 2]))
    await expect("bad_message", lambda: c.send_json({"text": "no type"}))
    await expect("unknown_type", lambda: c.send_json({"type": "dance"}))
    await expect("missing_field", lambda: c.send_json({"type": "text"}))
    await expect("bad_field", lambda: c.send_json({"type": "say", "text": 5}))
    await expect("bad_field", lambda: c.send_json({"type": "played", "samples": -1}))
    await expect("bad_field", lambda: c.send_json({"type": "played", "samples": True}))
    await expect("already_hello", lambda: c.send_json({"type": "hello", "sample_rate": 16000}))
    await expect("text_too_long", lambda: c.say("x" * 9000))
    await expect("too_large", lambda: c.send_bytes(bytes(MAX_MESSAGE_BYTES + 2)))
    await expect("too_large", lambda: c.text("é" * (MAX_MESSAGE_BYTES // 2 + 1)))

    since = c.mark()  # the session still works end to end
    await c.say("5")
    end = await c.wait_event("audio_end", 5, since=since)
    assert end["reason"] == "done"
    assert len(c.frames) == 5
    async with aiohttp.ClientSession() as http, http.get(mesh.http + "/metrics") as r:
        text = await r.text()
    assert sample(text, "voxmesh_transport_client_errors_total", code="bad_json") == 2


async def test_auth_token_required(make_mesh: MeshFactory) -> None:
    mesh = await make_mesh(auth_token="s3cret")
    c = await mesh.client(sample_rate=None, player=False)
    await c.send_json({"type": "hello", "sample_rate": 16000, "token": "wrong"})
    ev = await c.wait_event("error", 2)
    assert ev["code"] == "unauthorized"
    assert await c.wait_closed(2) == aiohttp.WSCloseCode.POLICY_VIOLATION
    ok = await mesh.client(sample_rate=16000, token="s3cret")
    assert ok.ready is not None


async def test_no_free_slot_is_an_error_until_one_frees(mesh: Mesh) -> None:
    held = [await mesh.client(player=False) for _ in range(SLOTS)]
    extra = await mesh.client(sample_rate=None, player=False)
    await extra.send_json({"type": "hello", "sample_rate": 16000})
    assert (await extra.wait_event("error", 2))["code"] == "no_slot"
    assert await extra.wait_closed(2) == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    await held[0].close()
    await until(lambda: len(mesh.actor.sessions) == SLOTS - 1, 2, "a slot to free")
    again = await mesh.client(player=False)
    assert again.ready is not None


async def test_client_messages_reach_the_router_and_events_come_back(mesh: Mesh) -> None:
    c = await mesh.client()
    await c.text("what time is it")
    await c.interrupt()
    await until(lambda: mesh.router.of(ClientInterrupt), 2, "CLIENT_INTERRUPT")
    (text,) = mesh.router.of(ClientText)
    assert (text.session, text.text, text.mode) == (c.session_id, "what time is it", "text")
    mesh.router.send(ClientEvent(session=c.session_id, event={"type": "state", "state": "x"}))
    assert (await c.wait_event("state", 2))["state"] == "x"


async def test_disconnect_closes_the_session(mesh: Mesh) -> None:
    c = await mesh.client()
    sid = c.session_id
    await c.close()
    await until(lambda: mesh.router.of(SessionClose), 2, "SESSION_CLOSE")
    assert mesh.router.of(SessionClose)[0].session == sid
    assert not mesh.actor.sessions


async def test_router_restart_gets_every_session_again(mesh: Mesh) -> None:
    c = await mesh.client()
    await mesh.router.close()  # the router dies...
    endpoint = mesh.actor.router_endpoint
    assert endpoint is not None
    mesh.router = FakeRouter(mesh.ctx, endpoint, mesh.seg)  # ...and comes back
    await until(lambda: mesh.router.of(SessionOpen), 5, "SESSION_OPEN re-sent")
    assert mesh.router.of(SessionOpen)[0].session == c.session_id


# --- output -----------------------------------------------------------------------------------


async def test_say_streams_paced_frames(mesh: Mesh) -> None:
    c = await mesh.client()
    n = 50  # one second
    await c.say(str(n))
    start = await c.wait_event("audio_start", 3)
    end = await c.wait_event("audio_end", 5)
    assert end == {"type": "audio_end", "utterance_id": start["utterance_id"], "reason": "done"}
    assert [len(f.data) for f in c.frames] == [OUT_FRAME_BYTES] * n
    assert c.audio() == b"".join(utterance_frames(n))

    times = c.frame_times()
    lead_frames = LEAD_MS // 20
    steady = intervals(times[lead_frames:])
    median = statistics.median(steady)
    assert 0.015 <= median <= 0.025, median
    span = times[-1] - times[0]
    ideal = (n - 1 - lead_frames) * FRAME_S
    assert ideal - 0.03 <= span <= ideal + 0.2, (span, ideal)
    grid = [t - times[lead_frames] - (k - lead_frames) * FRAME_S for k, t in enumerate(times)]
    off = sorted(abs(g) for g in grid[lead_frames:])
    p99 = sorted(steady)[int(0.99 * (len(steady) - 1))]
    print(
        f"\nframe interval median {median * 1000:.2f} ms p99 {p99 * 1000:.2f} ms, "
        f"grid deviation p50 {off[len(off) // 2] * 1000:.2f} ms max {off[-1] * 1000:.2f} ms"
    )
    await until(lambda: mesh.router.of(PlaybackEnded), 2, "PLAYBACK_ENDED")
    (started,) = mesh.router.of(PlaybackStarted)
    (ended,) = mesh.router.of(PlaybackEnded)
    assert started.utterance == ended.utterance == start["utterance_id"]
    assert ended.reason == "done" and ended.sent_samples == n * OUT_FRAME_SAMPLES
    assert mesh.actor.stats.frames_sent == n and mesh.actor.stats.underruns == 0


async def test_hold_stops_within_a_frame_and_clears(mesh: Mesh) -> None:
    c = await mesh.client(player=False)
    await c.say("100")
    await c.wait_until(lambda: len(c.frames) >= 15, 3, "15 frames")
    issued = time.monotonic()
    mesh.router.send(Hold(session=c.session_id, epoch=0, t_issued=issued))
    clear = await c.wait_event("clear", 2)
    n_at_clear = len(c.frames)
    assert clear["t_issued"] == pytest.approx(issued)
    latency = clear["t_last_frame"] - issued
    print(f"\nHOLD issued -> last frame sent: {latency * 1000:.2f} ms")
    assert latency <= FRAME_S
    sent_after = [f for f in c.frames if f.t > issued + FRAME_S]
    assert not sent_after
    await asyncio.sleep(0.2)  # asserting an absence: nothing may come during a hold
    assert len(c.frames) == n_at_clear
    assert not c.events_of("audio_end")


async def test_release_resumes_from_the_first_unheard_sample(mesh: Mesh) -> None:
    c = await mesh.client(player=True, ack_interval_s=0.1)
    n = 60  # 57600 samples: the pattern stays unique
    await c.say(str(n))
    assert c.player is not None
    player = c.player
    await c.wait_until(lambda: player.played_samples >= 20000, 3, "0.4 s played")
    mesh.router.send(Hold(session=c.session_id, epoch=0, t_issued=time.monotonic()))
    await c.wait_event("clear", 2)
    assert player.dropped_samples > 0  # the lead the client had buffered
    mesh.router.send(Release(session=c.session_id, epoch=0))
    await c.wait_event("audio_end", 5)
    await c.wait_until(player.drained, 2, "the player to drain")

    original = pattern(n * OUT_FRAME_SAMPLES)
    heard = c.played_audio()
    assert heard[: len(original)] == original  # nothing lost, nothing repeated
    tail = heard[len(original) :]
    assert len(tail) < OUT_FRAME_BYTES and not any(tail)  # at most one frame of padding
    assert len(c.audio()) == len(heard) + player.dropped_samples * 2
    (ended,) = mesh.router.of(PlaybackEnded)
    assert ended.reason == "done" and ended.sent_samples == n * OUT_FRAME_SAMPLES
    assert len(c.events_of("audio_start")) == 1


async def test_release_without_acks_resends_the_lead(mesh: Mesh) -> None:
    c = await mesh.client(player=False)
    n = 60
    await c.say(str(n))
    await c.wait_until(lambda: len(c.frames) >= 20, 3, "20 frames")
    mesh.router.send(Hold(session=c.session_id, epoch=0, t_issued=time.monotonic()))
    await c.wait_event("clear", 2)
    before = len(c.audio()) // 2
    mesh.router.send(Release(session=c.session_id, epoch=0))
    await c.wait_event("audio_end", 5)
    original = pattern(n * OUT_FRAME_SAMPLES)
    resumed_at = before - LEAD_SAMPLES  # heard = sent - lead
    after = c.audio()[before * 2 :]
    assert after[: len(original) - resumed_at * 2] == original[resumed_at * 2 :]
    assert not any(after[len(original) - resumed_at * 2 :])


async def test_stop_interrupts_and_the_next_turn_plays(mesh: Mesh) -> None:
    c = await mesh.client(player=False)
    await c.say("100")
    await c.wait_until(lambda: len(c.frames) >= 10, 3, "10 frames")
    mesh.router.send(Stop(session=c.session_id, epoch=1))
    end = await c.wait_event("audio_end", 2)
    assert end["reason"] == "interrupted"
    assert c.types().index("clear") < c.types().index("audio_end")
    await until(lambda: mesh.router.of(PlaybackEnded), 2, "PLAYBACK_ENDED")
    (ended,) = mesh.router.of(PlaybackEnded)
    assert ended.reason == "interrupted" and ended.epoch == 0
    assert ended.heard_samples <= ended.sent_samples - LEAD_SAMPLES + OUT_FRAME_SAMPLES
    n_stopped = len(c.frames)
    assert n_stopped < 20

    slot = await mesh.slot(c)
    assert slot.epoch == 1
    slot.out.write(bytes(OUT_FRAME_BYTES), epoch=0, utterance=99, flags=FLAG_FIRST)  # stale
    since = c.mark()
    await c.say("5")
    await c.wait_event("audio_end", 3, since=since, reason="done")
    assert len(c.frames) == n_stopped + 5
    assert c.audio(n_stopped) == b"".join(utterance_frames(5))
    assert mesh.actor.stats.stale_frames >= 1


async def test_hold_before_the_first_frame_only_gates(mesh: Mesh) -> None:
    c = await mesh.client(player=False)
    mesh.router.send(Hold(session=c.session_id, epoch=0, t_issued=time.monotonic()))
    await c.say("10")
    slot = await mesh.slot(c)
    await until(lambda: slot.out.head == 10, 2, "the reply in the ring")
    await asyncio.sleep(0.1)  # asserting an absence: held output stays in the ring
    assert not c.frames
    mesh.router.send(Release(session=c.session_id, epoch=0))
    await c.wait_event("audio_end", 3)
    assert c.audio() == b"".join(utterance_frames(10))
    assert not c.events_of("clear")


# --- input and HTTP ---------------------------------------------------------------------------


async def test_mic_pcm_is_resampled_into_16k_frames(mesh: Mesh) -> None:
    c = await mesh.client(sample_rate=44100)
    slot = await mesh.slot(c)
    reader = MicReader(slot.mic, from_start=True)
    t = np.arange(44100) / 44100
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    step = 883  # odd byte counts: a sample split across messages must survive
    for at in range(0, len(pcm), step):
        await c.send_bytes(pcm[at : at + step])
    await until(lambda: slot.mic.head >= 48, 3, "mic frames")
    frames = []
    while (f := reader.read()) is not None:
        frames.append(f.data)
    assert all(len(f) == MIC_FRAME_BYTES for f in frames)
    assert 48 <= len(frames) <= 50
    x = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x[1600:]))
    peak_hz = np.argmax(spectrum) * 16000 / (len(x) - 1600)
    assert abs(peak_hz - 440) < 5, peak_hz
    assert 0.6 < np.sqrt(np.mean(x[1600:] ** 2)) / (8000 / np.sqrt(2)) < 1.1


async def test_health_metrics_page_and_session(mesh: Mesh) -> None:
    await until(lambda: mesh.actor.health()[0], 3, "MESH_HEALTH ready")
    async with aiohttp.ClientSession() as http:
        async with http.get(mesh.http + "/health") as r:
            assert r.status == 200
            body = await r.json()
            assert body["ok"] and body["router"] == "alive" and body["mesh_ready"]
        mesh.router.hub.send("transport", MeshHealth(ready=False, actors={"tts0": "down"}))
        await until(lambda: not mesh.actor.health()[0], 2, "not ready")
        async with http.get(mesh.http + "/health") as r:
            assert r.status == 503
            assert (await r.json())["actors"] == {"router": "up", "tts0": "down"}
        async with http.get(mesh.http + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
            for name in ("sessions", "frames_sent_total", "underruns_total", "late_frames_total"):
                assert f"\nvoxmesh_transport_{name} " in text
        async with http.get(mesh.http + "/") as r:
            assert r.status == 200 and "html" in r.headers["Content-Type"]
        async with http.get(mesh.http + "/static/../actor.py") as r:
            assert r.status == 404
        async with http.post(mesh.http + "/session") as r:
            assert r.status == 404
            assert (await r.json())["type"] == "error"


async def test_a_slow_tts_causes_one_underrun_and_no_lost_audio(mesh: Mesh) -> None:
    c = await mesh.client(player=False)
    ring = (await mesh.slot(c)).out
    frames = utterance_frames(10)
    for k in range(5):
        ring.write(frames[k], epoch=0, utterance=7, flags=FLAG_FIRST if k == 0 else 0)
    await c.wait_until(lambda: len(c.frames) == 5, 2, "the first five frames")
    await until(lambda: mesh.actor.stats.underruns == 1, 2, "an underrun")
    for k in range(5, 10):
        ring.write(frames[k], epoch=0, utterance=7, flags=FLAG_LAST if k == 9 else 0)
    end = await c.wait_event("audio_end", 2)
    assert end["reason"] == "done" and c.audio() == b"".join(frames)
    assert mesh.actor.stats.underruns == 1


async def test_livekit_configured_serves_post_session(make_mesh: MeshFactory) -> None:
    livekit = LiveKitSettings(url="http://127.0.0.1:9", api_key="key", api_secret="s" * 32)
    mesh = await make_mesh(livekit=livekit)
    assert mesh.actor.bridge is not None
    async with aiohttp.ClientSession() as http, http.post(mesh.http + "/session") as r:
        assert r.status == 502  # nothing listens there: the room cannot be made
        body = await r.json()
        assert body["type"] == "error" and body["code"] == "livekit_failed"


async def test_a_client_gone_mid_utterance_closes_its_session(mesh: Mesh) -> None:
    c = await mesh.client(player=False)
    await c.say("100")
    await c.wait_until(lambda: len(c.frames) >= 5, 3, "five frames")
    await c.close()
    await until(lambda: mesh.router.of(SessionClose), 3, "SESSION_CLOSE")
    assert not mesh.actor.sessions and mesh.actor.stats.sessions_closed == 1


class RecordingLink:
    """A ClientLink without clear_with, as the LiveKit bridge's is."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.frames: list[bytes] = []
        self.clears = 0

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def send_audio(self, frame: bytes) -> None:
        self.frames.append(frame)

    async def clear(self) -> None:
        self.clears += 1


async def test_the_session_handle_serves_any_client_link(mesh: Mesh) -> None:
    link = RecordingLink()
    handle = await mesh.actor.open_session(link, client="livekit", greet=False)
    await until(lambda: handle.session_id in mesh.router.slots, 2, "SESSION_OPEN")
    assert mesh.router.of(SessionOpen)[0].client == "livekit"
    slot = mesh.seg.slots[mesh.router.slots[handle.session_id]]
    handle.push_mic(bytes(48000 // 50 * 2 * 10), 48000)  # 200 ms at 48 kHz
    handle.push_mic(bytes(320 * 2 * 5), 16000)  # a change of rate drains the resampler
    assert slot.mic.head >= 14
    await handle.client_message({"type": "say", "text": "20"})
    await until(lambda: len(link.frames) >= 10, 3, "frames")
    mesh.router.send(Stop(session=handle.session_id, epoch=1))
    await until(lambda: any(e.get("type") == "audio_end" for e in link.events), 2, "audio_end")
    assert link.clears == 1 and link.events[0]["type"] == "audio_start"
    await handle.client_message({"type": "nope"})
    await until(lambda: link.events[-1].get("code") == "unknown_type", 2, "an error event")
    await handle.close()
    await until(lambda: mesh.router.of(SessionClose), 2, "SESSION_CLOSE")
    assert not slot.in_use
