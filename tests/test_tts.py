"""The TTS actor embedded in-process: a fake router on a real Hub, a real ring segment.

Every test reads the out ring as the transport would and compares the samples with the
mock voice's documented pattern (``mock_pcm``), so a lost, repeated or misflagged frame
fails. The segment is created per test and always unlinked; sockets are inproc.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import zmq

from voxmesh.actors.tts import adapters
from voxmesh.actors.tts.actor import TtsActor, build
from voxmesh.actors.tts.adapters import (
    ENGINES,
    MOCK_PIECE,
    Engine,
    MockVoice,
    mock_pcm,
    mock_samples,
)
from voxmesh.actors.tts.streamer import Streamer
from voxmesh.mesh.hub import Hub, Peer
from voxmesh.mesh.protocol import (
    Message,
    ModelInfo,
    ModelList,
    ModelLoad,
    ModelUnload,
    Pause,
    Resume,
    SessionClose,
    Speak,
    SpeakDone,
    SpeakProgress,
    Stop,
)
from voxmesh.mesh.ring import FLAG_FIRST, FLAG_LAST, Frame, Geometry, OutRing, RingSegment
from voxmesh.mesh.settings import TtsSettings
from voxmesh.mesh.spec import ActorSpec, MeshPlace

FRAME = 960
TTS = "tts0"
SESSION = "s1"


# --- fixtures and helpers -------------------------------------------------------------------


@contextlib.contextmanager
def ring_segment(out_capacity: int = 256) -> Iterator[RingSegment]:
    name = f"voxmesh-{os.getpid()}-ttstest-{uuid.uuid4().hex[:8]}"
    seg = RingSegment.create(name, Geometry(slots=2, mic_capacity=4, out_capacity=out_capacity))
    try:
        for slot in seg.slots:
            slot.claim()  # as the transport does for a new session
        yield seg
    finally:
        seg.close()
        seg.unlink()


async def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)


@dataclass
class FakeRouter:
    """The router's side of the control plane: a Hub that records what the TTS sends."""

    hub: Hub
    received: list[Message] = field(default_factory=list)

    def on_message(self, peer: Peer, msg: Message) -> None:
        self.received.append(msg)

    def send(self, msg: Message) -> None:
        assert self.hub.send(TTS, msg)

    def of(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]

    async def reply(self, msg: Message, kind: type[Message], timeout: float = 10) -> Any:
        before = len(self.of(kind))
        self.send(msg)
        await wait_for(lambda: len(self.of(kind)) > before, timeout, kind.__name__)
        return self.of(kind)[before]


@dataclass
class Mesh:
    router: FakeRouter
    actor: TtsActor
    segment: RingSegment

    def ring(self, slot: int = 0) -> OutRing:
        return self.segment.slots[slot].out

    @property
    def streamer(self) -> Streamer:
        assert self.actor.streamer is not None
        return self.actor.streamer

    def done(self, utterance: int) -> list[SpeakDone]:
        return [d for d in self.router.of(SpeakDone) if d.utterance == utterance]


@contextlib.asynccontextmanager
async def running_tts(segment: RingSegment, **kwargs: Any) -> AsyncIterator[Mesh]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    endpoint = f"inproc://router-{uuid.uuid4().hex}"
    holder: list[FakeRouter] = []
    hub = Hub(ctx, endpoint, lambda p, m: holder[0].on_message(p, m), heartbeat_s=0.2)
    router = FakeRouter(hub)
    holder.append(router)
    kwargs.setdefault("engine", "mock")
    place = MeshPlace(endpoint, segment=segment.name, heartbeat_s=0.2)
    actor = TtsActor(TTS, place, TtsSettings(**kwargs), context=ctx)
    run = asyncio.ensure_future(actor.run())

    async def tick() -> None:
        while True:
            hub.tick(time.monotonic())
            await asyncio.sleep(0.05)

    ticker = asyncio.ensure_future(tick())
    try:
        await wait_for(lambda: TTS in hub.peers or run.done(), 30, "the actor's READY")
        if run.done():
            run.result()  # raise what stopped it
        yield Mesh(router, actor, segment)
    finally:
        actor.stop()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        try:
            await asyncio.wait_for(run, 10)
        finally:
            hub.close()
            ctx.term()


