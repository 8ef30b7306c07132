"""The audio the client protocol carries, and the WAV files ``say`` and ``talk`` use.

The server sends 20 ms frames of 48 kHz s16le mono (``OUT_RATE``, ``FRAME_BYTES``) and
takes mic PCM at any rate from ``MIN_RATE`` to ``MAX_RATE`` (docs/client-protocol.md).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

OUT_RATE = 48_000
FRAME_BYTES = 1920  # 20 ms at OUT_RATE, 16-bit mono
MIN_RATE, MAX_RATE = 8000, 48000  # mic rates the server accepts


def rms(pcm: bytes | np.ndarray) -> float:
    """Root mean square of int16 PCM (0 for none): how loud a frame is."""
    x = np.frombuffer(pcm, "<i2") if isinstance(pcm, bytes) else np.asarray(pcm)
    x = x.astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


class WavError(ValueError):
    """A WAV file this client cannot use (unreadable, not 16-bit PCM)."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(int16 mono samples, rate) of a 16-bit PCM WAV; several channels are averaged."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        detail = str(exc) or "the file ends too soon"
        raise WavError(f"cannot read {path} as a WAV file: {detail}") from None
    if width != 2:
        raise WavError(f"{path} has {8 * width}-bit samples; only 16-bit PCM is supported")
    pcm = np.frombuffer(data[: len(data) // (2 * channels) * 2 * channels], "<i2")
    if channels > 1:
        mixed = pcm.reshape(-1, channels).astype(np.int32).mean(axis=1)
        pcm = np.rint(mixed).astype(np.int16)
    return pcm.astype(np.int16), rate


def write_wav(path: str | Path, pcm: bytes | np.ndarray, rate: int = OUT_RATE) -> float:
    """Write int16 mono PCM as a WAV file; returns its duration in seconds."""
    data = pcm if isinstance(pcm, bytes) else np.asarray(pcm, "<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    return len(data) / 2 / rate
