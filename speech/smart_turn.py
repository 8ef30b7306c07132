"""Smart Turn v3.2: does the audio so far sound like a finished turn? (an ONNX model).

The model (BSD-2-Clause, Daily; speech/models/SMART-TURN-LICENSE) is the one the
``pipecat-ai`` 1.14.0 wheel ships; ``scripts/fetch-smart-turn.py`` takes it out of that wheel
at install time. I/O, read from the ONNX graph:
  input_features float32 [N, 80, 800]: Whisper log-mel of the last 8 s at 16 kHz
  logits         float32 [N, 1]: despite the name, already a probability (a sigmoid is in
                 the graph; pipecat's local_smart_turn_v3.py reads it as one, > 0.5 = complete)

Features as pipecat computes them (its _whisper_features.py, itself
``transformers.WhisperFeatureExtractor(chunk_length=8)``): the audio left-padded with zeros
to 8 s, normalised to zero mean and unit variance, then Whisper's log-mel (400-point periodic
Hann, hop 160, 80 Slaney mels, log10, floor at max - 8, (x + 4) / 4), the last frame dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxmesh.speech.onnx import cpu_session

if TYPE_CHECKING:
    pass

SAMPLE_RATE = 16000
WINDOW = 8 * SAMPLE_RATE  # the model hears the last 8 s
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = WINDOW // HOP  # 800
COMPLETE_ABOVE = 0.5  # the model's own threshold (pipecat's local_smart_turn_v3.py)
MODEL_NAME = "smart-turn-v3.2-cpu.onnx"
MODELS_DIR = Path(__file__).resolve().parent / "models"


def model_path(override: str | Path | None = None) -> Path:
    """The fetched model file (``make install`` puts it there); never downloads."""
    path = Path(override) if override else MODELS_DIR / MODEL_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"Smart Turn model not found at {path}: run `make install` (or "
            f'`python scripts/fetch-smart-turn.py`), or set vad.turn_model = "off"'
        )
    return path


def _mel_filters() -> np.ndarray:
    """[80, 201] Slaney-scale, Slaney-normalised triangular filters (librosa's defaults)."""
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0

    def to_mel(hz: np.ndarray) -> np.ndarray:
        mel = hz / f_sp
        log = hz >= min_log_hz
        mel[log] = min_log_mel + np.log(hz[log] / min_log_hz) / logstep
        return mel

    def to_hz(mel: np.ndarray) -> np.ndarray:
        hz = f_sp * mel
        log = mel >= min_log_mel
        hz[log] = min_log_hz * np.exp(logstep * (mel[log] - min_log_mel))
        return hz

    edges = np.array([0.0, SAMPLE_RATE / 2])
    lo, hi = to_mel(edges)
    freqs = to_hz(np.linspace(lo, hi, N_MELS + 2))
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    ramps = freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / np.diff(freqs)[:-1, None]
    upper = ramps[2:] / np.diff(freqs)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2:] - freqs[:-2]))[:, None]
    return weights


_FILTERS = _mel_filters()
_HANN = np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window


def features(audio: np.ndarray) -> np.ndarray:
    """[80, 800] float32 features of the last 8 s of 16 kHz ``audio`` (int16 or float)."""
    x = np.asarray(audio).reshape(-1)
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
    x = x[-WINDOW:]
    if x.size < WINDOW:
        x = np.concatenate([np.zeros(WINDOW - x.size, np.float32), x])
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:FRAMES]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # [800, 201]
    log_spec = np.log10(np.maximum(_FILTERS @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    out: np.ndarray = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return out


class SmartTurn:
    """One ONNX session; ``probability`` is thread-safe (onnxruntime's run is)."""

    def __init__(self, path: str | Path | None = None, *, threads: int = 1) -> None:
        # One thread: the VAD actor shares a small box with ASR and TTS; a verdict in ~60 ms
        # is well inside the short silence it gates (docs/turn-taking.md).
        self.path = model_path(path)
        self.session = cpu_session(self.path, threads=threads)

    def probability(self, audio: np.ndarray) -> float:
        """Probability that the turn in ``audio`` (16 kHz, ending now) is complete."""
        x = features(audio)[None]
        (out,) = self.session.run(None, {"input_features": x})
        return float(np.asarray(out).reshape(-1)[0])
