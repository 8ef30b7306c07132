"""TTS adapters: the engines a TTS actor can run, behind the speech library's ``Voice``.

An adapter is anything with ``synthesize(text, *, first) -> Iterator[np.ndarray]`` yielding
int16 48 kHz mono chunks of any length (``voxmesh.speech.voice.Voice``). An ``Engine`` knows
how to load a voice by name; ``engine(name, options)`` builds one from the registry below.
Heavy libraries (Piper, espeak, torch) are imported only when a voice of theirs is loaded.

The mock voice (tests, bench) is exact and cheap. Its pattern, so tests can regenerate it:

- a text of ``n`` characters lasts ``n * MOCK_SAMPLES_PER_CHAR + MOCK_TAIL`` samples (60 ms
  per character, whitespace included, plus a 12 ms tail, so chunks do not end on a frame
  boundary and the writer must carry remainders);
- sample ``i`` of a chunk is ``(i % MOCK_PERIOD) * MOCK_STEP - MOCK_OFFSET``: a low-amplitude
  83.3 Hz sawtooth (peak about -31 dBFS) that restarts with every chunk.
  (The actor never synthesizes a blank text; it closes such an utterance with a silent frame.)

Since every chunk's length is a whole number of periods, the chunks of one utterance join
into one seamless sawtooth: ``mock_pcm(total)`` is the utterance, and a lost or repeated
sample (or frame: 960 is not a multiple of the period) breaks the pattern visibly.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from voxmesh.speech.voice import Voice

__all__ = [
    "ENGINES",
    "Engine",
    "EngineUnavailable",
    "MockVoice",
    "Voice",
    "engine",
    "mock_pcm",
    "mock_samples",
]

MOCK_SAMPLES_PER_CHAR: Final = 2880  # 60 ms at 48 kHz
MOCK_PERIOD: Final = 576  # divides 2880, does not divide a 960-sample frame
MOCK_TAIL: Final = MOCK_PERIOD  # 12 ms: one period, so the pattern stays seamless
MOCK_STEP: Final = 3
MOCK_OFFSET: Final = MOCK_PERIOD * MOCK_STEP // 2  # centre the sawtooth on zero
MOCK_PIECE: Final = 1000  # yielded piece size: deliberately not a multiple of a frame


class EngineUnavailable(RuntimeError):
    """The engine or voice cannot be used here (missing package, unknown voice...)."""


def mock_samples(text: str) -> int:
    """How many samples the mock voice makes for ``text``."""
    return len(text) * MOCK_SAMPLES_PER_CHAR + MOCK_TAIL


_MOCK_CYCLE: Final = (np.arange(MOCK_PERIOD) * MOCK_STEP - MOCK_OFFSET).astype(np.int16)


def mock_pcm(n: int) -> np.ndarray:
    """The first ``n`` samples of the mock pattern (int16)."""
    return np.resize(_MOCK_CYCLE, n) if n > 0 else np.zeros(0, np.int16)


@dataclass
class MockVoice:
    """Deterministic test voice; ``delay_s`` per call and ``rtf`` emulate a real model."""

    name: str = "mock"
    delay_s: float = 0.0  # fixed cost before the first piece of every chunk
    rtf: float = 0.0  # synthesis time per second of audio (0: instant)

    def synthesize(self, text: str, *, first: bool) -> Iterator[np.ndarray]:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        pcm = mock_pcm(mock_samples(text))
        for start in range(0, len(pcm), MOCK_PIECE):
            piece = pcm[start : start + MOCK_PIECE]
            if self.rtf > 0:
                time.sleep(self.rtf * len(piece) / 48000)
            yield piece


VoiceLoader = Callable[[str], Voice]


@dataclass(frozen=True)
class Engine:
    """How to load the voices of one engine; ``load`` may be slow (run it in a thread)."""

    name: str
    default_voice: str
    load: VoiceLoader
    known_voices: tuple[str, ...] = field(default=())

    def voices(self) -> list[str]:
        return sorted({self.default_voice, *self.known_voices})


def _mock_engine(options: Mapping[str, Any]) -> Engine:
    delay_s = float(options.get("mock_delay_ms", 0.0)) / 1000
    rtf = float(options.get("mock_rtf", 0.0))

    def load(voice: str) -> Voice:
        if not voice.startswith("mock"):
            raise EngineUnavailable(f"mock engine has no voice {voice!r} (names start 'mock')")
        return MockVoice(voice, delay_s=delay_s, rtf=rtf)

    return Engine("mock", str(options.get("voice") or "mock"), load, ("mock",))


PIPER_DEFAULT: Final = "joe"


def _piper_engine(options: Mapping[str, Any]) -> Engine:
    def load(voice: str) -> Voice:
        from voxmesh.speech.piper_voice import PiperSpeaker

        return PiperSpeaker(None if voice == PIPER_DEFAULT else voice)

    return Engine("piper", str(options.get("voice") or PIPER_DEFAULT), load, (PIPER_DEFAULT,))


ESPEAK_DEFAULT: Final = "en-us"


def _espeak_engine(options: Mapping[str, Any]) -> Engine:
    def load(voice: str) -> Voice:
        from voxmesh.speech.espeak_voice import EspeakVoice

        return EspeakVoice(voice)

    return Engine("espeak", str(options.get("voice") or ESPEAK_DEFAULT), load, (ESPEAK_DEFAULT,))


def _gpu_engine(options: Mapping[str, Any]) -> Engine:
    """Placeholder for GPU voices (the optional ``gpu`` extra); never imports torch itself."""
    if importlib.util.find_spec("torch") is None:
        raise EngineUnavailable(
            "TTS engine 'gpu' needs PyTorch, which is not installed: "
            "pip install 'voxmesh[gpu]', or use engine mock, piper or espeak"
        )
    raise EngineUnavailable("no GPU voice adapter ships with this build; use piper or espeak")


# engine name -> builder(options from the [tts] config section)
ENGINES: dict[str, Callable[[Mapping[str, Any]], Engine]] = {
    "mock": _mock_engine,
    "piper": _piper_engine,
    "espeak": _espeak_engine,
    "gpu": _gpu_engine,
}


def engine(name: str, options: Mapping[str, Any] | None = None) -> Engine:
    """The engine ``name`` configured with ``options``; EngineUnavailable if it cannot run."""
    builder = ENGINES.get(name)
    if builder is None:
        raise EngineUnavailable(f"unknown TTS engine {name!r}; known: {', '.join(ENGINES)}")
    return builder(options or {})
