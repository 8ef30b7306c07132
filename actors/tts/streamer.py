"""Per-session TTS streaming: text chunks in, exact 20 ms frames into the session's out ring.

Each session has two tasks. The *synthesizer* takes queued SPEAK chunks in order and runs
the voice (in the model's thread), appending audio and a chunk-end marker to the session's
event queue: synthesis runs ahead of playback into that local buffer, even while paused.
The *writer* cuts the events of the current utterance into 960-sample frames (carrying the
remainder across chunks), sleeps while the ring is full until the transport has taken
``REFILL_FRAMES`` (its reads ring the writer's doorbell, mesh/doorbell.py), calls
``poll_control()`` before every frame so PAUSE and STOP are served between frames, and after
the utterance's last frame (padded with zeros, FLAG_LAST) sends SPEAK_DONE.

Memory: synthesis runs at most ``ahead_s`` of audio ahead of the writer (the out ring holds
5 s more), so a long reply costs a bounded buffer, not its whole audio.

Failover: after each chunk's last frame is in the ring the writer sends SPEAK_PROGRESS, so
when this actor dies the router can hand the chunks not yet written to another actor. Such
a continuation arrives with ``first=False``: its first frame then carries no FLAG_FIRST and
the transport plays it on as the same utterance.

Fencing: a message whose epoch is older than the session's is dropped and counted; a newer
epoch (STOP, or a SPEAK/PAUSE of a turn we missed the STOP for) drops every queued chunk
and buffered sample of older turns. A synthesis call cannot be interrupted: its output is
discarded piece by piece once its epoch is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from voxmesh.mesh import metrics
from voxmesh.mesh.doorbell import Bell
from voxmesh.mesh.protocol import Message, Pause, Resume, Speak, SpeakDone, SpeakProgress, Stop
from voxmesh.mesh.ring import FLAG_FIRST, FLAG_LAST, OUT_FRAME_SAMPLES, OUT_WRITER
from voxmesh.mesh.sockets import Counters

from .models import ModelManager

log = logging.getLogger("voxmesh.tts")

FRAME = OUT_FRAME_SAMPLES
# A full ring's writer sleeps until this many frames are free (the transport's reads ring
# its doorbell): one wake-up per 320 ms of playback rather than one per frame.
REFILL_FRAMES = 16
AHEAD_S = 10.0  # synthesized audio kept ahead of the writer, per session


class OutRingLike(Protocol):
    """What the writer needs of a slot's out ring: this host's (mesh/ring.py ``OutRing``) or
    one on the session host across the network (mesh/remote_ring.py)."""

    capacity: int

    @property
    def head(self) -> int: ...
    def free(self) -> int: ...
    def arm(self, entry: int, bell: Any, target: int) -> bool: ...
    def write(
        self, payload: bytes, *, epoch: int = ..., utterance: int = ..., flags: int = ...
    ) -> int: ...


class SlotLike(Protocol):
    @property
    def generation(self) -> int: ...
    @property
    def out(self) -> OutRingLike: ...


class SlotsLike(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> SlotLike: ...


class SegmentLike(Protocol):
    """A ring segment as the writer sees it (mesh/ring.py ``RingSegment``, or a remote one)."""

    @property
    def slots(self) -> SlotsLike: ...
    def doorbell(self) -> Bell: ...


@dataclass(frozen=True, slots=True)
class _Audio:
    utterance: int
    epoch: int
    slot: int
    pcm: np.ndarray


@dataclass(frozen=True, slots=True)
class _ChunkEnd:
    utterance: int
    epoch: int
    slot: int
    last: bool
    chunk: int = 0
    error: str = ""


class SampleBuffer:
    """A FIFO of int16 samples kept as the pieces they arrived in."""

    def __init__(self) -> None:
        self._parts: deque[np.ndarray] = deque()
        self.size = 0

    def push(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._parts.append(pcm)
            self.size += pcm.size

    def take(self, n: int) -> np.ndarray:
        """The next ``min(n, size)`` samples."""
        out: list[np.ndarray] = []
        want = min(n, self.size)
        while want:
            part = self._parts[0]
            if part.size <= want:
                out.append(self._parts.popleft())
                want -= part.size
            else:
                out.append(part[:want])
                self._parts[0] = part[want:]
                want = 0
        taken = np.concatenate(out) if out else np.zeros(0, np.int16)
        self.size -= taken.size
        return taken


@dataclass(eq=False)
class _Utterance:
    """The writer's state for the utterance it is cutting into frames."""

    id: int
    epoch: int
    slot: int
    pending: SampleBuffer = field(default_factory=SampleBuffer)
    frames: int = 0
    samples: int = 0
    chunk_open: bool = False  # audio of a chunk arrived, its end marker not yet
    closing: bool = False  # its last chunk (or an error) is in: flush and finish
    error: str = ""
    # (utterance sample where a chunk ends, chunk index): SPEAK_PROGRESS once written
    chunk_ends: deque[tuple[int, int]] = field(default_factory=deque)


