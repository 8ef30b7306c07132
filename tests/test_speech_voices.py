"""TTS voices: 48 kHz int16 audio that says the text, with the leading silence trimmed."""

from __future__ import annotations

import subprocess
from typing import Any

import numpy as np
import pytest
import soxr
from speechgen import have_espeak

from voxmesh.speech.asr import WhisperAsr
from voxmesh.speech.piper_voice import PiperSpeaker
from voxmesh.speech.voice import (
    FRAME_SAMPLES,
    OUTPUT_RATE,
    FrameSlicer,
    LeadingSilenceTrimmer,
    MockVoice,
    Voice,
)
from voxmesh.speech.wer import word_error_rate

TEXT = "Hello there, how are you today?"
QUIET = 64  # int16 amplitude counted as silence (-54 dBFS)


def lead_ms(pcm: np.ndarray) -> float:
    first = int(np.argmax(np.abs(pcm.astype(np.int32)) > QUIET))
    return float(first * 1000 / OUTPUT_RATE)


def collect(voice: Voice, text: str, *, first: bool = True) -> np.ndarray:
    pieces = list(voice.synthesize(text, first=first))
    assert pieces and all(p.dtype == np.int16 and p.ndim == 1 for p in pieces)
    out: np.ndarray = np.concatenate(pieces)
    return out


def to_16k(pcm48: np.ndarray) -> np.ndarray:
    out: np.ndarray = soxr.resample(pcm48.astype(np.float32) / 32768.0, OUTPUT_RATE, 16000)
    return out


@pytest.fixture(scope="module")
def piper() -> PiperSpeaker:
    return PiperSpeaker()


@pytest.fixture(scope="module")
def asr() -> WhisperAsr:
    return WhisperAsr()


@pytest.fixture(scope="module")
def steady_piper() -> PiperSpeaker:
    """Piper without its sampling noise: the same audio every run, so the ASR check below
    cannot flake (with noise, tiny.en now and then hears "Hello there" as "A lot of there")."""
    return PiperSpeaker(steady=True)


def test_piper_says_the_text_at_48k(steady_piper: PiperSpeaker, asr: WhisperAsr) -> None:
    pcm = collect(steady_piper, TEXT)
    seconds = pcm.size / OUTPUT_RATE
    assert 1.0 < seconds < 3.5
    assert np.abs(pcm).max() > 10000  # full-scale voice, not a whisper
    # At a wrong rate the words would come out chipmunked or slurred, and ASR would fail.
    assert word_error_rate(TEXT, asr.transcribe(to_16k(pcm))) <= 0.2


def test_piper_trim_removes_leading_silence(piper: PiperSpeaker) -> None:
    piper.trim = False
    try:
        untrimmed = [lead_ms(collect(piper, "Well, okay.")) for _ in range(2)]
    finally:
        piper.trim = True
    trimmed = collect(piper, "Well, okay.")
    assert min(untrimmed) > 20.0  # Piper's own silence before "Well" (measured 50-70 ms)
    assert lead_ms(trimmed) <= 6.0  # cut to the 5 ms lead-in
    assert piper.last_trimmed_ms > 15.0
    # Later chunks keep their silence: it is the pause between sentences.
    assert lead_ms(collect(piper, "Well, okay.", first=False)) > 20.0


def test_piper_sentences_stream_one_piece_each(piper: PiperSpeaker) -> None:
    pieces = list(piper.synthesize("One sentence. Another one here. And a third.", first=False))
    assert len(pieces) >= 3


def test_piper_blank_text_yields_nothing(piper: PiperSpeaker) -> None:
    assert list(piper.synthesize("  ", first=True)) == []


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")
def test_espeak_voice(asr: WhisperAsr) -> None:
    from voxmesh.speech.espeak_voice import EspeakVoice

    voice = EspeakVoice()
    assert isinstance(voice, Voice)
    pcm = collect(voice, "Please send me the report by Friday.")
    assert 1.0 < pcm.size / OUTPUT_RATE < 4.0
    assert lead_ms(pcm) <= 6.0
    hyp = asr.transcribe(to_16k(pcm))
    assert word_error_rate("Please send me the report by Friday.", hyp) <= 0.35, hyp


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")
def test_espeak_process_ends_when_the_reply_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A barge-in drops the generator after its first piece: no espeak-ng is left behind."""
    from voxmesh.speech import espeak_voice

    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(espeak_voice.subprocess, "Popen", spy)
    voice = espeak_voice.EspeakVoice()
    gen = voice.synthesize("A long sentence we abandon after the first piece of audio.", first=True)
    assert next(gen).size > 0
    (proc,) = started
    # ~3.5 s of audio is more than a pipe holds: espeak cannot have finished on its own.
    assert proc.poll() is None
    gen.close()
    assert proc.returncode is not None  # reaped by the close: no espeak-ng (or zombie) left
    assert proc.returncode < 0  # ended by a signal: cut short, not left to run to the end


def test_voices_share_the_protocol(piper: PiperSpeaker) -> None:
    assert isinstance(piper, Voice) and isinstance(MockVoice(), Voice)
    pcm = collect(MockVoice(ms_per_char=10.0), "abcde")
    assert pcm.size == 5 * 10 * OUTPUT_RATE // 1000


def test_trimmer_keeps_a_faded_lead_in_across_pieces() -> None:
    rate = 1000
    trimmer = LeadingSilenceTrimmer(rate, threshold=100, keep_ms=5.0)
    audio = np.concatenate([np.full(30, 10, np.int16), np.full(20, 5000, np.int16)])
    out = np.concatenate([trimmer.push(audio[:12]), trimmer.push(audio[12:40]), audio[40:]])
    assert out.size == 5 + 20  # 30 quiet samples, 5 of them kept
    assert out[0] == 0 and np.all(out[5:] == 5000)
    assert trimmer.dropped == 25 and trimmer.push(np.zeros(3, np.int16)).size == 3


def test_frame_slicer() -> None:
    slicer = FrameSlicer()
    frames = slicer.push(np.ones(1000, np.int16)) + slicer.push(np.ones(1000, np.int16))
    assert [f.size for f in frames] == [FRAME_SAMPLES, FRAME_SAMPLES]
    last = slicer.flush()
    assert len(last) == 1 and last[0].size == FRAME_SAMPLES
    assert last[0][: 2000 - 2 * FRAME_SAMPLES].all() and not last[0][-1]
    assert slicer.flush() == []