def speak(text: str, *, epoch: int = 1, utterance: int = 1, **kw: Any) -> Speak:
    return Speak(session=SESSION, slot=0, epoch=epoch, utterance=utterance, text=text, **kw)


async def read_frames(
    ring: OutRing, until_last: bool = True, timeout: float = 10, pace_s: float = 0.0
) -> list[Frame]:
    """Take frames as the transport does until a FLAG_LAST frame (or the ring stays empty)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = ring.read()
        if frame is None:
            if not until_last:
                return frames
            await asyncio.sleep(0.002)
            continue
        frames.append(frame)
        if until_last and frame.flags & FLAG_LAST:
            return frames
        if pace_s:
            await asyncio.sleep(pace_s)
    raise AssertionError(f"no last frame within {timeout} s ({len(frames)} frames read)")


def pcm_of(frames: list[Frame]) -> np.ndarray:
    return np.frombuffer(b"".join(f.data for f in frames), dtype=np.int16)


def expected_utterance(*texts: str) -> np.ndarray:
    """The mock's audio for these chunks, padded with zeros to whole frames."""
    n = sum(mock_samples(t) for t in texts)
    return np.concatenate([mock_pcm(n), np.zeros(-n % FRAME, np.int16)])


def check_utterance(frames: list[Frame], epoch: int, utterance: int, *texts: str) -> None:
    assert all(len(f.data) == 2 * FRAME for f in frames)
    assert [f.flags for f in frames] == [FLAG_FIRST] + [0] * (len(frames) - 2) + [FLAG_LAST]
    assert {(f.epoch, f.utterance) for f in frames} == {(epoch, utterance)}
    assert np.array_equal(pcm_of(frames), expected_utterance(*texts))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# --- the mock pattern itself ----------------------------------------------------------------


def test_mock_chunks_join_into_one_seamless_pattern() -> None:
    voice = MockVoice()
    texts = ["Hi.", " A longer second chunk.", "x"]
    joined = np.concatenate([p for t in texts for p in voice.synthesize(t, first=True)])
    assert np.array_equal(joined, mock_pcm(sum(mock_samples(t) for t in texts)))
    assert mock_samples("Hi.") % FRAME != 0  # chunks do not end on frame boundaries
    assert np.abs(joined).max() < 1000  # low amplitude


# --- streaming ------------------------------------------------------------------------------


def test_speak_writes_exact_frames_then_speak_done() -> None:
    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg) as mesh:
                mesh.router.send(speak("Hello there.", epoch=3, utterance=7))
                frames = await read_frames(mesh.ring())
                check_utterance(frames, 3, 7, "Hello there.")
                await wait_for(lambda: mesh.done(7), 5, "SPEAK_DONE")
                (done,) = mesh.done(7)
                assert (done.epoch, done.error) == (3, "")
                assert done.samples == mock_samples("Hello there.")

    run(scenario())


def test_multi_chunk_utterance_is_contiguous() -> None:
    texts = ["Hello there.", " How are you today?", " Fine."]

    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg) as mesh:
                for i, text in enumerate(texts):
                    mesh.router.send(
                        speak(text, utterance=2, first=i == 0, last=i == len(texts) - 1)
                    )
                frames = await read_frames(mesh.ring())
                check_utterance(frames, 1, 2, *texts)
                await wait_for(lambda: mesh.done(2), 5, "SPEAK_DONE")
                assert mesh.done(2)[0].samples == sum(mock_samples(t) for t in texts)
                # A second utterance starts a fresh pattern with its own FIRST frame.
                mesh.router.send(speak("Next.", utterance=3))
                check_utterance(await read_frames(mesh.ring()), 1, 3, "Next.")

    run(scenario())


