"""Whisper tiny.en on a short encoder window: what a user said, and nothing on silence."""

from __future__ import annotations

import numpy as np
import pytest
from speechgen import RATE, espeak_pcm, have_espeak, pad_silence, piper_wav

from voxmesh.actors.router.words import doubted
from voxmesh.actors.vad import segmenter
from voxmesh.mesh.settings import VadSettings
from voxmesh.speech.asr import MAX_FRAMES, WhisperAsr, trim_repetition
from voxmesh.speech.vad import CHUNK, SileroVad, StreamingVad
from voxmesh.speech.wer import word_error_rate

SENTENCES = [
    "Please send me the report by Friday.",
    "How far is the train station from here?",
    "My brother plays the guitar every evening.",
]


@pytest.fixture(scope="module")
def asr() -> WhisperAsr:
    model = WhisperAsr(cpu_threads=2)
    model.warmup()
    return model


@pytest.mark.parametrize("text", SENTENCES)
def test_transcribes_piper_speech_on_short_window(asr: WhisperAsr, text: str) -> None:
    speech, rate = piper_wav(text)
    assert rate == 16000
    hyp = asr.transcribe(pad_silence(speech, 0.2, 0.3))
    assert word_error_rate(text, hyp) <= 0.20, hyp
    timing = asr.last_timing
    assert timing.frames < MAX_FRAMES / 3  # really the short window, not Whisper's 30 s
    assert timing.encode_ms > 0 and timing.decode_ms > 0


def test_full_window_flag_gives_same_words(asr: WhisperAsr) -> None:
    text = SENTENCES[0]
    speech, _ = piper_wav(text)
    hyp = asr.transcribe(speech, full_window=True)
    assert asr.last_timing.frames == MAX_FRAMES
    assert word_error_rate(text, hyp) <= 0.20, hyp


def test_accepts_int16_and_float32_alike(asr: WhisperAsr) -> None:
    speech, _ = piper_wav(SENTENCES[1])
    as_float = speech.astype(np.float32) / 32768.0
    assert asr.transcribe(speech) == asr.transcribe(as_float)


@pytest.mark.parametrize("n", [0, 1, 800])
def test_empty_or_too_short_audio_gives_nothing(asr: WhisperAsr, n: int) -> None:
    assert asr.transcribe(np.zeros(n, np.float32)) == ""


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_silence_and_faint_noise_give_nothing(asr: WhisperAsr, noise: float) -> None:
    audio = np.random.default_rng(7).normal(0.0, noise, 32000).astype(np.float32)
    assert asr.transcribe(audio) == ""  # tiny.en alone says "you" here


def test_clear_speech_is_decoded_surely_and_a_remembered_window_keeps_its_scores(
    asr: WhisperAsr,
) -> None:
    """The scores the router's barge-in rule reads (actors/router/words.py ``doubted``)."""
    speech = pad_silence(piper_wav(SENTENCES[0])[0], 0.2, 0.3)
    assert asr.transcribe(speech)
    no_speech, logprob = asr.last_no_speech, asr.last_logprob
    assert no_speech < 0.3 and -0.6 < logprob < 0.0, (no_speech, logprob)
    assert not doubted(no_speech, logprob)
    assert asr.transcribe(np.zeros(32000, np.float32)) == ""
    assert asr.last_logprob == 0.0  # no text: nothing decoded to doubt
    asr.transcribe(speech)
    assert asr.last_timing.remembered
    assert (asr.last_no_speech, asr.last_logprob) == (no_speech, logprob)


def test_partial_uses_the_same_path(asr: WhisperAsr) -> None:
    speech, _ = piper_wav(SENTENCES[2])
    half = speech[: speech.size // 2]
    words = asr.transcribe_partial(half).lower().split()
    assert words and words[0].strip(",.") == "my"


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Yes. Yes. Yes. Yes", "Yes."),
        ("Thank you for your help. Thank you for your", "Thank you for your help."),
        ("Hi. I like it. I like it. I like", "Hi. I like it."),
        ("no, no, no", "no, no, no"),  # not whole sentences: kept
        ("Go. Go home.", "Go. Go home."),
        ("", ""),
    ],
)
def test_trim_repetition(raw: str, want: str) -> None:
    assert trim_repetition(raw) == want


