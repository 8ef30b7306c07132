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
    except wave.Error as exc:
        kind = _wav_kind(path)
        if kind is not None:  # a WAV file, in an encoding the wave module does not read
            raise WavError(f"{path} is {kind} WAV; {NEEDED} ({convert_hint(path)})") from None
        raise WavError(f"cannot read {path} as a WAV file: {exc}") from None
    except (OSError, EOFError) as exc:
        detail = str(exc) or "the file ends too soon"
        raise WavError(f"cannot read {path} as a WAV file: {detail}") from None
    if width != 2:
        raise WavError(
            f"{path} has {8 * width}-bit samples; only 16-bit PCM is supported"
            f" ({convert_hint(path)})"
        )
    pcm = np.frombuffer(data[: len(data) // (2 * channels) * 2 * channels], "<i2")
    if channels > 1:
        mixed = pcm.reshape(-1, channels).astype(np.int32).mean(axis=1)
        pcm = np.rint(mixed).astype(np.int16)
    return pcm.astype(np.int16), rate


NEEDED = "only 16-bit PCM is supported"
# WAVE format tags (the fmt chunk's first field; WAVE_FORMAT_EXTENSIBLE names its own below)
FORMAT_NAMES = {1: "PCM", 2: "ADPCM", 3: "float", 6: "A-law", 7: "mu-law", 0x55: "MP3"}
EXTENSIBLE = 0xFFFE


def convert_hint(path: str | Path) -> str:
    """How to make a 16-bit PCM copy of a WAV file."""
    return f"convert with: sox {path} -b 16 -e signed-integer out.wav"


def _wav_kind(path: str | Path) -> str | None:
    """What a RIFF/WAVE file's fmt chunk says it holds ("32-bit float"), None if it has none."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            while chunk := f.read(8):
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name != b"fmt ":
                    f.seek(size + size % 2, 1)
                    continue
                fmt = f.read(size)
                if len(fmt) < 16:
                    return None
                tag, _channels, _rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", fmt[:16])
                extensible = tag == EXTENSIBLE and len(fmt) >= 26
                if extensible:
                    tag = struct.unpack("<H", fmt[24:26])[0]  # the subformat GUID's first field
                kind = FORMAT_NAMES.get(tag, f"format {tag}")
                kind = f"{bits}-bit {kind}" if bits else kind
                return f"{kind} (WAVE_FORMAT_EXTENSIBLE)" if extensible else kind
    except OSError:
        return None
    return None


def write_wav(path: str | Path, pcm: bytes | np.ndarray, rate: int = OUT_RATE) -> float:
    """Write int16 mono PCM as a WAV file; returns its duration in seconds."""
    data = pcm if isinstance(pcm, bytes) else np.asarray(pcm, "<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    return len(data) / 2 / rate
