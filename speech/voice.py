"""The interface every TTS voice offers, plus helpers all voices share.

A voice turns one text chunk into 48 kHz int16 mono audio, yielded in pieces of any length
as soon as they exist; the TTS actor slices them into 20 ms frames (`FrameSlicer`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

OUTPUT_RATE = 48000
FRAME_SAMPLES = OUTPUT_RATE // 50  # one 20 ms frame


@runtime_checkable
class Voice(Protocol):
    name: str

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


class MockVoice:
    """Model-free voice for tests and benches: a soft tone, `ms_per_char` long per character,
    yielded in `piece_ms` pieces. Deterministic and cheap."""

    name = "mock"

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