def test_pause_stops_within_a_frame_and_resume_loses_nothing() -> None:
    text = "This reply is long enough to outlast a small ring. " * 2

    async def scenario() -> None:
        with ring_segment(out_capacity=16) as seg:
            async with running_tts(seg) as mesh:
                ring = mesh.ring()
                mesh.router.send(speak(text))
                frames: list[Frame] = []
                while len(frames) < 30:
                    frames += await read_frames(ring, until_last=False)
                    await asyncio.sleep(0.002)
                mesh.router.send(Pause(session=SESSION, epoch=1))
                head_at_pause = ring.head
                quiet_until = time.monotonic() + 0.3
                while time.monotonic() < quiet_until:  # keep draining: nothing new may come
                    frames += await read_frames(ring, until_last=False)
                    await asyncio.sleep(0.01)
                assert ring.head <= head_at_pause + 1
                total = len(expected_utterance(text)) // FRAME
                assert len(frames) < total
                mesh.router.send(Resume(session=SESSION, epoch=1))
                frames += await read_frames(ring)
                check_utterance(frames, 1, 1, text)

    run(scenario())


def test_stop_drops_the_turn_and_fences_old_epochs() -> None:
    text = "A long answer that the user interrupts half way through. " * 2

    async def scenario() -> None:
        with ring_segment(out_capacity=16) as seg:
            async with running_tts(seg) as mesh:
                ring = mesh.ring()
                mesh.router.send(speak(text, epoch=1, utterance=1))
                await wait_for(lambda: ring.queued() == ring.capacity, 5, "a full ring")
                mesh.router.send(Stop(session=SESSION, epoch=2))
                head_at_stop = ring.head
                ring.flush()  # the transport's side of STOP
                # Late messages of the old turn: ignored.
                mesh.router.send(speak("stale", epoch=1, utterance=9))
                mesh.router.send(Resume(session=SESSION, epoch=1))
                await asyncio.sleep(0.3)
                assert ring.head <= head_at_stop + 1
                assert ring.read() is None
                mesh.router.send(speak("Okay.", epoch=2, utterance=3))
                check_utterance(await read_frames(ring), 2, 3, "Okay.")
                await wait_for(lambda: mesh.done(3), 5, "SPEAK_DONE")
                assert mesh.done(1) == [] and mesh.done(9) == []
                counters = mesh.actor.counters
                assert counters["stale_speak"] == 1 and counters["stale_resume"] == 1

    run(scenario())


@dataclass
class GatedVoice:
    """The mock voice, except that a call for ``gated`` text blocks until the test opens
    the gate: the test knows exactly when that synthesis is running, and ends it."""

    gated: str
    name: str = "gated"
    inside: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    def synthesize(self, text: str, *, first: bool) -> Iterator[np.ndarray]:
        if text == self.gated:
            self.inside.set()
            if not self.gate.wait(30):  # never hang the executor thread on a failed test
                raise RuntimeError("the test never opened the gate")
        yield from MockVoice().synthesize(text, first=first)


def test_stop_discards_a_synthesis_that_was_running(monkeypatch: pytest.MonkeyPatch) -> None:
    voice = GatedVoice("Old turn.")
    monkeypatch.setitem(ENGINES, "gated", lambda opts: Engine("gated", "gated", lambda n: voice))

    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg, engine="gated") as mesh:
                ring = mesh.ring()
                try:
                    mesh.router.send(speak("Old turn.", epoch=1, utterance=1))
                    await wait_for(voice.inside.is_set, 5, "the synthesis to start")
                    mesh.router.send(Stop(session=SESSION, epoch=2))
                    mesh.router.send(speak("New.", epoch=2, utterance=2))
                    stream = mesh.streamer.sessions[SESSION]
                    await wait_for(lambda: stream.speaks, 5, "the STOP and the new SPEAK")
                    assert stream.epoch == 2 and stream.synthesizing is not None
                    assert stream.synthesizing.utterance == 1  # still inside the old call
                finally:
                    voice.gate.set()  # the old call returns its audio, too late
                frames = await read_frames(ring)
                check_utterance(frames, 2, 2, "New.")
                assert mesh.done(1) == []
                assert mesh.actor.counters["abandoned_synthesis"] == 1

    run(scenario())


