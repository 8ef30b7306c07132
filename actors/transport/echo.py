"""Server-side echo cancellation for one session: the bot's own voice out of its mic.

A client on a speaker hears the reply back in its microphone, and Silero calls that echo
speech at almost any level, so the bot would pause for (and then answer) itself. We know the
exact samples sent and, from the client's ``played`` acks, when each was heard, so every
mic frame goes through three steps before the mic ring (VAD and ASR see the result):

1. Far-end reference. ``far()`` stores each chunk the pacer sends at its position in the
   client's played counter (``Playback.client_pos``), decimated to 16 kHz. ``ack()`` maps
   that counter onto the mic stream: a ``played`` ack and the mic audio travel on the same
   socket in order, so when an ack says P samples were played, the mic audio received so far
   was captured while sample ~P played. The reference for mic sample n is then the far-end
   sample n + offset; the offset moves only when the acks disagree by more than
   ``REANCHOR`` or while the far end is silent (a jump mid-word would look like an echo
   path change). The rest of the delay (the client's output and capture buffers, the room)
   is found by AEC3's own delay estimator.
2. WebRTC AEC3 (``livekit.rtc.AudioProcessingModule``, already a dependency; the FFI build
   LiveKit ships and maintains) on 10 ms frames, mic and reference in lockstep.
3. A residual-echo gate: while the far end is active, a 10 ms frame after AEC3 counts as the
   user only if it is no more than ``gate_db`` below where the raw echo sits (the echo
   return loss, ``erl_db``, learnt from frames that AEC3 cut by ``ECHO_ONLY_DB`` or more,
   which are echo alone). What is left after cancellation is far below that; a user talking
   over the bot is at or above it (an echo louder than the user is not a speakerphone we
   can serve). Frames that fail are zeroed; an open gate stays open ``hangover`` frames, so
   the soft edges of the user's words reach ASR.

While the far end has been silent for ``TAIL_FRAMES`` the mic passes untouched and AEC3 is
not called: an idle session costs nothing. ``stats`` counts what was done.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from voxmesh.mesh.ring import MIC_RATE, OUT_RATE

AecMode = Literal["server", "client", "off"]
AEC_MODES: Final[tuple[AecMode, ...]] = ("server", "client", "off")

APM_FRAME: Final = MIC_RATE // 100  # AEC3 takes 10 ms frames
DECIMATE: Final = OUT_RATE // MIC_RATE
STORE: Final = 1 << 16  # 4.1 s of reference at 16 kHz: far more than ack lag + room delay
TAIL_FRAMES: Final = 60  # 600 ms: the echo of a far frame can come this late (delay + room)
REANCHOR: Final = MIC_RATE * 40 // 1000  # acks moving the alignment more than this re-anchor it
FAR_FLOOR_DB: Final = 20.0  # a reference frame below this (int16 energy, ~-70 dBFS) is silence
ECHO_ONLY_DB: Final = 10.0  # AEC3 removed this much: the frame was echo alone
ERL_INIT_DB: Final = 0.0  # before it has learnt: echo as loud as the reference (strict)
ERL_ALPHA: Final = 0.05  # per echo-only frame: ~200 ms of echo to learn the room


@dataclass
class EchoStats:
    frames: int = 0  # 10 ms mic frames seen
    cancelled: int = 0  # ... that went through AEC3 (the far end was active)
    gated: int = 0  # ... zeroed by the residual-echo gate
    reanchors: int = 0  # times the ack alignment moved
    cpu_s: float = 0.0  # thread CPU spent in process() (AEC3 and the gate)
    in_energy: float = 0.0  # sum of squares of the raw mic while cancelling...
    out_energy: float = 0.0  # ...and after AEC3 (before the gate): their ratio is ERLE

    @property
    def erle_db(self) -> float:
        return 10.0 * float(np.log10((self.in_energy + 1.0) / (self.out_energy + 1.0)))


class FarEnd:
    """The samples the client plays, at 16 kHz, indexed by its played counter / 3.

    The client's played stream has no gaps (its counter stands still while it has nothing to
    play), so positions below the highest one written and within ``STORE`` of it are valid;
    a rewind (RELEASE resends from the first unheard sample) simply overwrites."""

    def __init__(self) -> None:
        self.buf = np.zeros(STORE, np.int16)
        self.hi = 0  # one past the highest position written

    def write(self, pos: int, pcm: np.ndarray) -> None:
        idx = np.arange(pos, pos + pcm.size) % STORE
        self.buf[idx] = pcm
        self.hi = max(self.hi, pos + pcm.size)

    def read(self, pos: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        lo, hi = max(pos, self.hi - STORE, 0), min(pos + n, self.hi)
        if hi > lo:
            out[lo - pos : hi - pos] = self.buf[np.arange(lo, hi) % STORE]
        return out


def energy_db(x: np.ndarray) -> float:
    """Mean square of int16 samples, in dB (0 dB: amplitude 1 LSB)."""
    e = float(np.dot(x.astype(np.float64), x.astype(np.float64))) / max(x.size, 1)
    return 10.0 * float(np.log10(e + 1.0))


class EchoCanceller:
    """One session's canceller: ``far()`` from the pacer, ``ack()`` from ``played``,
    ``process()`` on each 20 ms mic frame before the mic ring."""

    def __init__(self, *, gate_db: float, hangover_ms: int, lead_s: float) -> None:
        from livekit.rtc import AudioFrame, AudioProcessingModule

        self._frame_cls = AudioFrame
        # Only AEC3 (its own suppressor included): noise suppression or AGC would change
        # the user's speech that ASR hears, and the high-pass filter buys Silero nothing.
        self.apm = AudioProcessingModule(echo_cancellation=True)
        # The acks align the reference; AEC3's delay estimator finds the rest (measured:
        # the same ERLE for any hint from 0 to 200 ms on a 100 ms echo).
        self.apm.set_stream_delay_ms(0)
        self.gate_db = gate_db
        self.hangover = max(0, hangover_ms // 10)
        self.lead = round(lead_s * MIC_RATE)
        self.far_end = FarEnd()
        self.offset: int | None = None  # far position - mic position
        self.acked = False
        self.erl_db = ERL_INIT_DB
        self.stats = EchoStats()
        self._near = 0  # mic samples processed
        self._far_db: deque[float] = deque(maxlen=TAIL_FRAMES)
        self._open = 0  # frames the gate stays open for

    # --- the far end ------------------------------------------------------------------------

    def far(self, pos48: int, pcm48: bytes, near_received: int) -> None:
        """A chunk sent to the client at its played-counter position ``pos48``."""
        x = np.frombuffer(pcm48, "<i2")
        n = x.size // DECIMATE * DECIMATE
        # A 3-sample mean is a crude anti-alias filter, but a linear one without state: AEC3
        # takes its droop as part of the echo path (33.5 dB ERLE against 36.3 dB with soxr).
        pcm16 = x[:n].reshape(-1, DECIMATE).mean(axis=1).astype(np.int16)
        self.far_end.write(pos48 // DECIMATE, pcm16)
        if not self.acked:  # a client without acks: assume it plays ``lead`` behind us
            self._anchor(pos48 // DECIMATE - self.lead, near_received)

    def ack(self, played48: int, near_received: int) -> None:
        """The client has played ``played48`` samples; ``near_received`` mic samples (16 kHz)
        had reached us when the ack did."""
        self.acked = True
        self._anchor(played48 // DECIMATE, near_received)

    def _anchor(self, far_pos: int, near_pos: int) -> None:
        offset = far_pos - near_pos
        current = self.offset
        silent = not self._far_active()
        if current is None or silent or abs(offset - current) > REANCHOR:
            if current is not None and offset != current and not silent:
                self.stats.reanchors += 1
            self.offset = offset

    def _far_active(self) -> bool:
        return bool(self._far_db) and max(self._far_db) > FAR_FLOOR_DB

    # --- the mic ----------------------------------------------------------------------------

    def process(self, frame: bytes) -> bytes:
        """One mic frame (s16le 16 kHz, a whole number of 10 ms) cleaned for VAD and ASR."""
        t0 = time.thread_time()
        x = np.frombuffer(frame, "<i2")
        out = [self._process10(x[i : i + APM_FRAME]) for i in range(0, x.size, APM_FRAME)]
        self.stats.cpu_s += time.thread_time() - t0
        return b"".join(out)

    def _process10(self, near: np.ndarray) -> bytes:
        self.stats.frames += 1
        pos = self._near
        self._near += near.size
        ref = (
            self.far_end.read(pos + self.offset, near.size)
            if self.offset is not None
            else np.zeros(near.size, np.int16)
        )
        self._far_db.append(energy_db(ref))
        if not self._far_active():
            self._open = 0
            return near.tobytes()  # nothing to cancel: the user's audio as it came
        self.stats.cancelled += 1
        rev = self._frame_cls(ref.tobytes(), MIC_RATE, 1, near.size)
        self.apm.process_reverse_stream(rev)
        cap = self._frame_cls(near.tobytes(), MIC_RATE, 1, near.size)
        self.apm.process_stream(cap)
        cleaned = np.frombuffer(cap.data, np.int16)
        e_in, e_out, e_far = energy_db(near), energy_db(cleaned), max(self._far_db)
        self.stats.in_energy += 10 ** (e_in / 10)
        self.stats.out_energy += 10 ** (e_out / 10)
        if e_in - e_out >= ECHO_ONLY_DB:  # echo alone: how loud the room makes it
            self.erl_db += ERL_ALPHA * (e_in - e_far - self.erl_db)
        # The user is never louder than the raw mic, and a frame AEC3 cut by ECHO_ONLY_DB
        # was echo: a filter still converging can add energy of its own to a quiet frame.
        removed = e_in - e_out
        if removed < ECHO_ONLY_DB and min(e_in, e_out) - e_far > self.erl_db - self.gate_db:
            self._open = self.hangover + 1
        if self._open:
            self._open -= 1
            return cleaned.tobytes()
        self.stats.gated += 1
        return bytes(near.size * 2)
