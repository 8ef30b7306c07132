"""Make speech at test time, offline: Piper (joe voice) and espeak-ng.

Piper speaks without its sampling noise (``noise_scale`` and ``noise_w_scale`` 0), so a
text sounds the same in every run and on every machine: a bound a test passes once it passes
every time (with the noise, one share of voiced frames varied 0.79-0.88 between runs).
Results are cached per process.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave
from typing import TYPE_CHECKING

import numpy as np
import soxr

if TYPE_CHECKING:
    from piper import PiperVoice

RATE = 16000


@functools.cache
def _piper() -> PiperVoice:
    from piper import PiperVoice

    from voxmesh.speech.assets import piper_voice_paths

    model, config = piper_voice_paths()
    return PiperVoice.load(model, config)


@functools.cache
def _piper_cached(text: str, rate: int) -> np.ndarray:
    from piper import SynthesisConfig

    voice = _piper()
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    parts = [c.audio_float_array for c in voice.synthesize(text, steady)]
    audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    audio = soxr.resample(audio, voice.config.sample_rate, rate)
    pcm: np.ndarray = np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    pcm.setflags(write=False)  # shared between tests through the cache
    return pcm


def piper_wav(text: str, rate: int = RATE) -> tuple[np.ndarray, int]:
    """(int16 mono PCM, rate) of the joe voice saying `text`, the same in every run."""
    return _piper_cached(text, rate), rate


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.cache
def _espeak_cached(text: str, rate: int) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "--stdout"], input=text.encode(), capture_output=True, check=True
    ).stdout
    # espeak streams its WAV with placeholder sizes; read the format, take the rest as data.
    with wave.open(io.BytesIO(wav)) as w:
        src_rate = w.getframerate()
    data_at = wav.find(b"data") + 8
    pcm = np.frombuffer(wav[data_at : data_at + (len(wav) - data_at) // 2 * 2], "<i2")
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, src_rate, rate)
    res: np.ndarray = np.rint(np.clip(out, -1.0, 1.0) * 32767.0).astype(np.int16)
    res.setflags(write=False)
    return res


def espeak_pcm(text: str, rate: int = RATE) -> np.ndarray:
    """int16 mono PCM of espeak-ng saying `text`, at `rate`."""
    return _espeak_cached(text, rate)


def speech_bounds(pcm: np.ndarray, rel: float = 0.05, win: int = 160) -> tuple[int, int]:
    """(first, last) sample of the voiced part: 10 ms windows whose peak passes rel * max."""
    x = np.abs(np.asarray(pcm, np.float32))
    n = x.size // win
    if n == 0:
        return 0, 0
    peaks = x[: n * win].reshape(n, win).max(axis=1)
    loud = np.flatnonzero(peaks >= rel * peaks.max())
    return int(loud[0] * win), int((loud[-1] + 1) * win)


def pad_silence(
    pcm: np.ndarray, before_s: float, after_s: float, rate: int = RATE, noise: float = 0.0
) -> np.ndarray:
    """Speech with silence (or low white noise, int16 amplitude `noise`) around it."""
    rng = np.random.default_rng(1234)
    total = int(before_s * rate) + pcm.size + int(after_s * rate)
    out = rng.normal(0.0, noise, total) if noise else np.zeros(total)
    start = int(before_s * rate)
    out[start : start + pcm.size] += pcm
    return np.clip(out, -32768, 32767).astype(np.int16)
