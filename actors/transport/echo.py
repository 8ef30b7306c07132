"""Server-side echo cancellation for one session: the bot's own voice out of its mic.

A client on a speaker hears the reply back in its microphone, and Silero calls that echo
speech at almost any level, so the bot would pause for (and then answer) itself. We know the
exact samples sent and when the client played them, so every 10 ms mic frame goes through
four steps before the mic ring (VAD and ASR see the result):

1. **Far-end reference** (``Reference``): the client's speaker output in mic time. The
   client plays what it gets at once and at its own (the mic's) clock, so a chunk sent
   while the client still plays continues the timeline, and a chunk sent after the client
   ran dry (between reply chunks, after an utterance, a RELEASE after a clear) starts at
   the mic sample being received then: the reference carries the silence the client
   really played. ``played`` acks only correct a model that is off by more than
   ``REANCHOR`` (a client with hidden buffering), and two acks with one count tell that
   the client stopped (a ``clear``): what it dropped is no longer reference.
2. **Is there an echo path at all?** (``EchoPath``): a headset has none, and AEC3's
   suppressor cuts a talker by 10-20 dB while the bot talks even then. A mic that stays
   50 dB under the far end for the first 400 ms of bot speech holds no harmful echo
   (``NONE`` then: the usual verdict for a headset or a test client). Else PHAT-weighted
   cross-correlations of reference and raw mic over 100 ms blocks (lags -20..500 ms,
   accumulated with forgetting once 600 ms of reference fill the window) decide: a sharp
   peak at a steady lag is an echo path (``ECHO``, and its lag), no peak over a second of
   blocks where an echo would show is ``NONE``. With ``NONE`` the mic passes untouched
   and AEC3 is not called. Until it knows (``UNKNOWN``: offline 0.95-1.2 s of bot speech
   for a speakerphone, median, 1.5 s at most, while Silero fires on its raw echo after
   35-260 ms) it cancels and gates, so the first echoed reply of a speakerphone never
   barges in.
3. **WebRTC AEC3** (``livekit.rtc.AudioProcessingModule``, already a dependency; the
   binding configures nothing of it, so its suppressor cannot be turned down) on 10 ms
   frames, mic and reference in lockstep.
4. **Residual-echo gate** (``ResidualGate``): which of AEC3's work reaches VAD and ASR;
   the raw mic well above the echo's learnt level passes as it came (AEC3's suppression
   costs a talker over a quieter echo nothing), a mic the echo alone explains is zeroed,
   and in between AEC3's output passes if it is above what AEC3 leaves of an echo.

While the far end has been silent for ``TAIL_FRAMES`` the mic passes untouched and AEC3 is
not called: an idle session costs nothing. ``stats`` counts what was done.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

import numpy as np

from voxmesh.mesh.ring import MIC_RATE, OUT_RATE

AecMode = Literal["server", "client", "off"]
AEC_MODES: Final[tuple[AecMode, ...]] = ("server", "client", "off")

APM_FRAME: Final = MIC_RATE // 100  # AEC3 takes 10 ms frames
DECIMATE: Final = OUT_RATE // MIC_RATE
STORE: Final = 1 << 16  # 4.1 s of reference at 16 kHz: far more than ack lag + room delay
TAIL_FRAMES: Final = 60  # 600 ms: the echo of a far frame can come this late (delay + room)
REANCHOR: Final = MIC_RATE * 40 // 1000  # an ack this far off the model re-anchors it
FAR_FLOOR_DB: Final = 20.0  # a reference frame below this (int16 energy, ~-70 dBFS) is silence

# The echo-path detector (EchoPath).
BLOCK: Final = 10 * APM_FRAME  # 100 ms of mic per correlation
MAX_LAG: Final = MIC_RATE // 2  # echo up to 500 ms after the reference (device + room)
MIN_LAG: Final = MIC_RATE // 50  # ...or 20 ms before it (the alignment is not exact)
FORGET: Final = 0.97  # per block: the evidence of the last ~3 s counts
Z_ECHO: Final = 8.0  # correlation peak over its noise: an echo path
Z_NONE: Final = 5.5  # below this over NONE_BLOCKS informative blocks: no echo path
NONE_BLOCKS: Final = 10
QUIET_DB: Final = 50.0  # a mic this far below the far end cannot hold a harmful echo
QUIET_BLOCKS: Final = 4  # 400 ms: any echo up to 300 ms late would have shown
CLEAR_DB: Final = 20.0  # a mic this far below the far end would show an echo of -30 dB
MIXED_DB: Final = (
    3.0  # a mic less than this below the far end is the user's, not a block to correlate
)
PEAK_BLOCKS: Final = 2  # blocks in a row with the peak at one lag (within PEAK_JITTER)
# A room's strongest tap changes from block to block among its first few (bench rooms: 30 /
# 33 ms, 100 / 114 ms, 253 / 264 ms), so "one lag" is 20 ms wide. With 2 ms and Z_ECHO 9 the
# verdict came 0.1-0.3 s later on the median (0.95-1.2 s now) and up to 4.2 s in (1.5 s
# now), offline over 16 mixes in each of four rooms; a mic with no echo got no echo
# verdict with either (40 mixes, noise up to -20 dB, a user talking over the bot in half).
PEAK_JITTER: Final = MIC_RATE * 20 // 1000
BAND_HZ: Final = (150.0, 6000.0)  # where speech (ours and the room's) has its phase
PHAT_BETA: Final = 0.7  # partial whitening: bins the far end fills count a little more
# A room's strongest tap may come after its first (the correlation's peak 37 ms after the
# direct path, in a bench room): the echo begins at the earliest lag this close to the peak.
ONSET_REL: Final = 0.5
ONSET_SPAN: Final = MIC_RATE * 64 // 1000

# The residual-echo gate (ResidualGate), in dB of 10 ms frame energy.
ERL_INIT_DB: Final = 0.0  # before it has learnt: echo as loud as the far end (strict)
QUANTILE_STEP_DB: Final = 0.5
UNKNOWN_GATE_DB: Final = 4.0  # before a path is known: AEC3 still converging, be strict
RESIDUAL_DB: Final = 10.0  # AEC3's output must also be no more than this below the echo
ECHO_ONLY_DB: Final = 6.0  # a raw mic within this of the echo's usual level is echo alone
DOMINANT_DB: Final = 10.0  # the raw mic this far above the usual echo is the user's
LOUD_DB: Final = 20.0  # far-end frames within this of the loudest tell the echo's level
ROOM_DECAY: Final = 10 ** (-1.5 / 10)  # per 10 ms: an RT60 of 400 ms, slower than most rooms
AEC3_LATENCY: Final = 128  # samples AEC3's output lags its input (measured; test_echo.py)
# A mic frame this quiet (int16 energy, ~-70 dBFS; a client's noise suppression or a test
# sends digital silence) is nobody: it neither opens the gate nor starts raw passing, whose
# hangover would let the next far-end onset's echo through before AEC3 has cancelled it.
NEAR_FLOOR_DB: Final = 20.0


class Path(Enum):
    UNKNOWN = "unknown"
    NONE = "none"
    ECHO = "echo"


@dataclass
class EchoStats:
    frames: int = 0  # 10 ms mic frames seen
    cancelled: int = 0  # ... that went through AEC3 (the far end was active, a path possible)
    gated: int = 0  # ... zeroed by the residual-echo gate
    passed: int = 0  # ... passed untouched while the bot talked (no echo path)
    resumes: int = 0  # chunks that started the client again after it ran dry
    reanchors: int = 0  # times an ack moved the alignment
    cpu_s: float = 0.0  # thread CPU spent in process() (AEC3, detector, gate)
    in_energy: float = 0.0  # sum of squares of the raw mic while cancelling...
    out_energy: float = 0.0  # ...and after AEC3 (before the gate): their ratio is ERLE
    decided_after: int | None = None  # far-active frames before the first NONE/ECHO

    @property
    def erle_db(self) -> float:
        return 10.0 * float(np.log10((self.in_energy + 1.0) / (self.out_energy + 1.0)))


def energy_db(x: np.ndarray) -> float:
    """Mean square of int16 samples, in dB (0 dB: amplitude 1 LSB)."""
    e = float(np.dot(x.astype(np.float64), x.astype(np.float64))) / max(x.size, 1)
    return 10.0 * float(np.log10(e + 1.0))


class Reference:
    """The client's speaker output at 16 kHz, in mic samples.

    Far-end samples are stored by the client's played counter / 3 (``buf``, ``hi`` one
    past the last written); ``offset`` maps a mic sample onto it. Pure state: the caller
    says how many mic samples it had when each chunk was sent or ack came."""

    def __init__(self) -> None:
        self.buf = np.zeros(STORE, np.int16)
        self.hi = 0
        self.offset: int | None = None  # far position - mic position
        self.resumes = 0
        self.reanchors = 0
        self._last_ack: tuple[int, int] | None = None

    def sent(self, pos: int, pcm: np.ndarray, near: int) -> None:
        """Far samples ``pcm`` at played position ``pos``, sent when ``near`` mic samples
        had come."""
        current = self.offset
        if current is None or pos != self.hi or near >= self.hi - current:
            # The client had nothing left to play (or dropped it: a rewind after a clear):
            # it plays this as it gets it, i.e. from about the mic sample coming in now.
            if current is not None:
                self.resumes += 1
            self.offset = pos - near
            self.hi = min(self.hi, pos)
        if pos > self.hi:  # a jump ahead (after a STOP): nothing played in between
            gap = np.arange(self.hi, min(pos, self.hi + STORE)) % STORE
            self.buf[gap] = 0
        idx = np.arange(pos, pos + pcm.size) % STORE
        self.buf[idx] = pcm
        self.hi = max(self.hi, pos + pcm.size)

    def ack(self, played: int, near: int) -> None:
        """The client had played ``played`` far samples when ``near`` mic samples had come."""
        last, self._last_ack = self._last_ack, (played, near)
        if played >= self.hi:
            return  # ran dry: its counter waits at the end of what it got
        if last is not None and last[0] == played and near > last[1]:
            self.hi = played  # stopped mid-stream (a clear): the rest will never play
            return
        if self.offset is None or abs(played - near - self.offset) > REANCHOR:
            if self.offset is not None:
                self.reanchors += 1
            self.offset = played - near

    def read(self, near: int, n: int) -> np.ndarray:
        """What the speaker gave out while mic samples [near, near + n) were captured."""
        out = np.zeros(n, np.int16)
        if self.offset is None:
            return out
        pos = near + self.offset
        lo, hi = max(pos, self.hi - STORE, 0), min(pos + n, self.hi)
        if hi > lo:
            out[lo - pos : hi - pos] = self.buf[np.arange(lo, hi) % STORE]
        return out


class EchoPath:
    """Whether the mic hears the far end at all: PHAT cross-correlation over 100 ms mic
    blocks against the reference of the block and the ``MAX_LAG`` before it, accumulated
    with forgetting. Push every 10 ms frame while the far end is active; ``state`` is the
    verdict. ``NONE`` turns into ``ECHO`` when a path appears (a headset unplugged); an
    echo path, once measured, stays for the session (so the correlation stops then)."""

    def __init__(self) -> None:
        span = BLOCK + MAX_LAG
        self.nfft = 1 << int(np.ceil(np.log2(span + MIN_LAG)))
        f = np.fft.rfftfreq(self.nfft, 1.0 / MIC_RATE)
        self.band = (f >= BAND_HZ[0]) & (f <= BAND_HZ[1])
        self.lags = np.arange(-MIN_LAG, MAX_LAG + 1)
        self.state = Path.UNKNOWN
        self.lag: int | None = None  # mic samples the echo comes after the reference
        self.onset_lag: int | None = None  # ...at the earliest: where its first tap is
        self.z = 0.0
        self._ref = np.zeros(span)
        self._mic = np.zeros(BLOCK)
        self._span_frames = span // APM_FRAME
        self._ref_db: deque[float] = deque(maxlen=self._span_frames)
        self._mic_db: deque[float] = deque(maxlen=BLOCK // APM_FRAME)
        self._n = 0
        self._acc = np.zeros(self.lags.size)
        self._quiet = 0
        self._flat = 0
        self._peak_lag: int | None = None
        self._peaks = 0  # blocks in a row with a peak at one lag
        self.blocks = 0  # informative blocks seen

    def push(self, ref: np.ndarray, mic: np.ndarray, ref_db: float, mic_db: float) -> None:
        k = ref.size
        self._ref[:-k] = self._ref[k:]
        self._ref[-k:] = ref
        at = self._n % BLOCK
        self._mic[at : at + k] = mic
        self._ref_db.append(ref_db)
        self._mic_db.append(mic_db)
        self._n += k
        if self._n % BLOCK == 0:
            self._block()

    def _block(self) -> None:
        ref_db = np.asarray(self._ref_db)
        below = self._mic_below(ref_db)  # dB the mic block is under the far end
        # A mic that stays this quiet from the far end's start holds no echo that comes
        # within QUIET_BLOCKS - 1 blocks (the quick verdict for a headset).
        self._quiet = self._quiet + 1 if below >= QUIET_DB else 0
        if self._quiet >= QUIET_BLOCKS and self.state == Path.UNKNOWN:
            self.state = Path.NONE
        # The correlation tells something only once the far end has played through most
        # of the lags it could echo from: over a reference that starts inside the window
        # it has edges, not speech.
        if ref_db.size < self._span_frames or np.mean(ref_db > FAR_FLOOR_DB) < 0.5:
            return
        self.blocks += 1
        if not self._mic.any() or self.state == Path.ECHO or below < MIXED_DB:
            # Nothing to correlate, nothing left to find out, or a block the user fills:
            # their speech against the bot's makes peaks of its own (a headset was found
            # "echoing" at 440 ms), and an echo shows in the blocks between their words.
            self._peaks = 0
            return
        self._acc = FORGET * self._acc + self._correlate()
        mag = np.abs(self._acc)
        peak = int(np.argmax(mag))
        # Most lags hold no echo: their median is the noise (a room tail spreads the peak).
        self.z = float(mag[peak] / (np.median(mag) / 0.6745 + 1e-12))
        lag = int(self.lags[peak])
        steady = self._peak_lag is not None and abs(lag - self._peak_lag) <= PEAK_JITTER
        self._peaks = self._peaks + 1 if self.z >= Z_ECHO and steady else 0
        # Overturning a NONE verdict takes one more block of evidence.
        if self._peaks >= (PEAK_BLOCKS + (self.state == Path.NONE)):
            self.lag = lag
            near = (self.lags >= lag - ONSET_SPAN) & (mag >= ONSET_REL * mag[peak])
            self.onset_lag = int(self.lags[np.flatnonzero(near)[0]])  # the peak is one
            self.state = Path.ECHO
        elif self.z < Z_NONE and below >= CLEAR_DB:
            # No peak although an echo of the far end would fill a good part of the mic.
            self._flat += 1
            if self._flat >= NONE_BLOCKS and self.state == Path.UNKNOWN:
                self.state = Path.NONE
        self._peak_lag = lag if self.z >= Z_ECHO else None

    def _mic_below(self, ref_db: np.ndarray) -> float:
        """How far (dB) the mic block is below the far end over the lags it could echo
        from (their median: the lag is not known yet)."""
        n = BLOCK // APM_FRAME
        far = np.convolve(10 ** (ref_db / 10), np.ones(n) / n, mode="valid")
        mic = float(np.mean(10 ** (np.asarray(self._mic_db) / 10)))
        return 10 * float(np.log10(max(float(np.median(far)), 1.0) / mic))

    def _correlate(self) -> np.ndarray:
        a = np.fft.rfft(self._ref, self.nfft)
        b = np.fft.rfft(self._mic, self.nfft)
        # The block sits at the end of the reference window: lag 0 is offset MAX_LAG.
        c = b * np.conj(a)
        mag = np.abs(c)
        g = np.where(self.band, c / (mag**PHAT_BETA + 1e-9 * float(mag.max()) + 1e-12), 0.0)
        r: np.ndarray = np.fft.irfft(g, self.nfft)
        return r[(self.lags - MAX_LAG) % self.nfft]


class Quantile:
    """A running quantile of a stream, in dB: steps of ``step`` towards it per sample."""

    def __init__(self, q: float, init: float, step: float = QUANTILE_STEP_DB) -> None:
        self.q, self.value, self.step = q, init, step

    def push(self, x: float) -> None:
        self.value += self.step * (self.q - (1.0 if x < self.value else 0.0))


class ResidualGate:
    """Per 10 ms frame, what of AEC3's work reaches VAD and ASR while the bot talks.

    ``env`` is the far-end energy the frame's echo comes from (dB). Measured on
    speakerphone mixes (bench/echo.py): after AEC3, echo alone stays below env - 10 dB in
    99 % of frames, while half of a user's frames are within 2 dB of env, and AEC3's
    suppressor removes 35 dB and more from a tenth of them. So:

    - the raw mic well above the echo's usual level (``erl``, the median of mic over env
      while the far end is loud: echo alone, or higher with a user talking) is the user
      talking over a much quieter echo: it passes as it came (delayed like AEC3's
      output), so AEC3's suppression costs none of its words, and it keeps passing so
      while the mic stays above what the echo alone explains: a word that switched from
      the raw mic to AEC3's suppressed output and back between syllables reached Silero
      late (offline, bench/echo.py's interruption over 8 seeds: onset confirmed 109 / 182
      ms median / max at -10 dB, 100 ms, 97 / 176 ms with this; 180 / 720 ms and 163 /
      190 ms at -6 dB, 30 ms; no onset on echo alone either way);
    - a raw mic the echo alone explains (within ``ECHO_ONLY_DB`` of its usual level)
      never opens the gate: AEC3 leaves the room's tail in it until it has converged;
    - else AEC3's output opens the gate if it is above env - ``gate_db`` (and no more
      than ``RESIDUAL_DB`` below the echo's usual level: a loud echo leaves a loud
      residual), for ``hangover`` frames once two frames in a row do;
    - else the frame is residual echo and is zeroed.

    Until an echo path is measured (``learnt`` False) only the second rule holds, with
    ``gate_db`` replaced by the strict ``UNKNOWN_GATE_DB``. A raw mic at the noise floor
    (``NEAR_FLOOR_DB``) opens nothing: over 224 offline mixes (7 rooms, 32 seeds) echo alone
    started speech in 4 before it and the onset lag (``EchoPath.onset_lag``), in none after,
    and a user's onset was confirmed 57 / 134 ms (median / p95) against 55 / 141 ms."""

    def __init__(self, gate_db: float, hangover: int) -> None:
        self.gate_db = gate_db
        self.hangover = hangover
        self.erl = Quantile(0.5, ERL_INIT_DB)
        self._raw = np.zeros(AEC3_LATENCY, np.int16)  # the last raw samples, AEC3-aligned
        self._above = 0
        self._open = 0
        self._raw_passing = False  # the user is over the echo: the raw mic passes

    def learn(self, e_in: float, env: float, env_peak: float) -> None:
        """Every far-active frame once an echo path is known: how loud the echo is."""
        if env > FAR_FLOOR_DB and env >= env_peak - LOUD_DB:
            self.erl.push(e_in - env)

    def delayed(self, near: np.ndarray) -> np.ndarray:
        """The raw frame as late as AEC3's output of it."""
        joined = np.concatenate([self._raw, near])
        self._raw = joined[-AEC3_LATENCY:]
        return joined[: near.size]

    def choose(
        self,
        raw: np.ndarray,
        cleaned: np.ndarray,
        e_in: float,
        e_out: float,
        env: float,
        learnt: bool,
    ) -> np.ndarray | None:
        """The frame VAD and ASR get (None: zeroed as residual echo)."""
        late = self.delayed(raw)
        if e_in <= NEAR_FLOOR_DB:
            self._raw_passing = False
            self._above = 0
            return self._hangover(cleaned)
        above = e_in - env - self.erl.value  # the raw mic over the echo's usual level
        limit = ECHO_ONLY_DB if self._raw_passing else DOMINANT_DB
        self._raw_passing = learnt and above > limit
        if self._raw_passing:
            self._open = self.hangover
            return late
        if learnt:  # a loud echo leaves a loud residual while AEC3 converges
            threshold = env + max(-self.gate_db, self.erl.value - RESIDUAL_DB)
        else:
            threshold = env - UNKNOWN_GATE_DB
        # Echo alone explains a mic this quiet: it never opens the gate (a user quieter
        # than the echo is lost, one above it is not).
        opens = e_out > threshold and (not learnt or above > ECHO_ONLY_DB)
        self._above = self._above + 1 if opens else 0
        if self._above >= 2:
            self._open = self.hangover + 1
        return self._hangover(cleaned)

    def _hangover(self, cleaned: np.ndarray) -> np.ndarray | None:
        if self._open:
            self._open -= 1
            return cleaned
        return None

    def reset(self) -> None:
        self._open = self._above = 0
        self._raw_passing = False
        self._raw[:] = 0