def test_full_ring_makes_the_writer_wait() -> None:
    text = "Enough text for ninety frames or so."

    async def scenario() -> None:
        with ring_segment(out_capacity=8) as seg:
            async with running_tts(seg) as mesh:
                ring = mesh.ring()
                mesh.router.send(speak(text))
                await wait_for(lambda: ring.queued() == ring.capacity, 5, "a full ring")
                await asyncio.sleep(0.1)
                assert ring.head == ring.capacity  # waited instead of overwriting
                frames = await read_frames(ring, pace_s=0.003)
                check_utterance(frames, 1, 1, text)
                assert mesh.actor.counters["ring_full_waits"] > 0

    run(scenario())


def test_each_chunk_reports_progress_once_its_frames_are_in_the_ring() -> None:
    texts = ["Hello there.", " How are you?", " Fine."]

    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg) as mesh:
                for i, text in enumerate(texts):
                    mesh.router.send(speak(text, utterance=4, first=i == 0, last=i == 2, chunk=i))
                frames = await read_frames(mesh.ring())
                check_utterance(frames, 1, 4, *texts)
                await wait_for(lambda: len(mesh.router.of(SpeakProgress)) == 3, 5, "progress")
                progress = mesh.router.of(SpeakProgress)
                assert [(p.utterance, p.chunk) for p in progress] == [(4, 0), (4, 1), (4, 2)]
                # Each came after the frame holding that chunk's last sample was written:
                # the first chunk's audio ends inside frame ceil(samples / 960).
                assert mesh.done(4)[0].samples == sum(mock_samples(t) for t in texts)

    run(scenario())


def test_a_continuation_plays_on_as_the_same_utterance() -> None:
    """What a second TTS actor gets when the first died mid-reply: first=False chunks."""

    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg) as mesh:
                mesh.router.send(speak(" the rest.", utterance=5, first=False, chunk=1))
                frames = await read_frames(mesh.ring())
                assert frames[0].flags & FLAG_FIRST == 0  # the transport keeps utterance 5
                assert frames[-1].flags & FLAG_LAST
                assert {f.utterance for f in frames} == {5}
                await wait_for(lambda: mesh.done(5), 5, "SPEAK_DONE")

    run(scenario())


def test_synthesis_runs_only_a_bounded_time_ahead_of_playback() -> None:
    """Nobody reads the ring: the actor holds a full ring plus ``ahead`` samples, no more."""
    text = "A very long reply that nobody is listening to right now. " * 40  # ~135 s

    async def scenario() -> None:
        with ring_segment(out_capacity=16) as seg:
            async with running_tts(seg) as mesh:
                mesh.streamer.ahead_max = 48000  # one second
                mesh.router.send(speak(text))
                ring = mesh.ring()
                await wait_for(lambda: ring.queued() == ring.capacity, 5, "a full ring")
                stream = mesh.streamer.sessions[SESSION]
                await wait_for(lambda: stream.ahead > 48000, 5, "synthesis ahead")
                await asyncio.sleep(0.2)  # it would be ~all 135 s by now if unbounded
                assert stream.ahead <= 48000 + MOCK_PIECE
                queued = sum(e.pcm.size for e in stream.events if hasattr(e, "pcm"))
                assert queued == stream.ahead
                # Reading it all still gives the whole, exact utterance.
                frames = await read_frames(ring, timeout=60)
                check_utterance(frames, 1, 1, text)

    run(scenario())


