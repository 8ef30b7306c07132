"""TTS adapters: the engines a TTS actor can run, behind the speech library's ``Voice``.

An adapter is anything with ``synthesize(text, *, first) -> Iterator[np.ndarray]`` yielding
int16 48 kHz mono chunks of any length, and a ``provider`` naming what runs it
(``voxmesh.speech.voice.Voice``). An ``Engine`` knows how to load a voice by name;
``engine(name, voice=..., device=..., level_dbfs=...)`` builds one from the registry below
(adding an engine: docs/tts-adapters.md). Heavy libraries (Piper, onnxruntime, torch) are
imported only when a voice of theirs is loaded.

Every real engine's voices are level-matched at load (``level_matched``: one fixed gain per
voice, measured on a calibration phrase), so a voice swap does not jump in volume. The mock
voice never is: its samples stay exactly the pattern below.

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

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from voxmesh.speech.voice import LevelMatched, Voice, level_matched

__all__ = [
    "ENGINES",
    "Engine",
    "EngineOptions",
    "EngineUnavailable",
    "MockVoice",
    "Voice",
    "engine",
    "mock_pcm",
    "mock_samples",
    "qualified",
    "split_voice",
]

log = logging.getLogger("voxmesh.tts")

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
    provider: str = "mock"
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


def qualified(engine_name: str, voice: str) -> str:
    """The mesh-wide name of a voice: ``piper:joe``, ``espeak:en-us``."""
    return f"{engine_name}:{voice}"


def split_voice(name: str) -> tuple[str, str]:
    """``engine:voice`` -> (engine, voice); ("", name) when ``name`` names no known engine
    (so a path with a colon in it stays whole)."""
    prefix, sep, rest = name.partition(":")
    return (prefix, rest) if sep and prefix in ENGINES else ("", name)


@dataclass(frozen=True)
class Engine:
    """How to load the voices of one engine; ``load`` may be slow (run it in a thread).

    ``level_dbfs``: loaded voices are level-matched to it (None: left as they come).
    """

    name: str
    default_voice: str
    loader: VoiceLoader
    known_voices: tuple[str, ...] = field(default=())
    device: str = "cpu"
    level_dbfs: float | None = None
    _providers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # voice -> (its measured level, its gain): a voice evicted and loaded again is not
    # calibrated again (a load on demand delays that SPEAK by the calibration).
    _levels: dict[str, tuple[float, float]] = field(default_factory=dict, compare=False, repr=False)

    def voices(self) -> list[str]:
        return sorted({self.default_voice, *self.known_voices})

    def load(self, voice: str) -> Voice:
        """Voice ``voice`` (bare, or qualified with this engine's name), level-matched."""
        owner, bare = split_voice(voice)
        if owner and owner != self.name:
            raise EngineUnavailable(
                f"voice {voice!r} belongs to engine {owner!r}; this actor runs {self.name!r}"
            )
        loaded = self.loader(bare)
        if self.level_dbfs is not None:
            loaded = self._level_matched(bare, loaded, self.level_dbfs)
        # Stand-in voices of older tests may lack the attribute.
        self._providers[bare] = getattr(loaded, "provider", "")
        return loaded

    def _level_matched(self, voice: str, raw: Voice, target: float) -> LevelMatched:
        known = self._levels.get(voice)
        if known is not None:
            return LevelMatched(raw, known[1], measured_dbfs=known[0], calibration_s=0.0)
        matched = level_matched(raw, target)
        self._levels[voice] = (matched.measured_dbfs, matched.gain)
        log.info(
            "tts %s level %.1f dBFS -> %.1f (gain %+.1f dB), calibrated in %.2f s",
            qualified(self.name, voice),
            matched.measured_dbfs,
            matched.measured_dbfs + matched.gain_db,
            matched.gain_db,
            matched.calibration_s,
        )
        return matched

    def provider(self) -> str:
        """What runs this engine's voices: the default voice's provider once it is loaded
        (else the last loaded voice's; "" before any)."""
        if self.default_voice in self._providers:
            return self._providers[self.default_voice]
        return next(reversed(self._providers.values()), "")


@dataclass(frozen=True)
class EngineOptions:
    """What an engine builder is given (the actor's [tts] settings)."""

    voice: str = ""  # the default voice; empty: the engine's own default
    device: str = "cpu"  # "cpu" or a GPU index as the user wrote it ("0", "1")
    level_dbfs: float | None = -23.0  # speech level every voice is matched to; None: off
    steady: bool = False  # no sampling noise (Piper): the same text gives the same audio


def _mock_engine(opts: EngineOptions) -> Engine:
    """Never level-matched: tests compare its samples with ``mock_pcm`` exactly."""

    def load(voice: str) -> Voice:
        if not voice.startswith("mock"):
            raise EngineUnavailable(f"mock engine has no voice {voice!r} (names start 'mock')")
        return MockVoice(voice)

    return Engine("mock", opts.voice or "mock", load, ("mock",), device=opts.device)


PIPER_DEFAULT: Final = "joe"


def _piper_engine(opts: EngineOptions) -> Engine:
    def load(voice: str) -> Voice:
        from voxmesh.speech.piper_voice import PiperSpeaker

        # Piper's own per-sentence peak normalisation would change the level every
        # sentence; with level matching one fixed gain per voice does the job instead.
        return PiperSpeaker(
            None if voice == PIPER_DEFAULT else voice,
            device=opts.device,
            normalize=opts.level_dbfs is None,
            steady=opts.steady,
        )

    return Engine(
        "piper",
        opts.voice or PIPER_DEFAULT,
        load,
        (PIPER_DEFAULT,),
        device=opts.device,
        level_dbfs=opts.level_dbfs,
    )


ESPEAK_DEFAULT: Final = "en-us"


def _espeak_engine(opts: EngineOptions) -> Engine:
    def load(voice: str) -> Voice:
        from voxmesh.speech.espeak_voice import EspeakVoice

        return EspeakVoice(voice)

    return Engine(
        "espeak",
        opts.voice or ESPEAK_DEFAULT,
        load,
        (ESPEAK_DEFAULT,),
        device=opts.device,  # espeak-ng runs on the CPU whatever is asked
        level_dbfs=opts.level_dbfs,
    )


def _xtts_engine(opts: EngineOptions) -> Engine:
    """Experimental: XTTS-v2 through coqui-tts (speech/xtts_voice.py); the voice is a
    checkpoint directory. Checked now, so a missing package or directory fails at build."""
    from voxmesh.speech import xtts_voice

    problem = xtts_voice.missing_package() or xtts_voice.checkpoint_problem(opts.voice)
    if problem:
        raise EngineUnavailable(problem)

    def load(voice: str) -> Voice:
        if problem := xtts_voice.checkpoint_problem(voice):
            raise EngineUnavailable(problem)
        return xtts_voice.XttsVoice(voice, device=opts.device)

    return Engine("xtts", opts.voice, load, device=opts.device, level_dbfs=opts.level_dbfs)


# engine name -> builder(the actor's options)
ENGINES: dict[str, Callable[[EngineOptions], Engine]] = {
    "mock": _mock_engine,
    "piper": _piper_engine,
    "espeak": _espeak_engine,
    "xtts": _xtts_engine,
}


def engine(
    name: str,
    *,
    voice: str = "",
    device: str = "cpu",
    level_dbfs: float | None = -23.0,
    steady: bool = False,
) -> Engine:
    """The engine ``name`` with default voice ``voice`` on ``device`` ("cpu", or a GPU index:
    the supervisor pins CUDA_VISIBLE_DEVICES to it, so in the process it is CUDA device 0),
    its voices matched to ``level_dbfs``, without sampling noise if ``steady``;
    EngineUnavailable if it cannot run here."""
    builder = ENGINES.get(name)
    if builder is None:
        raise EngineUnavailable(f"unknown TTS engine {name!r}; known: {', '.join(ENGINES)}")
    owner, bare = split_voice(voice)
    if owner and owner != name:
        raise EngineUnavailable(f"default voice {voice!r} is not one of engine {name!r}")
    return builder(EngineOptions(voice=bare, device=device, level_dbfs=level_dbfs, steady=steady))
