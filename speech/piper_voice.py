"""Piper TTS (joe voice by default) as a `Voice`: 48 kHz int16 out, one piece per sentence.

Piper synthesises a whole sentence per ONNX call (`PiperVoice.synthesize` yields one
`AudioChunk` per sentence), so a short first text chunk is what makes first audio fast.
On a GPU (`device="0"`) the ONNX session runs on onnxruntime's CUDAExecutionProvider when
the installed onnxruntime has it (the `gpu` extra, onnxruntime-gpu), else on the CPU; one
INFO line says which and why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voxmesh.speech.assets import piper_voice_paths
from voxmesh.speech.resample import float_to_int16
from voxmesh.speech.voice import OUTPUT_RATE, LeadingSilenceTrimmer, cuda_ordinal, to_output_rate

log = logging.getLogger("voxmesh.tts")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_HINT = "pip install 'voxmesh[gpu]'; see docs/tts-adapters.md"


def choose_providers(device: str, available: list[str]) -> tuple[list[Any], str]:
    """onnxruntime providers for `device`, and why: what the log line says."""
    if device == "cpu":
        return [CPU], "device cpu"
    ordinal = cuda_ordinal(device)
    if ordinal is None:
        return [CPU], f"device {device} asked but CUDA_VISIBLE_DEVICES hides it"
    if CUDA not in available:
        return [CPU], f"device {device} asked but onnxruntime has no {CUDA} ({GPU_HINT})"
    # HEURISTIC: Piper's input length changes every sentence, and an exhaustive cuDNN
    # search per new shape would cost more than the synthesis (piper's own load() does so).
    cuda = (CUDA, {"device_id": ordinal, "cudnn_conv_algo_search": "HEURISTIC"})
    return [cuda, CPU], f"GPU {device} (CUDA device {ordinal} in this process)"


class PiperSpeaker:
    """Thread-safe to share: every `synthesize` call has its own resampler and trimmer."""

    name = "piper"
    sample_rate = OUTPUT_RATE

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        trim_leading_silence: bool = True,
        trim_threshold: float = 0.002,
        trim_keep_ms: float = 5.0,
        length_scale: float | None = None,
        steady: bool = False,
        volume: float = 1.0,
        normalize: bool = True,
        intra_op_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        self.model_path, self.config_path = piper_voice_paths(model_path)
        opts = onnxruntime.SessionOptions()
        if intra_op_threads is not None:
            # Many sessions on few cores: one thread per synthesis beats threads fighting.
            opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        # Idle pool threads would spin between calls, and between sessions' calls: ~10 % of
        # a chunk's CPU on 2 cores, with no measurable gain in first audio.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        config = PiperConfig.from_dict(json.loads(self.config_path.read_text("utf-8")))
        providers, why = choose_providers(device, onnxruntime.get_available_providers())
        if providers[0] != CPU and hasattr(onnxruntime, "preload_dlls"):
            # How onnxruntime-gpu (>= 1.21) finds the CUDA and cuDNN of the pip wheels that
            # its [cuda,cudnn] extras install; a system CUDA is found without it.
            onnxruntime.preload_dlls()
        session = onnxruntime.InferenceSession(
            str(self.model_path), sess_options=opts, providers=providers
        )
        self.voice = PiperVoice(session=session, config=config)
        self.device = device
        if providers[0] != CPU and self.provider != CUDA:
            # onnxruntime falls back to the CPU by itself when CUDA cannot start.
            why = f"device {device} asked but {CUDA} did not start (CUDA or cuDNN libraries?)"
        noise = " (steady: no sampling noise)" if steady else ""
        log.info("piper %s on %s: %s%s", self.model_path.stem, self.provider, why, noise)
        self.native_rate = config.sample_rate
        self.syn_config = SynthesisConfig(
            length_scale=length_scale,
            # steady: no sampling noise, so a text gives the same audio; None: the voice's own
            noise_scale=0.0 if steady else None,
            noise_w_scale=0.0 if steady else None,
            volume=volume,
            normalize_audio=normalize,
        )
        self.trim = trim_leading_silence
        # Piper normalises each sentence to full scale, so a fixed fraction of it works (and
        # unnormalised speech peaks near full scale too: -2 to -10 dBFS for joe).
        self.trim_threshold = int(trim_threshold * 32767 * volume)
        self.trim_keep_ms = trim_keep_ms
        self._last_trimmer: LeadingSilenceTrimmer | None = None

    @property
    def provider(self) -> str:
        """The execution provider running the model (live: onnxruntime may fall back)."""
        return str(self.voice.session.get_providers()[0])

    @property
    def last_trimmed_ms(self) -> float:
        """Leading silence removed from the last first chunk, so far."""
        trimmer = self._last_trimmer
        return trimmer.dropped * 1000 / self.native_rate if trimmer is not None else 0.0

    def warmup(self) -> None:
        """The first ONNX run and espeak phonemizer load cost ~0.5 s; pay them at startup."""
        for _ in self.synthesize("Hello there.", first=True):
            pass

    def synthesize(self, text: str, *, first: bool = True) -> Iterator[np.ndarray]:
        if not text.strip():
            return
        trimmer = None
        if first and self.trim:
            self._last_trimmer = trimmer = LeadingSilenceTrimmer(
                self.native_rate, threshold=self.trim_threshold, keep_ms=self.trim_keep_ms
            )
        pieces = (
            float_to_int16(chunk.audio_float_array)
            for chunk in self.voice.synthesize(text, self.syn_config)
        )
        yield from to_output_rate(pieces, self.native_rate, trimmer)