GRID_SENTENCES = [
    "What is the weather like in Paris today?",
    "My brother plays the guitar every evening.",
    "Please send me the report by Friday.",
]


def _window_the_mesh_asks_for(vad: SileroVad, audio: np.ndarray) -> np.ndarray:
    """The audio of one turn as the ASR actor gets it: [speech_start, speech_end) of the
    VAD with the mesh's settings (pre-roll before the onset, pad after the pause)."""
    stream = StreamingVad(vad, segmenter(VadSettings()))
    events = stream.push(audio, 0) + stream.flush()
    start = next(e.sample for e in events if e.kind == "speech_start")
    end = [e.sample for e in events if e.kind == "speech_end"][-1]
    return audio[start:end]


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")
@pytest.mark.parametrize("text", GRID_SENTENCES)
def test_the_same_speech_gives_the_same_words_wherever_the_vad_grid_falls(
    asr: WhisperAsr, text: str
) -> None:
    # The VAD judges 32 ms chunks, so where speech starts on that grid depends on when the
    # mic's audio arrived; the transcript must depend on the audio alone. (With a 200 ms
    # pre-roll that cut the window's lead, each of these gave 3 transcripts over these 8.)
    vad = SileroVad()
    speech = espeak_pcm(text)
    heard = set()
    for offset in range(0, CHUNK, CHUNK // 8):
        audio = pad_silence(speech, 0.3 + offset / RATE, 1.0)
        heard.add(asr.transcribe(_window_the_mesh_asks_for(vad, audio)))
    assert len(heard) == 1, heard
    assert word_error_rate(text, heard.pop()) <= 0.25


def _frames_to_the_pause(vad: SileroVad, audio: np.ndarray) -> tuple[int, int, int, int]:
    """VAD over 20 ms frames with the mesh's settings: (speech_start, the last speech_quiet
    before the pause, the pause's sample, the frame end at which the pause came)."""
    cfg = VadSettings()
    stream = StreamingVad(vad, segmenter(cfg, turn_model=True), quiet_ms=cfg.quiet_ms)
    start = quiet = None
    for at in range(0, audio.size, 320):
        for ev in stream.push(audio[at : at + 320], at):
            if ev.kind == "speech_start" and start is None:
                start = ev.sample
            elif ev.kind == "speech_quiet":
                quiet = ev.sample
            elif ev.kind == "speech_pause" and quiet is not None:
                assert start is not None
                return start, quiet, ev.sample, at + 320
    raise AssertionError("no speech_quiet before a pause")


@pytest.mark.parametrize("text", SENTENCES)
def test_a_turn_transcribed_where_it_went_quiet_answers_its_pause_from_memory(text: str) -> None:
    asr = WhisperAsr(cpu_threads=1)
    speech, _ = piper_wav(text)
    audio = pad_silence(speech, 0.3, 1.0)
    start, quiet, pause, decided = _frames_to_the_pause(SileroVad(), audio)
    assert quiet < decided  # the cue came before Silero's pause
    ahead = asr.transcribe(audio[start:quiet])
    assert not asr.last_timing.remembered and word_error_rate(text, ahead) <= 0.2, ahead
    assert asr.transcribe(audio[start:pause]) == ahead
    assert asr.last_timing.remembered and asr.remembered == 1
    # other audio (the turn cut inside its last word) is transcribed, not remembered
    asr.transcribe(audio[start : quiet - 4000])
    assert not asr.last_timing.remembered


def test_without_a_memo_every_call_runs_the_model() -> None:
    asr = WhisperAsr(cpu_threads=1, memo_size=0)
    speech, _ = piper_wav(SENTENCES[0])
    assert asr.transcribe(speech) == asr.transcribe(speech)
    assert not asr.last_timing.remembered and asr.last_timing.decode_ms > 0
