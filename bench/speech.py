"""The bench's texts and speech: user utterances spoken by Piper, made offline at run time.

The same texts feed every scenario, so the mesh and the library-alone baselines see the same
input in one run. Models load once per process (cached).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from voxmesh.mesh.settings import Settings
    from voxmesh.speech.asr import WhisperAsr
    from voxmesh.speech.piper_voice import PiperSpeaker
    from voxmesh.speech.vad import SileroVad

MIC_RATE = 16000

# What the user says (voice-to-voice, barge-in, ASR) and, with the echo responder, the reply.
UTTERANCES = (
    "What is the weather like in Paris today?",
    "Please book a table for two at seven.",
    "How far is the moon from the earth?",
    "Can you remind me to call my mother tomorrow?",
    "Tell me a short story about a brave little robot.",
    "What time does the next train to Boston leave?",
    "Turn off the lights in the kitchen, please.",
    "How do I make a good cup of coffee?",
    "Play some quiet music for the evening.",
    "Which planet in our solar system is the largest?",
    "Set a timer for twelve minutes.",
    "Who wrote the novel about the white whale?",
)

# A long reply, for streaming while something else is measured (pause, jitter).
LONG_REPLY = (
    "Here is a fairly long answer, so that audio keeps streaming for a good while: the "
    "quick brown fox jumps over the lazy dog, again and again, while the bench measures "
    "how quickly the system can stop talking when somebody interrupts it."
)


def sample(texts: tuple[str, ...], n: int) -> list[str]:
    """``n`` texts, cycling through ``texts`` in order."""
    return [texts[i % len(texts)] for i in range(n)]


def mesh_config() -> Settings:
    """The built-in defaults: the bench's baselines use the settings the mesh runs with."""
    from voxmesh.mesh.settings import Settings

    return Settings()


@functools.cache
def piper() -> PiperSpeaker:
    from voxmesh.speech.piper_voice import PiperSpeaker

    speaker = PiperSpeaker()
    speaker.warmup()
    return speaker


@functools.cache
def steady_piper() -> PiperSpeaker:
    """Piper without its sampling noise: the same audio in every run, for offline mixes
    whose seeds must be the only thing that varies."""
    from voxmesh.speech.piper_voice import PiperSpeaker

    return PiperSpeaker(steady=True)


@functools.cache
def whisper() -> WhisperAsr:
    from voxmesh.speech.asr import WhisperAsr

    cfg = mesh_config().asr
    # memo_size 0: the benches time the model on clips they repeat
    asr = WhisperAsr(
        cfg.model or None, cpu_threads=cfg.threads, pad_s=cfg.window_pad_s, memo_size=0
    )
    asr.warmup()
    return asr


@functools.cache
def silero() -> SileroVad:
    from voxmesh.speech.vad import SileroVad

    return SileroVad()


@functools.cache
def _spoken(text: str) -> np.ndarray:
    import soxr

    pcm48 = np.concatenate(list(piper().synthesize(text, first=True)))
    pcm16 = soxr.resample(pcm48.astype(np.float32) / 32768.0, 48000, MIC_RATE)
    out: np.ndarray = np.rint(np.clip(pcm16, -1.0, 1.0) * 32767.0).astype(np.int16)
    out.setflags(write=False)
    return out


def spoken(text: str, before_s: float = 0.5, after_s: float = 1.0) -> tuple[np.ndarray, int, int]:
    """(16 kHz int16 mic audio, first voiced sample, last voiced sample + 1) of ``text``,
    with silence around it as a microphone would hear."""
    voice = _spoken(text)
    first, last = voiced_bounds(voice)
    pad = int(before_s * MIC_RATE)
    audio = np.concatenate(
        [np.zeros(pad, np.int16), voice, np.zeros(int(after_s * MIC_RATE), np.int16)]
    )
    return audio, pad + first, pad + last


def voiced_bounds(pcm: np.ndarray, rel: float = 0.05, win: int = 160) -> tuple[int, int]:
    """(first, last + 1) sample of the voiced part: 10 ms windows whose peak passes
    ``rel`` x the loudest one."""
    x = np.abs(np.asarray(pcm, np.float32))
    n = x.size // win
    if n == 0:
        return 0, 0
    peaks = x[: n * win].reshape(n, win).max(axis=1)
    loud = np.flatnonzero(peaks >= rel * peaks.max())
    return int(loud[0] * win), int((loud[-1] + 1) * win)