@dataclass(eq=False)
class SessionStream:
    session: str
    epoch: int = 0
    paused: bool = False
    closed: bool = False
    generation: dict[int, int] = field(default_factory=dict)  # slot -> generation at SPEAK
    speaks: deque[Speak] = field(default_factory=deque)
    events: deque[_Audio | _ChunkEnd] = field(default_factory=deque)
    failed: set[int] = field(default_factory=set)  # utterances (this epoch) that errored
    synthesizing: Speak | None = None
    current: _Utterance | None = None
    received: dict[int, float] = field(default_factory=dict)  # utterance -> first SPEAK time
    opens: dict[int, bool] = field(default_factory=dict)  # utterance -> its first SPEAK.first
    ahead: int = 0  # samples synthesized and queued in ``events``
    wake_synth: asyncio.Event = field(default_factory=asyncio.Event)
    wake_writer: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def busy(self) -> bool:
        return bool(self.speaks or self.events or self.synthesizing or self.current)

    def wake(self) -> None:
        self.wake_synth.set()
        self.wake_writer.set()


def as_pcm(piece: Any) -> np.ndarray:
    """A voice's piece as a flat int16 array; TypeError for anything else."""
    pcm = np.asarray(piece)
    if pcm.dtype != np.int16:
        raise TypeError(f"voice yielded {pcm.dtype} samples, expected int16")
    return pcm.reshape(-1)


