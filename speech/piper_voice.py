"""Piper TTS (joe voice by default) as a `Voice`: 48 kHz int16 out, one piece per sentence.

Piper synthesises a whole sentence per ONNX call (`PiperVoice.synthesize` yields one
`AudioChunk` per sentence), so a short first text chunk is what makes first audio fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from voxmesh.speech.assets import piper_voice_paths
from voxmesh.speech.resample import StreamResampler, float_to_int16
from voxmesh.speech.voice import OUTPUT_RATE, LeadingSilenceTrimmer


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
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        volume: float = 1.0,
        intra_op_threads: int | None = None,
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
        config = PiperConfig.from_dict(json.loads(self.config_path.read_text("utf-8")))
        self.voice = PiperVoice(
            session=onnxruntime.InferenceSession(
                str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            ),
            config=config,
        )
        self.native_rate = config.sample_rate
        self.syn_config = SynthesisConfig(
            length_scale=length_scale,
            noise_scale=noise_scale,
            noise_w_scale=noise_w_scale,
            volume=volume,
        )
        self.trim = trim_leading_silence
        # Piper normalises each sentence to full scale, so a fixed fraction of it works.
        self.trim_threshold = int(trim_threshold * 32767 * volume)
        self.trim_keep_ms = trim_keep_ms
        self.last_trimmed_ms = 0.0  # leading silence removed from the last first chunk

    def warmup(self) -> None:
        """The first ONNX run and espeak phonemizer load cost ~0.5 s; pay them at startup."""
        for _ in self.synthesize("Hello there.", first=True):
            pass

    def synthesize(self, text: str, *, first: bool = True) -> Iterator[np.ndarray]:
        if not text.strip():
            return
        resampler = StreamResampler(self.native_rate, OUTPUT_RATE)
        trimmer = None
        if first and self.trim:
            self.last_trimmed_ms = 0.0
            trimmer = LeadingSilenceTrimmer(
                self.native_rate, threshold=self.trim_threshold, keep_ms=self.trim_keep_ms
            )
        for chunk in self.voice.synthesize(text, self.syn_config):
            pcm = float_to_int16(chunk.audio_float_array)
            if trimmer is not None:
                pcm = trimmer.push(pcm)
                self.last_trimmed_ms = trimmer.dropped * 1000 / self.native_rate
            out = resampler.push(pcm)
            if out.size:
                yield out
        tail = resampler.flush()
        if tail.size:
            yield tail