def test_session_close_and_bad_slot_leave_the_actor_serving() -> None:
    async def scenario() -> None:
        with ring_segment(out_capacity=8) as seg:
            async with running_tts(seg) as mesh:
                mesh.router.send(speak("A reply nobody will hear. " * 3))
                await wait_for(lambda: mesh.ring().queued() == 8, 5, "a full ring")
                mesh.router.send(SessionClose(session=SESSION))
                await wait_for(lambda: not mesh.streamer.sessions, 5, "session dropped")
                mesh.router.send(
                    Speak(session="s2", slot=99, epoch=1, utterance=1, text="Nowhere.")
                )
                await wait_for(lambda: mesh.router.of(SpeakDone), 5, "SPEAK_DONE")
                assert "slot" in mesh.router.of(SpeakDone)[0].error
                seg.slots[1].out.flush()
                mesh.router.send(
                    Speak(session="s3", slot=1, epoch=1, utterance=4, text="Still here.")
                )
                check_utterance(await read_frames(mesh.ring(1)), 1, 4, "Still here.")

    run(scenario())


@dataclass
class BrokenVoice:
    name: str = "broken"

    def synthesize(self, text: str, *, first: bool) -> Iterator[np.ndarray]:
        if "boom" in text:
            yield from MockVoice().synthesize("ok", first=first)
            raise RuntimeError("the model exploded")
        yield from MockVoice().synthesize(text, first=first)


def test_synthesis_error_is_reported_and_the_actor_lives_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(ENGINES, "broken", lambda opts: Engine("broken", "broken", BrokenVoice))

    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg, engine="broken") as mesh:
                mesh.router.send(speak("boom", utterance=1, last=False))
                mesh.router.send(speak("dropped after the error", utterance=1, first=False))
                frames = await read_frames(mesh.ring())  # what came before the error, closed
                check_utterance(frames, 1, 1, "ok")
                await wait_for(lambda: mesh.done(1), 5, "SPEAK_DONE")
                assert "exploded" in mesh.done(1)[0].error
                mesh.router.send(speak("Fine again.", utterance=2))
                check_utterance(await read_frames(mesh.ring()), 1, 2, "Fine again.")
                assert mesh.actor.counters["synth_errors"] == 1

    run(scenario())


# --- models ---------------------------------------------------------------------------------


def test_model_list_load_unload_and_heartbeat_info() -> None:
    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg, resident_max=2) as mesh:
                router = mesh.router
                # Voices are "engine:voice" on the mesh; the engine's own name works too.
                info = await router.reply(ModelList(), ModelInfo)
                assert (info.resident, info.error, info.actor) == (["mock:mock"], "", TTS)
                assert "mock:mock" in info.available
                info = await router.reply(ModelLoad(model="mock:mock-b"), ModelInfo)
                assert (info.resident, info.error) == (["mock:mock", "mock:mock-b"], "")
                info = await router.reply(ModelLoad(model="no-such-voice"), ModelInfo)
                assert "no-such-voice" in info.error
                assert info.resident == ["mock:mock", "mock:mock-b"]
                await wait_for(
                    lambda: (
                        router.hub.peers[TTS].info.get("resident") == ["mock:mock", "mock:mock-b"]
                    ),
                    5,
                    "a heartbeat advertising both models",
                )
                beat = router.hub.peers[TTS].info
                assert beat["engine"] == "mock" and beat["load"] == 0
                assert (beat["device"], beat["provider"], beat["default"]) == (
                    "cpu",
                    "mock",
                    "mock:mock",
                )
                info = await router.reply(ModelUnload(model="mock-b"), ModelInfo)
                assert (info.resident, info.error) == (["mock:mock"], "")
                info = await router.reply(ModelUnload(model="mock:mock-b"), ModelInfo)
                assert info.error and info.resident == ["mock:mock"]
                # A SPEAK for a voice that is not resident loads it on demand.
                router.send(speak("Hi.", voice="mock-c"))
                check_utterance(await read_frames(mesh.ring()), 1, 1, "Hi.")
                assert "mock-c" in mesh.actor.models.resident()

    run(scenario())


