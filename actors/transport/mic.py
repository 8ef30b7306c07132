"""Client microphone PCM (any rate, any chunking) into exact 20 ms 16 kHz mic-ring frames."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from voxmesh.mesh.ring import MIC_FRAME_BYTES, MIC_RATE, FrameRing
from voxmesh.speech.resample import StreamResampler

MIN_RATE = 8000
MAX_RATE = 48000
# soxr's low quality still filters properly; it holds back ~11 ms at 48 kHz where the
# medium and high settings hold back ~21 ms, and every millisecond here delays the VAD.
QUALITY = "LQ"


class MicWriter:
    """Resamples one session's mic stream to 16 kHz and writes 320-sample frames.

    Odd byte counts are kept for the next push; leftover samples short of a frame wait in
    ``_pending``. A change of input rate drains the old resampler first, so no sample is
    lost at the switch. ``clean``, when set, takes each frame before the ring (the session's
    echo canceller, echo.py), so the VAD and ASR hear what it leaves.
    """

    def __init__(self, ring: FrameRing) -> None:
        self.ring = ring
        self.frames = 0  # frames written to the ring
        self.clean: Callable[[bytes], bytes] | None = None
        self._rate = 0
        self._resampler: StreamResampler | None = None
        self._odd = b""
        self._pending = bytearray()  # 16 kHz s16le bytes not yet a whole frame

    @property
    def received(self) -> int:
        """16 kHz samples out of the resampler so far (framed or still pending)."""
        return self.frames * (MIC_FRAME_BYTES // 2) + len(self._pending) // 2

    def push(self, pcm: bytes, sample_rate: int) -> int:
        """Take s16le mono PCM at ``sample_rate``; returns how many frames were written."""
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise ValueError(f"mic rate {sample_rate} outside {MIN_RATE}..{MAX_RATE}")
        if sample_rate != self._rate:
            self._switch(sample_rate)
        data = self._odd + pcm if self._odd else pcm
        whole = len(data) & ~1
        self._odd = bytes(data[whole:])
        if whole:
            samples = np.frombuffer(data, dtype="<i2", count=whole // 2)
            assert self._resampler is not None
            self._pending += self._resampler.push(samples).astype("<i2").tobytes()
        return self._emit()

    def _switch(self, sample_rate: int) -> None:
        if self._resampler is not None:
            self._pending += self._resampler.flush().astype("<i2").tobytes()
        self._odd = b""
        self._rate = sample_rate
        self._resampler = StreamResampler(sample_rate, MIC_RATE, quality=QUALITY)

    def _emit(self) -> int:
        n = len(self._pending) // MIC_FRAME_BYTES
        for i in range(n):
            frame = bytes(self._pending[i * MIC_FRAME_BYTES : (i + 1) * MIC_FRAME_BYTES])
            self.ring.write(frame if self.clean is None else self.clean(frame))
        if n:
            del self._pending[: n * MIC_FRAME_BYTES]
        self.frames += n
        return n
