"""The interface every TTS voice offers, plus helpers all voices share.

A voice turns one text chunk into 48 kHz int16 mono audio, yielded in pieces of any length
as soon as they exist; the TTS actor slices them into 20 ms frames (`FrameSlicer`). It says
what really runs it (`provider`), and `level_matched` gives it the loudness every other
voice has, so a voice swap does not jump in volume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from voxmesh.speech.resample import StreamResampler

OUTPUT_RATE = 48000
FRAME_SAMPLES = OUTPUT_RATE // 50  # one 20 ms frame


@runtime_checkable
class Voice(Protocol):
    name: str

    @property
    def provider(self) -> str:
        """What really runs the voice: "CUDAExecutionProvider", "espeak-ng", "mock"..."""
        ...

    def synthesize(self, text: str, *, first: bool) -> Iterator[np.ndarray]:
        """Audio of `text`: int16 mono at 48 kHz, pieces of any length.

        `first` marks an utterance's first chunk: the voice may trim its leading silence,
        which is pure latency there (later chunks keep it as the pause between sentences).
        """
        ...


class LeadingSilenceTrimmer:
    """Drops audio before the first sample louder than `threshold`, keeping `keep_ms` of
    lead-in (faded in, so the cut cannot click). Works incrementally across pieces."""

    def __init__(self, rate: int, *, threshold: int = 500, keep_ms: float = 5.0) -> None:
        self.threshold = threshold
        self.keep = max(1, int(rate * keep_ms / 1000))
        self.done = False
        self.dropped = 0  # samples removed, for reporting
        self._tail = np.zeros(0, np.int16)  # last quiet samples, candidates for the lead-in

    def push(self, pcm: np.ndarray) -> np.ndarray:
        if self.done:
            return pcm
        x = np.concatenate([self._tail, pcm]) if self._tail.size else pcm
        loud = np.flatnonzero(np.abs(x.astype(np.int32)) > self.threshold)
        if loud.size == 0:
            self._tail = x[-self.keep :]
            self.dropped += x.size - self._tail.size
            return np.zeros(0, np.int16)
        cut = max(0, int(loud[0]) - self.keep)
        self.dropped += cut
        self.done = True
        out = x[cut:].copy()
        lead = min(self.keep, out.size)
        out[:lead] = (out[:lead] * np.linspace(0.0, 1.0, lead, endpoint=False)).astype(np.int16)
        return out


class FrameSlicer:
    """Re-cuts pieces of any length into fixed frames (default 20 ms at 48 kHz)."""

    def __init__(self, frame: int = FRAME_SAMPLES) -> None:
        self.frame = frame
        self._rest = np.zeros(0, np.int16)

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        x = np.concatenate([self._rest, pcm]) if self._rest.size else np.asarray(pcm, np.int16)
        n = x.size // self.frame
        self._rest = x[n * self.frame :].copy()
        return [x[i * self.frame : (i + 1) * self.frame] for i in range(n)]

    def flush(self) -> list[np.ndarray]:
        """The remainder, zero-padded to a whole frame (nothing if there is none)."""
        if self._rest.size == 0:
            return []
        last = np.zeros(self.frame, np.int16)
        last[: self._rest.size] = self._rest
        self._rest = np.zeros(0, np.int16)
        return [last]


def to_output_rate(
    pieces: Iterable[np.ndarray], rate: int, trimmer: LeadingSilenceTrimmer | None = None
) -> Iterator[np.ndarray]:
    """int16 `pieces` at `rate` as 48 kHz pieces, trimmed first by `trimmer` if given; one
    resampler for the whole stream, so piece boundaries never click."""
    resampler = StreamResampler(rate, OUTPUT_RATE)
    for pcm in pieces:
        out = resampler.push(trimmer.push(pcm) if trimmer is not None else pcm)
        if out.size:
            yield out
    tail = resampler.flush()
    if tail.size:
        yield tail


def cuda_ordinal(device: str, environ: Mapping[str, str] = os.environ) -> int | None:
    """The CUDA device number GPU `device` ("0", "1"...) has inside this process; None for
    "cpu" or a GPU that CUDA_VISIBLE_DEVICES hides. The supervisor pins each TTS actor to
    its GPU (supervisor/topology.py), so there GPU "1" is CUDA device 0."""
    if not device.isdigit():
        return None
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return int(device)
    ids = [part.strip() for part in visible.split(",")]
    return ids.index(device) if device in ids else None


# --- level matching --------------------------------------------------------------------------

# A short reply of four sentences: what voices say here. Piper's level varies by about
# 1.5 dB from sentence to sentence, so one sentence would set the gain by chance.
CALIBRATION_TEXT = (
    "Hello there! Sure, I can help with that. The next train leaves at ten past four. "
    "Is there anything else I can do for you?"
)
ACTIVE_RANGE_DB = 35.0  # 20 ms frames this far below the loudest one are pauses, not speech
PEAK_CEILING = 0.89  # -1 dBFS: a gain never pushes the calibration phrase's peak above this


def active_level_dbfs(pcm: np.ndarray, rate: int = OUTPUT_RATE) -> float:
    """RMS level of the speech in `pcm` in dBFS (0 dBFS: a full-scale square wave), pauses
    left out: every 20 ms frame within ACTIVE_RANGE_DB of the loudest counts. -inf if silent.
    """
    x = np.asarray(pcm, np.float64).reshape(-1) / 32768.0
    frame = min(max(1, rate // 50), max(1, x.size))
    power = np.mean(x[: x.size // frame * frame].reshape(-1, frame) ** 2, axis=1)
    if power.size == 0 or power.max() <= 0:
        return float("-inf")
    active = power[power >= power.max() * 10 ** (-ACTIVE_RANGE_DB / 10)]
    return float(10 * np.log10(np.mean(active)))


class LevelMatched:
    """`voice` at a fixed gain: one per voice, set at load, so levels never pump in a stream."""

    def __init__(self, voice: Voice, gain: float, *, measured_dbfs: float, calibration_s: float):
        self.voice = voice
        self.name = voice.name
        self.gain = gain
        self.measured_dbfs = measured_dbfs  # the voice's own level, before the gain
        self.calibration_s = calibration_s

    @property
    def provider(self) -> str:
        return self.voice.provider

    @property
    def gain_db(self) -> float:
        return float(20 * np.log10(self.gain))

    def synthesize(self, text: str, *, first: bool) -> Iterator[np.ndarray]:
        for pcm in self.voice.synthesize(text, first=first):
            out = np.clip(np.rint(pcm * np.float32(self.gain)), -32768, 32767)
            yield out.astype(np.int16)


def level_matched(
    voice: Voice, target_dbfs: float, *, text: str = CALIBRATION_TEXT
) -> LevelMatched:
    """`voice` with the gain that brings its speech to `target_dbfs` (`active_level_dbfs`),
    measured on one calibration phrase (this also warms the model up). The gain is capped so
    the phrase's peak stays under -1 dBFS; louder peaks later are clipped, never wrapped."""
    started = time.monotonic()
    pcm = np.concatenate([np.zeros(0, np.int16), *voice.synthesize(text, first=True)])
    elapsed = time.monotonic() - started
    measured = active_level_dbfs(pcm)
    if not np.isfinite(measured):
        raise RuntimeError(f"voice {voice.name!r} said nothing for the calibration phrase")
    gain = 10 ** ((target_dbfs - measured) / 20)
    peak = float(np.abs(pcm.astype(np.float64)).max()) / 32768.0
    gain = min(gain, PEAK_CEILING / peak)
    return LevelMatched(voice, gain, measured_dbfs=measured, calibration_s=elapsed)


class MockVoice:
    """Model-free voice for tests and benches: a soft tone, `ms_per_char` long per character,
    yielded in `piece_ms` pieces. Deterministic and cheap."""

    name = "mock"
    provider = "mock"

    def __init__(self, *, ms_per_char: float = 60.0, piece_ms: int = 100, freq: float = 220.0):
        self.ms_per_char = ms_per_char
        self.piece = OUTPUT_RATE * piece_ms // 1000
        self.freq = freq

    def synthesize(self, text: str, *, first: bool = True) -> Iterator[np.ndarray]:
        n = int(len(text.strip()) * self.ms_per_char * OUTPUT_RATE / 1000)
        t = np.arange(n) / OUTPUT_RATE
        audio = (3000 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        for i in range(0, n, self.piece):
            yield audio[i : i + self.piece]