class Streamer:
    def __init__(
        self,
        segment: SegmentLike,
        models: ModelManager,
        *,
        send: Callable[[Message], bool],
        poll_control: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
        counters: Counters,
        ahead_s: float = AHEAD_S,
    ) -> None:
        self.ahead_max = int(ahead_s * 48000)
        self.segment = segment
        self.models = models
        self.send = send
        self.poll_control = poll_control
        self.spawn = spawn
        self.counters = counters
        self.bell = segment.doorbell()  # closed with the segment
        self.sessions: dict[str, SessionStream] = {}
        self.first_frame_s: deque[float] = deque(maxlen=500)  # SPEAK received -> first frame

    # --- control (called synchronously from the actor's handle) -----------------------------

    def load(self) -> int:
        """Sessions with queued or running work."""
        return sum(1 for s in self.sessions.values() if s.busy())

    def speak(self, msg: Speak, received: float | None = None) -> None:
        s = self._session(msg.session)
        if not self._fence(s, msg.epoch, "speak"):
            return
        if not 0 <= msg.slot < len(self.segment.slots):
            self.counters.bump("bad_slot")
            self._done(msg.session, msg.epoch, msg.utterance, 0, f"no ring slot {msg.slot}")
            return
        if msg.utterance in s.failed:
            self.counters.bump("dropped_after_error")
            return
        s.generation.setdefault(msg.slot, self.segment.slots[msg.slot].generation)
        s.received.setdefault(msg.utterance, time.monotonic() if received is None else received)
        s.opens.setdefault(msg.utterance, msg.first)
        s.speaks.append(msg)
        if not s.tasks:
            s.tasks = [self.spawn(self._synth_loop(s)), self.spawn(self._write_loop(s))]
        s.wake_synth.set()

    def pause(self, msg: Pause) -> None:
        s = self._session(msg.session)
        if self._fence(s, msg.epoch, "pause"):
            s.paused = True

    def resume(self, msg: Resume) -> None:
        s = self.sessions.get(msg.session)
        if s is None:
            self.counters.bump("unknown_session")
            return
        if self._fence(s, msg.epoch, "resume"):
            s.paused = False
            s.wake_writer.set()

    def stop(self, msg: Stop) -> None:
        s = self._session(msg.session)
        if msg.epoch <= s.epoch:  # a STOP always moves to a new epoch: this one is old
            self.counters.bump("stale_stop")
            return
        self._advance(s, msg.epoch)

    def close(self, session: str) -> None:
        s = self.sessions.pop(session, None)
        if s is None:
            return
        s.closed = True
        for task in s.tasks:
            task.cancel()

    async def aclose(self) -> None:
        tasks = [t for s in self.sessions.values() for t in s.tasks]
        for name in list(self.sessions):
            self.close(name)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _session(self, session: str) -> SessionStream:
        s = self.sessions.get(session)
        if s is None:
            s = self.sessions[session] = SessionStream(session)
        return s

    def _fence(self, s: SessionStream, epoch: int, what: str) -> bool:
        """True if ``epoch`` is current; a newer one first drops all older work."""
        if epoch < s.epoch:
            self.counters.bump(f"stale_{what}")
            return False
        if epoch > s.epoch:
            self._advance(s, epoch)
        return True

    def _advance(self, s: SessionStream, epoch: int) -> None:
        """Enter turn ``epoch``: forget every queued chunk and buffered sample of older ones."""
        dropped = len(s.speaks) + sum(isinstance(e, _Audio) for e in s.events)
        if dropped or s.current is not None:
            self.counters.bump("dropped_on_stop", dropped)
        s.epoch = epoch
        s.paused = False
        s.speaks.clear()
        s.events.clear()
        s.failed.clear()
        s.received.clear()
        s.opens.clear()
        s.ahead = 0
        s.current = None
        s.wake()

    def _done(self, session: str, epoch: int, utterance: int, samples: int, error: str) -> None:
        self.send(
            SpeakDone(
                session=session, epoch=epoch, utterance=utterance, samples=samples, error=error
            )
        )

    # --- synthesis --------------------------------------------------------------------------

    async def _synth_loop(self, s: SessionStream) -> None:
        while True:
            while not s.speaks:
                s.wake_synth.clear()
                await s.wake_synth.wait()
            msg = s.speaks.popleft()
            if msg.epoch != s.epoch or msg.utterance in s.failed:
                continue
            s.synthesizing = msg
            try:
                await self._synthesize(s, msg)
            finally:
                s.synthesizing = None

    async def _synthesize(self, s: SessionStream, msg: Speak) -> None:
        error = ""
        try:
            if msg.text.strip():
                async with (
                    self.models.use(msg.voice) as model,
                    contextlib.aclosing(model.stream(msg.text, first=msg.first)) as pieces,
                ):
                    async for piece in pieces:
                        if msg.epoch != s.epoch:
                            self.counters.bump("abandoned_synthesis")
                            return
                        pcm = as_pcm(piece)
                        if pcm.size:
                            s.events.append(_Audio(msg.utterance, msg.epoch, msg.slot, pcm))
                            s.ahead += pcm.size
                            s.wake_writer.set()
                        while s.ahead > self.ahead_max and msg.epoch == s.epoch:
                            s.wake_synth.clear()  # far enough ahead: wait for the writer
                            await s.wake_synth.wait()
        except Exception as exc:  # a failing voice fails this utterance, never the actor
            error = f"{type(exc).__name__}: {exc}"
            self.counters.bump("synth_errors")
            log.warning("tts: synthesis failed for %s/%d: %s", s.session, msg.utterance, error)
        if msg.epoch != s.epoch:
            return
        if error:
            s.failed.add(msg.utterance)
        s.events.append(_ChunkEnd(msg.utterance, msg.epoch, msg.slot, msg.last, msg.chunk, error))
        s.wake_writer.set()

    # --- frames -----------------------------------------------------------------------------

    async def _write_loop(self, s: SessionStream) -> None:
        while True:
            self.poll_control()
            u = None if s.paused or s.closed else self._ready(s)
            if u is None:
                s.wake_writer.clear()
                await s.wake_writer.wait()
                continue
            ring = self.segment.slots[u.slot].out
            if ring.free() == 0:
                self.counters.bump("ring_full_waits")
                room = min(REFILL_FRAMES, max(1, ring.capacity // 4))
                if not ring.arm(OUT_WRITER, self.bell, ring.head - ring.capacity + room):
                    await self.bell.wait()
                continue  # state may have changed meanwhile: decide again
            self._write(s, u)
            await asyncio.sleep(0)  # let other sessions and control in between frames

    def _ready(self, s: SessionStream) -> _Utterance | None:
        """Absorb events into the current utterance until a frame is due (None: not yet)."""
        while True:
            u = s.current
            if u is not None and (u.closing or u.pending.size > FRAME):
                return u
            if u is not None and u.pending.size == FRAME and not u.chunk_open:
                return u  # a full frame whose chunk is complete: more audio or the end follows
            if not s.events:
                return None
            ev = s.events[0]
            if u is None:
                u = s.current = _Utterance(ev.utterance, ev.epoch, ev.slot)
            elif ev.utterance != u.id:  # the router never sent this utterance's last chunk
                self.counters.bump("unterminated_utterances")
                u.closing = True
                u.error = f"utterance {u.id} cut short by utterance {ev.utterance}"
                continue
            s.events.popleft()
            if isinstance(ev, _Audio):
                u.pending.push(ev.pcm)
                u.chunk_open = True
                s.ahead -= ev.pcm.size
                s.wake_synth.set()
            else:
                u.chunk_open = False
                u.chunk_ends.append((u.samples + u.pending.size, ev.chunk))
                if ev.last or ev.error:
                    u.closing = True
                    u.error = ev.error

    def _write(self, s: SessionStream, u: _Utterance) -> None:
        slot = self.segment.slots[u.slot]
        if slot.generation != s.generation.get(u.slot, slot.generation):
            # The transport gave this slot to another session: never write into it.
            self.counters.bump("slot_reclaimed")
            self._advance(s, s.epoch)
            return
        final = u.closing and u.pending.size <= FRAME
        if final and u.frames == 0 and u.pending.size == 0 and u.error:
            s.current = None  # failed before any audio: nothing to close in the ring
            s.received.pop(u.id, None)
            self._done(s.session, u.epoch, u.id, 0, u.error)
            return
        pcm = u.pending.take(FRAME)
        u.samples += pcm.size
        opens = u.frames == 0 and s.opens.get(u.id, True)  # a continuation does not
        flags = (FLAG_FIRST if opens else 0) | (FLAG_LAST if final else 0)
        if pcm.size < FRAME:
            pcm = np.concatenate([pcm, np.zeros(FRAME - pcm.size, np.int16)])
        slot.out.write(pcm.tobytes(), epoch=u.epoch, utterance=u.id, flags=flags)
        u.frames += 1
        while u.chunk_ends and u.samples >= u.chunk_ends[0][0]:
            _, chunk = u.chunk_ends.popleft()
            self.send(SpeakProgress(session=s.session, epoch=u.epoch, utterance=u.id, chunk=chunk))
        if u.frames == 1:
            received = s.received.pop(u.id, None)
            if received is not None:
                took = time.monotonic() - received
                self.first_frame_s.append(took)
                metrics.TTS_FIRST_AUDIO.observe(took)
        if final:
            s.current = None
            s.opens.pop(u.id, None)
            self._done(s.session, u.epoch, u.id, u.samples, u.error)
