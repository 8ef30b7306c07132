"""One session's output: out-ring frames to paced client frames, with hold, release and stop.

Pure state, no I/O: the pacer (pacer.py) asks what to send and when, and this module
reports what must be said to the client and the router through a ``PlaybackSink``.

Sample accounting. An utterance is one sample stream (its frames, FIRST to LAST). ``sent``
is how far into it the client has been sent; samples read from the ring but not sent yet
wait in ``pending``; samples sent are kept in ``audio`` (trimmed below what is surely heard)
so a RELEASE can rewind ``sent`` to the first sample the user has not heard and send the
rest again, re-framed into 960-sample frames: the client gets every sample exactly once
(plus at most one frame's worth of trailing silence padding the utterance's last frame).

What the user heard: a client that sends ``played`` acks (total samples it has played) is
believed; ``client_pos`` maps our stream onto its played counter (every sample sent and kept
by the client, silence padding included; a ``clear`` makes it drop what it had not played).
Without acks, heard = sent - lead.

Pacing: frame n after an anchor (the utterance's first frame, a RELEASE, or the first frame
after an underrun) should start playing at ``anchor_t + n * 20 ms`` and may go out ``lead``
earlier; deadlines are absolute, so lateness never accumulates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from voxmesh.mesh import events
from voxmesh.mesh.protocol import Message, PlaybackEnded, PlaybackStarted
from voxmesh.mesh.ring import (
    FLAG_FIRST,
    FLAG_LAST,
    FRAME_MS,
    OUT_FRAME_BYTES,
    OUT_FRAME_SAMPLES,
    OUT_RATE,
    Frame,
    Slot,
)

from .metrics import TransportStats

FRAME_S: Final = FRAME_MS / 1000
LATE_S: Final = 0.005  # a frame sent this long after it should have started playing is late
ACK_WAIT_S: Final = 0.25  # RELEASE waits this long at most for the client's post-clear ack
TRIM_SAMPLES: Final = OUT_RATE  # drop heard samples from memory a second at a time


class PlaybackSink(Protocol):
    def client_event(self, event: dict[str, Any]) -> None:
        """Queue a JSON event for the client, in order with the frames."""

    def client_clear(self, detail: dict[str, Any]) -> None:
        """Queue a ``clear`` for the client, in order with the frames."""

    def router(self, msg: Message) -> None:
        """Send to the router now."""


class SampleBuffer:
    """Samples [base, end) of one utterance, s16le, kept for a resend."""

    def __init__(self) -> None:
        self.base = 0
        self._buf = bytearray()

    @property
    def end(self) -> int:
        return self.base + len(self._buf) // 2

    def append(self, pcm: bytes) -> None:
        self._buf += pcm

    def cut(self, sample: int) -> bytes:
        """Remove and return samples [sample, end) (from ``base`` if already trimmed)."""
        at = (max(sample, self.base) - self.base) * 2
        tail = bytes(self._buf[at:])
        del self._buf[at:]
        return tail

    def trim(self, upto: int) -> None:
        """Forget samples below ``upto`` (in whole seconds, so the memmove stays rare)."""
        upto = min(upto, self.end)
        if upto - self.base >= TRIM_SAMPLES:
            del self._buf[: (upto - self.base) * 2]
            self.base = upto


@dataclass
class Utterance:
    id: int
    epoch: int
    origin: int  # client_pos of this utterance's sample 0
    audio: SampleBuffer = field(default_factory=SampleBuffer)
    pending: bytearray = field(default_factory=bytearray)  # read from the ring, not yet sent
    sent: int = 0  # samples of this utterance sent (rewinds on RELEASE)
    sent_max: int = 0
    ended: bool = False  # its last sample is in ``pending`` (or was sent)
    started: bool = False  # audio_start went out
    # The router was told it plays (PLAYBACK_STARTED); told again once a HOLD that cut it
    # is released: frames that raced ahead of their HOLD are not the reply starting.
    announced: bool = False


@dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes  # exactly OUT_FRAME_BYTES
    utterance: int
    last: bool


class Playback:
    def __init__(
        self,
        slot: Slot,
        sink: PlaybackSink,
        stats: TransportStats,
        *,
        session: str,
        lead_s: float,
    ) -> None:
        self.slot = slot
        self.ring = slot.out
        self.sink = sink
        self.stats = stats
        self.session = session
        self.lead_s = lead_s
        self.lead_samples = round(lead_s * OUT_RATE)
        self.epoch = slot.epoch
        self.utt: Utterance | None = None
        self.held = False
        self.release_due: float | None = None  # RELEASE received, waiting for the ack
        self.hold_cut = False  # the HOLD cut an utterance short (clear sent): rewind at RELEASE
        self.dirty = False  # frames sent since the last clear
        self.t_last_frame: float | None = None
        self.clear_sent_at = 0.0  # set by the pacer when a clear actually went out
        self.client_pos = 0
        self.sent_total = 0  # samples sent to the client this session, padding included
        self.acked: int | None = None
        self.ack_t = 0.0
        self._anchor_t: float | None = None
        self._anchor_n = 0
        self._lookahead: Frame | None = None
        self.utterances_seen = 0  # the highest utterance id read from the ring
        # Each frame sent, with its position in the client's played counter (echo.py).
        self.far_end: Callable[[int, bytes], None] | None = None

    @property
    def playing(self) -> int:
        """The utterance being played now (0: none): a restarted router must know it."""
        return self.utt.id if self.utt is not None else 0

    # --- client acks ------------------------------------------------------------------------

    @property
    def acking(self) -> bool:
        return self.acked is not None

    def on_ack(self, samples: int, now: float) -> None:
        # The first ack after a clear, with nothing sent since: the client dropped all it
        # had, so its next frame plays at this count (after a STOP, client_pos is ahead).
        if self.ack_t < self.clear_sent_at <= now and not self.dirty:
            self.client_pos = samples
        self.acked = max(self.acked or 0, samples)
        self.ack_t = now

    def heard(self) -> int:
        """Samples of the current utterance the user has heard (best estimate)."""
        u = self.utt
        if u is None:
            return 0
        if self.acked is not None:
            return min(max(self.acked - u.origin, 0), u.sent_max)
        return max(0, u.sent - self.lead_samples)

    # --- control from the router ------------------------------------------------------------

    def _fence(self, epoch: int, now: float) -> bool:
        """False for an older epoch; a newer one means we missed its STOP: enter it."""
        if epoch < self.epoch:
            self.stats.stale_control += 1
            return False
        if epoch > self.epoch:
            self._enter_epoch(epoch, now, flush=False)
        return True

    def hold(self, epoch: int, t_issued: float, now: float) -> None:
        if not self._fence(epoch, now):
            return
        self.release_due = None
        if self.held:
            return
        self.held = True
        u = self.utt
        # Before an utterance's first frame (a reply pre-generated under HOLD) just gate.
        self.hold_cut = u is not None and u.started
        if self.hold_cut:
            detail: dict[str, Any] = {"t_last_frame": self.t_last_frame}
            if t_issued:
                detail["t_issued"] = t_issued
            self._clear(detail)

    def release(self, epoch: int, now: float) -> None:
        if self._fence(epoch, now) and self.held and self.release_due is None:
            self.release_due = now

    def try_finish_release(self, now: float) -> bool:
        """Complete a pending RELEASE once the client's post-clear ack is in (or given up)."""
        if self.release_due is None:
            return False
        if (
            self.hold_cut
            and self.acking
            and self.ack_t < self.clear_sent_at
            and now < self.release_due + ACK_WAIT_S
        ):
            return False
        self.held = False
        self.release_due = None
        if self.hold_cut and self.utt is not None:
            self._rewind(self.utt)
            self.utt.announced = False
        self.hold_cut = False
        return True

    def release_wait_until(self) -> float | None:
        return None if self.release_due is None else self.release_due + ACK_WAIT_S

    def stop(self, epoch: int, now: float, reason: str = "interrupted") -> None:
        if epoch <= self.epoch:  # a STOP always brings a new epoch: this one is old news
            self.stats.stale_control += 1
            return
        self._enter_epoch(epoch, now, flush=True, reason=reason)

    def _enter_epoch(
        self, epoch: int, now: float, *, flush: bool, reason: str = "interrupted"
    ) -> None:
        self.epoch = epoch
        self.slot.epoch = epoch
        self.held = False
        self.release_due = None
        self.hold_cut = False
        self._anchor_t = None
        if flush:
            self._drop_stale()
        if self.dirty:
            self._clear({"t_last_frame": self.t_last_frame})
        if self.utt is not None:
            if self.utt.started:
                self._end_utterance(reason, now)
            self.utt = None

    def _drop_stale(self) -> None:
        """Flush the out ring up to the first frame of the current epoch (a TTS may have
        written the new turn's first frames already; those stay)."""
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            if frame.epoch >= self.epoch:
                self._lookahead = frame
                return
            self.stats.stale_frames += 1

    def _clear(self, detail: dict[str, Any]) -> None:
        self.dirty = False
        self.sink.client_clear(detail)

    def _rewind(self, u: Utterance) -> None:
        """Resume from the first sample the user has not heard."""
        heard = self.heard()
        if self.acked is not None and self.acked < u.origin:
            u.origin = self.acked  # the client also dropped the end of the previous utterance
        resend = u.audio.cut(heard)  # sent again below, and kept again as it goes out
        u.pending[:0] = resend
        u.sent = u.audio.end
        self.client_pos = u.origin + u.sent
        self.stats.resent_samples += len(resend) // 2
        self._anchor_t = None

    # --- reading the ring -------------------------------------------------------------------

    def _next_frame(self) -> Frame | None:
        if self._lookahead is not None:
            frame, self._lookahead = self._lookahead, None
            return frame
        return self.ring.read()

    def has_input(self) -> bool:
        return self._lookahead is not None or self.ring.head > self.ring.tail

    def fill(self, now: float) -> None:
        """Read ring frames until one whole client frame is ready (never while held)."""
        while not self.held:
            u = self.utt
            if u is not None and (u.ended or len(u.pending) >= OUT_FRAME_BYTES):
                return
            frame = self._next_frame()
            if frame is None:
                return
            if frame.epoch < self.epoch:
                self.stats.stale_frames += 1
                continue
            if frame.epoch > self.epoch:  # its STOP has not reached us yet
                self._enter_epoch(frame.epoch, now, flush=False)
                u = None
            if u is not None and (frame.flags & FLAG_FIRST or frame.utterance != u.id):
                # A new utterance while the old one never got its LAST frame: finish the
                # old one with what it has, then come back for this frame.
                self._lookahead = frame
                u.ended = True
                if not u.pending:
                    self._finish(u, now)
                continue
            if u is None:
                u = self.utt = Utterance(frame.utterance, frame.epoch, origin=self.client_pos)
                self.utterances_seen = max(self.utterances_seen, frame.utterance)
            u.pending += frame.data
            if frame.flags & FLAG_LAST:
                u.ended = True
                if not u.pending:  # an empty last frame: nothing left to send
                    self._finish(u, now)

    def _finish(self, u: Utterance, now: float) -> None:
        if u.started:
            self._end_utterance("done", now)
        self.utt = None

    def _end_utterance(self, reason: str, now: float) -> None:
        u = self.utt
        assert u is not None
        heard = u.sent_max if reason == "done" else self.heard()
        self.sink.client_event(events.AudioEnd(utterance_id=u.id, reason=reason).as_dict())
        self.sink.router(
            PlaybackEnded(
                session=self.session,
                epoch=u.epoch,
                utterance=u.id,
                sent_samples=u.sent_max,
                heard_samples=heard,
                reason=reason,
                t=now,
            )
        )

    # --- sending ----------------------------------------------------------------------------

    def chunk_ready(self) -> bool:
        u = self.utt
        if self.held or u is None:
            return False
        return len(u.pending) >= OUT_FRAME_BYTES or (u.ended and bool(u.pending))

    def due(self, now: float) -> float:
        """When the next chunk may go out (``now`` if the stream is not anchored)."""
        if self._anchor_t is None:
            return now
        return self._anchor_t + self._anchor_n * FRAME_S - self.lead_s

    def take(self, now: float) -> Chunk:
        """The next chunk, accounted as sent at ``now`` (call only when chunk_ready())."""
        u = self.utt
        assert u is not None and self.chunk_ready()
        data = bytes(u.pending[:OUT_FRAME_BYTES])
        del u.pending[:OUT_FRAME_BYTES]
        real = len(data) // 2
        last = u.ended and not u.pending
        if not u.started:
            u.started = True
            self._anchor_t = None  # every utterance starts its own clock (else a burst)
            self.sink.client_event(events.AudioStart(utterance_id=u.id).as_dict())
        if not u.announced:
            u.announced = True
            self.sink.router(
                PlaybackStarted(session=self.session, epoch=u.epoch, utterance=u.id, t=now)
            )
        if self._anchor_t is None:
            self._anchor_t, self._anchor_n = now, 0
        play_at = self._anchor_t + self._anchor_n * FRAME_S
        self._anchor_n += 1
        if now > play_at + LATE_S:
            self.stats.late_frames += 1
        # Late against when it was allowed out: a lead burst's frames may go at the anchor.
        self.stats.observe_lag(max(0.0, now - max(self._anchor_t, play_at - self.lead_s)))
        u.audio.append(data)
        u.sent += real
        u.sent_max = max(u.sent_max, u.sent)
        self._trim(u)
        if real < OUT_FRAME_SAMPLES:
            data += bytes(OUT_FRAME_BYTES - len(data))  # the utterance's tail: pad with silence
        if self.far_end is not None:
            self.far_end(self.client_pos, data)
        self.client_pos += OUT_FRAME_SAMPLES
        self.sent_total += OUT_FRAME_SAMPLES  # never rewinds: bounds the client's acks
        self.stats.frames_sent += 1
        self.dirty = True
        self.t_last_frame = now
        return Chunk(data, u.id, last)

    def committed(self, chunk: Chunk, now: float) -> None:
        """The chunk went out: an utterance's last one ends it."""
        u = self.utt
        if chunk.last and u is not None and u.id == chunk.utterance and u.ended and not u.pending:
            self._finish(u, now)

    def _trim(self, u: Utterance) -> None:
        if self.acked is not None:
            u.audio.trim(self.acked - u.origin)
        else:
            u.audio.trim(u.sent - self.lead_samples - OUT_FRAME_SAMPLES)

    # --- underruns and waiting --------------------------------------------------------------

    def starving_at(self) -> float | None:
        """When the client runs dry if no frame comes (None: not mid-utterance)."""
        u = self.utt
        if self.held or u is None or not u.started or u.ended or self._anchor_t is None:
            return None
        return self._anchor_t + self._anchor_n * FRAME_S

    def check_starved(self, now: float) -> None:
        """Count an underrun once per gap; the next frame re-anchors the clock."""
        at = self.starving_at()
        if at is not None and now >= at and not self.chunk_ready():
            self.stats.underruns += 1
            self._anchor_t = None

    def wants_ring(self) -> bool:
        """True when only new ring frames can give us something to do."""
        return not self.held and not self.chunk_ready()