def test_model_manager_lru_cap_and_idle_ttl() -> None:
    now = [0.0]

    async def scenario() -> None:
        from voxmesh.actors.tts.models import ModelManager

        mm = ModelManager(
            adapters.engine("mock"),
            preload=["mock-p"],
            resident_max=3,
            idle_ttl_s=10,
            clock=lambda: now[0],
        )
        try:
            await mm.start()
            assert mm.resident() == ["mock", "mock-p"]
            await mm.load("mock-a")
            now[0] = 1
            await mm.load("mock-b")  # over the cap: the LRU unpinned one (mock-a) goes
            assert mm.resident() == ["mock", "mock-p", "mock-b"]
            async with mm.use("mock-b"):
                now[0] = 100
                assert mm.evict_idle() == []  # in use
            now[0] = 200
            assert mm.evict_idle() == ["mock-b"]  # pinned ones stay
            assert mm.resident() == ["mock", "mock-p"]
        finally:
            mm.close()

    run(scenario())


# --- real voices ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["piper", "espeak"])
def test_real_voice_speaks_48k_frames(engine: str) -> None:
    if engine == "piper":
        pytest.importorskip("piper")
    elif shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")

    async def scenario() -> None:
        with ring_segment() as seg:
            async with running_tts(seg, engine=engine) as mesh:
                assert mesh.actor.models.resident() == [mesh.actor.engine.default_voice]
                mesh.router.send(speak("Hello there.", last=False))
                mesh.router.send(speak(" How are you?", first=False))
                frames = await read_frames(mesh.ring(), timeout=30)
                await wait_for(lambda: mesh.done(1), 5, "SPEAK_DONE")
                (done,) = mesh.done(1)
                assert done.error == ""
                assert (frames[0].flags, frames[-1].flags) == (FLAG_FIRST, FLAG_LAST)
                assert all(len(f.data) == 2 * FRAME and f.utterance == 1 for f in frames)
                # Two short sentences at 48 kHz last about 1-3 s: a wrong rate would be 2-3x off.
                assert len(frames) - 1 < done.samples / FRAME <= len(frames)
                assert 0.8 < done.samples / 48000 < 4.0
                pcm = pcm_of(frames).astype(np.float64)
                assert np.sqrt(np.mean(pcm * pcm)) > 500  # speech, not silence

    run(scenario())


# --- construction ---------------------------------------------------------------------------


def test_build_maps_the_tts_config_section() -> None:
    place = MeshPlace(
        "ipc:///nowhere/router.sock", "ipc:///nowhere/supervisor.sock", "voxmesh-0-rings", 0.25, 4
    )
    spec = ActorSpec(
        kind="tts",
        name="tts1",
        place=place,
        settings={"tts": {"engine": "mock", "preload": ["mock-x"], "resident_max": 3}},
    )
    actor = build(spec)
    try:
        assert (actor.name, actor.kind, actor.segment_name) == ("tts1", "tts", "voxmesh-0-rings")
        assert (actor.heartbeat_s, actor.liveness) == (0.25, 4)
        assert actor.engine.name == "mock" and actor.models.default == "mock"
        assert actor.models.pinned == {"mock", "mock-x"} and actor.models.resident_max == 3
    finally:
        actor.context.term()


def test_unknown_and_missing_engines_fail_clearly() -> None:
    with pytest.raises(adapters.EngineUnavailable, match="unknown TTS engine 'nope'"):
        adapters.engine("nope")
    if importlib.util.find_spec("TTS") is None:
        with pytest.raises(adapters.EngineUnavailable, match=r"voxmesh\[xtts\]"):
            adapters.engine("xtts")


def test_mock_engine_imports_no_model_library() -> None:
    code = (
        "import sys; from voxmesh.actors.tts import actor; actor.make_engine('mock').load('mock');"
        "print(sorted(m for m in ('piper', 'onnxruntime', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