class EchoCanceller:
    """One session's canceller: ``far()`` from the pacer, ``ack()`` from ``played``,
    ``process()`` on each 20 ms mic frame before the mic ring."""

    def __init__(self, *, gate_db: float, hangover_ms: int) -> None:
        from livekit.rtc import AudioFrame, AudioProcessingModule

        self._frame_cls = AudioFrame
        # Only AEC3 (its own suppressor included): noise suppression or AGC would change
        # the user's speech that ASR hears, and the high-pass filter buys Silero nothing.
        self.apm = AudioProcessingModule(echo_cancellation=True)
        # The reference is aligned here; AEC3's delay estimator finds the rest (measured:
        # the same ERLE for any hint from 0 to 200 ms on a 100 ms echo).
        self.apm.set_stream_delay_ms(0)
        self.reference = Reference()
        self.path = EchoPath()
        self.gate = ResidualGate(gate_db, max(0, hangover_ms // 10))
        self.stats = EchoStats()
        self._near = 0  # mic samples processed
        self._far_db: deque[float] = deque(maxlen=TAIL_FRAMES)
        self._ref_e: deque[float] = deque(maxlen=MAX_LAG // APM_FRAME + 2)  # linear
        self._env = 0.0  # the echo's envelope before the room's loss (linear energy)
        self._active_frames = 0

    # --- the far end ------------------------------------------------------------------------

    def far(self, pos48: int, pcm48: bytes, near_received: int) -> None:
        """A chunk sent to the client at its played-counter position ``pos48``, when
        ``near_received`` mic samples (16 kHz) had come."""
        x = np.frombuffer(pcm48, "<i2")
        n = x.size // DECIMATE * DECIMATE
        # A 3-sample mean is a crude anti-alias filter, but a linear one without state: AEC3
        # takes its droop as part of the echo path (33.5 dB ERLE against 36.3 dB with soxr).
        pcm16 = x[:n].reshape(-1, DECIMATE).mean(axis=1).astype(np.int16)
        self.reference.sent(pos48 // DECIMATE, pcm16, near_received)
        self.stats.resumes = self.reference.resumes

    def ack(self, played48: int, near_received: int) -> None:
        """The client has played ``played48`` samples; ``near_received`` mic samples (16 kHz)
        had reached us when the ack did."""
        self.reference.ack(played48 // DECIMATE, near_received)
        self.stats.reanchors = self.reference.reanchors

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
        st = self.stats
        st.frames += 1
        ref = self.reference.read(self._near, near.size)
        self._near += near.size
        e_ref, e_in = energy_db(ref), energy_db(near)
        self._far_db.append(e_ref)
        self._ref_e.append(10 ** (e_ref / 10))
        if not self._far_active():
            self.gate.reset()
            return near.tobytes()  # nothing to cancel: the user's audio as it came
        self._active_frames += 1
        self.path.push(ref, near, e_ref, e_in)
        if st.decided_after is None and self.path.state != Path.UNKNOWN:
            st.decided_after = self._active_frames
        env = self._envelope()
        learnt = self.path.state == Path.ECHO
        if learnt:
            self.gate.learn(e_in, env, 10.0 * float(np.log10(max(self._ref_e) + 1.0)))
        if self.path.state == Path.NONE:
            st.passed += 1
            return near.tobytes()  # a headset: nothing of ours in the mic to take out
        st.cancelled += 1
        rev = self._frame_cls(ref.tobytes(), MIC_RATE, 1, near.size)
        self.apm.process_reverse_stream(rev)
        cap = self._frame_cls(near.tobytes(), MIC_RATE, 1, near.size)
        self.apm.process_stream(cap)
        cleaned = np.frombuffer(cap.data, np.int16)
        e_out = energy_db(cleaned)
        st.in_energy += 10 ** (e_in / 10)
        st.out_energy += 10 ** (e_out / 10)
        chosen = self.gate.choose(near, cleaned, e_in, e_out, env, learnt)
        if chosen is not None:
            return chosen.tobytes()
        st.gated += 1
        return bytes(near.size * 2)

    def _envelope(self) -> float:
        """The far-end energy (dB) the echo in this mic frame comes from: the reference
        ``onset_lag`` back, held with the room's decay; before the lag is known, the
        loudest frame an echo could come from (strict)."""
        lag = self.path.onset_lag
        if lag is None or self.path.state != Path.ECHO:
            self._env = max(self._ref_e)
        else:
            k = max(0, lag) // APM_FRAME
            back = [self._ref_e[-1 - i] for i in (k, k + 1) if i < len(self._ref_e)]
            self._env = max(max(back, default=0.0), self._env * ROOM_DECAY)
        return 10.0 * float(np.log10(self._env + 1.0))

    def summary(self) -> str:
        """One line for the session's close log."""
        st = self.stats
        cpu = 100 * st.cpu_s / max((st.cancelled + st.passed) * 0.01, 1e-9)
        lag = "" if self.path.lag is None else f", lag {1000 * self.path.lag / MIC_RATE:.0f} ms"
        return (
            f"echo path {self.path.state.value} (z {self.path.z:.1f}{lag}, after "
            f"{st.decided_after} far frames), {st.frames} frames, {st.cancelled} cancelled, "
            f"{st.gated} gated, {st.passed} passed, {st.resumes} resumes, {st.reanchors} "
            f"re-anchored, ERL {self.gate.erl.value:.1f} dB, ERLE {st.erle_db:.1f} dB, "
            f"{cpu:.2f} % of a core while the bot talked"
        )
