"""XTTS-v2 (the `coqui-tts` package, imported as `TTS`) as a `Voice`. Experimental: it has
never run in this repository's tests with real weights (scripts/gpu-check.sh is the check).

A voice is named by an XTTS-v2 checkpoint directory, optionally with a speaker:
``/models/xtts_v2``, ``/models/xtts_v2#Ana Florence`` (built-in) or ``/models/xtts_v2#/refs/me.wav``
(cloned from a recording: .wav, .flac or .mp3).
The directory holds config.json, model.pth and vocab.json (and speakers_xtts.pth for the
built-in speakers); nothing is downloaded. Without a speaker the voice clones
``DIR/reference.wav`` if there is one, else takes the first built-in speaker.

XTTS streams 24 kHz float chunks (`Xtts.inference_stream`); they leave here as 48 kHz int16.
Heavy imports (torch, TTS) happen only when a voice is built, never at import.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voxmesh.speech.resample import float_to_int16
from voxmesh.speech.voice import LeadingSilenceTrimmer, cuda_ordinal, to_output_rate

log = logging.getLogger("voxmesh.tts")

XTTS_RATE = 24000  # Xtts.inference_stream's output rate (XttsAudioConfig.output_sample_rate)
CHECKPOINT_FILES = ("config.json", "model.pth", "vocab.json")
SPEAKERS_FILE = "speakers_xtts.pth"
REFERENCE_WAV = "reference.wav"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")
INSTALL_HINT = "pip install 'voxmesh[xtts]'"


def is_audio(speaker: str) -> bool:
    """A speaker given as a reference recording rather than a built-in speaker's name."""
    return speaker.lower().endswith(AUDIO_SUFFIXES)


def split_voice(voice: str) -> tuple[Path, str]:
    """``DIR#SPEAKER`` -> (DIR, SPEAKER); the speaker is "" when not given."""
    directory, _, speaker = voice.partition("#")
    return Path(directory).expanduser(), speaker.strip()


def missing_package() -> str | None:
    """Why XTTS cannot run here for want of a package, or None."""
    for module, package in (("TTS", "coqui-tts"), ("torch", "torch")):
        if importlib.util.find_spec(module) is None:
            return f"TTS engine 'xtts' needs {package}, which is not installed: {INSTALL_HINT}"
    return None


def checkpoint_problem(voice: str) -> str | None:
    """What is wrong with the checkpoint directory (and speaker) ``voice`` names, or None."""
    if not voice:
        return (
            "TTS engine 'xtts' needs a voice: the path of an XTTS-v2 checkpoint directory "
            f"({', '.join(CHECKPOINT_FILES)}), set as tts.voice"
        )
    directory, speaker = split_voice(voice)
    where = str(directory)
    if not directory.is_dir():
        return f"XTTS checkpoint directory {where!r} does not exist"
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if missing:
        return f"XTTS checkpoint directory {where!r} lacks {', '.join(missing)}"
    has_speakers = (directory / SPEAKERS_FILE).is_file()
    if is_audio(speaker):
        if not Path(speaker).expanduser().is_file():
            return f"XTTS reference audio {speaker!r} does not exist"
    elif speaker and not has_speakers:
        return f"XTTS speaker {speaker!r} asked but {where!r} has no {SPEAKERS_FILE}"
    elif not speaker and not has_speakers and not (directory / REFERENCE_WAV).is_file():
        return (
            f"XTTS checkpoint {where!r} has neither {REFERENCE_WAV} nor {SPEAKERS_FILE}: "
            f"add one, or name a recording to clone: {where}#/path/to/voice.wav"
        )
    return None


def as_float_array(chunk: Any) -> np.ndarray:
    """One streamed chunk (a torch tensor, on any device, or an array) as flat float32."""
    if hasattr(chunk, "detach"):
        chunk = chunk.detach().float().cpu().numpy()
    return np.asarray(chunk, np.float32).reshape(-1)


def stream_pcm(
    chunks: Iterable[Any], trimmer: LeadingSilenceTrimmer | None = None
) -> Iterator[np.ndarray]:
    """XTTS's 24 kHz float chunks as 48 kHz int16 pieces, one resampler for the stream."""
    pieces = (float_to_int16(as_float_array(chunk)) for chunk in chunks)
    return to_output_rate(pieces, XTTS_RATE, trimmer)


class XttsVoice:
    """An XTTS-v2 checkpoint with one speaker's conditioning latents, computed once."""

    name = "xtts"

    def __init__(
        self,
        voice: str,
        *,
        device: str = "cpu",
        language: str = "en",
        stream_chunk_size: int = 20,
        trim_threshold: int = 64,
        trim_keep_ms: float = 5.0,
    ) -> None:
        problem = missing_package() or checkpoint_problem(voice)
        if problem:
            raise RuntimeError(problem)
        import torch
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts

        directory, speaker = split_voice(voice)
        ordinal = cuda_ordinal(device)
        why = "device cpu (slower than real time: XTTS wants a GPU)"
        if device != "cpu":
            if ordinal is None:
                why = f"device {device} asked but CUDA_VISIBLE_DEVICES hides it"
            elif not torch.cuda.is_available():
                why = f"device {device} asked but torch has no CUDA (a CUDA build of torch?)"
            else:
                why = f"GPU {device} (CUDA device {ordinal} in this process)"
        on_gpu = ordinal is not None and torch.cuda.is_available()
        self.torch_device = torch.device(f"cuda:{ordinal}" if on_gpu else "cpu")
        config = XttsConfig()
        config.load_json(str(directory / "config.json"))
        model = Xtts.init_from_config(config)
        model.load_checkpoint(config, checkpoint_dir=str(directory), eval=True)
        self.model = model.to(self.torch_device)
        self.gpt_cond_latent, self.speaker_embedding = self._conditioning(directory, speaker)
        self.language = language
        self.stream_chunk_size = stream_chunk_size
        self.trim_threshold = trim_threshold
        self.trim_keep_ms = trim_keep_ms
        self.provider = f"torch-{self.torch_device.type}"  # "torch-cuda" or "torch-cpu"
        log.info("xtts %s on %s: %s", directory.name, self.provider, why)

    def _conditioning(self, directory: Path, speaker: str) -> tuple[Any, Any]:
        """(gpt_cond_latent, speaker_embedding) of a reference WAV or a built-in speaker."""
        reference = directory / REFERENCE_WAV
        if is_audio(speaker) or (not speaker and reference.is_file()):
            wav = str(Path(speaker).expanduser()) if speaker else str(reference)
            latent, embedding = self.model.get_conditioning_latents(audio_path=[wav])
            return latent, embedding
        speakers = self.model.speaker_manager.speakers
        name = speaker or next(iter(speakers))
        if name not in speakers:
            raise RuntimeError(f"XTTS speaker {name!r} unknown; known: {', '.join(speakers)}")
        entry = speakers[name]
        return entry["gpt_cond_latent"], entry["speaker_embedding"]

    def synthesize(self, text: str, *, first: bool = True) -> Iterator[np.ndarray]:
        if not text.strip():
            return
        trimmer = None
        if first:
            trimmer = LeadingSilenceTrimmer(
                XTTS_RATE, threshold=self.trim_threshold, keep_ms=self.trim_keep_ms
            )
        chunks = self.model.inference_stream(
            text,
            self.language,
            self.gpt_cond_latent,
            self.speaker_embedding,
            stream_chunk_size=self.stream_chunk_size,
        )
        yield from stream_pcm(chunks, trimmer)
