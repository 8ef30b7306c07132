"""Streaming int16 resampling over soxr, so chunk boundaries never click."""

from __future__ import annotations

import numpy as np
import soxr


class StreamResampler:
    """Resamples a mono int16 stream pushed in arbitrary pieces.

    One instance per stream: soxr keeps filter state between pushes, which is what keeps
    piecewise output identical to resampling the whole signal at once.
    """

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"bad rates {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._quality = quality
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = self._new_stream()

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Feed int16 samples; returns whatever output is ready (may be empty)."""
        x = _as_int16(pcm)
        if self._stream is None:
            return x.copy()
        if x.size == 0:
            return np.zeros(0, np.int16)
        return float_to_int16(self._stream.resample_chunk(int16_to_float(x)))

    def flush(self) -> np.ndarray:
        """Drain the filter tail; the resampler is then ready for a new stream."""
        if self._stream is None:
            return np.zeros(0, np.int16)
        tail = float_to_int16(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        self.reset()
        return tail

    def reset(self) -> None:
        """Forget filter state (e.g. after a gap in the input)."""
        if self._stream is not None:
            self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream:
        # float32 inside: soxr's int16 path dithers (output not reproducible) and we clip
        # overshoot ourselves instead of wrapping.
        return soxr.ResampleStream(
            self.in_rate, self.out_rate, 1, dtype="float32", quality=self._quality
        )


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    x = np.asarray(pcm)
    if x.ndim != 1:
        x = x.reshape(-1)
    if x.dtype != np.int16:
        if np.issubdtype(x.dtype, np.floating):
            raise TypeError("StreamResampler takes int16 PCM; scale floats first")
        x = x.astype(np.int16)
    return np.ascontiguousarray(x)


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """[-1, 1] float audio to int16 with clipping (no wraparound on overshoot)."""
    x = np.clip(np.asarray(audio, dtype=np.float32) * 32768.0, -32768.0, 32767.0)
    out: np.ndarray = np.rint(x).astype(np.int16)
    return out


def int16_to_float(pcm: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.asarray(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    return out
