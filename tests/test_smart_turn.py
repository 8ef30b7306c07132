"""Smart Turn v3.2: the fetched file and its licence, its features, its verdicts, and the
segmenter's adaptive end of turn (pure logic, verdicts made up)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from speechgen import piper_wav, speech_bounds

from voxmesh.actors.vad import SMART_TURN_NICE, smart_turn_pool
from voxmesh.speech import smart_turn
from voxmesh.speech.smart_turn import WINDOW, SmartTurn, features
from voxmesh.speech.vad import CHUNK, SileroVad, SpeechSegmenter, StreamingVad, TurnCheck

RATE = 16000
REPO = Path(__file__).resolve().parent.parent


def _fetcher() -> object:
    spec = importlib.util.spec_from_file_location("fetch", REPO / "scripts/fetch-smart-turn.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- the file `make install` fetched ---------------------------------------------------------


def test_model_file_is_the_pinned_one_with_its_licence() -> None:
    path = smart_turn.model_path()
    assert path.parent == REPO / "speech" / "models"
    fetch = _fetcher()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fetch.SHA256  # type: ignore[attr-defined]
    notice = (path.parent / "SMART-TURN-LICENSE").read_text()
    assert "BSD 2-Clause License" in notice and "Daily" in notice
    assert "Redistributions in binary form must reproduce" in notice


def test_missing_model_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"make install.*turn_model = \"off\""):
        smart_turn.model_path(tmp_path / "nope.onnx")


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    return SmartTurn()


def test_model_io(model: SmartTurn) -> None:
    (inp,) = model.session.get_inputs()
    (out,) = model.session.get_outputs()
    assert (inp.name, inp.shape[1:]) == ("input_features", [80, 800])
    assert out.name == "logits" and out.shape[1:] == [1]


# --- features ----------------------------------------------------------------------------------


def reference(pcm: np.ndarray) -> np.ndarray:
    """faster-whisper's own numpy log-mel (Whisper's) over the same normalised 8 s."""
    from faster_whisper.feature_extractor import FeatureExtractor

    x = pcm.astype(np.float32) / 32768.0
    x = np.pad(x[-WINDOW:], (max(0, WINDOW - x.size), 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    out: np.ndarray = FeatureExtractor(chunk_length=8)(x, padding=0)
    return out


@pytest.mark.parametrize("seconds", [1.5, 9.0])  # left-padded, and cut to the last 8 s
def test_features_match_faster_whisper(seconds: float) -> None:
    speech = piper_wav("I would like to go to the station, please.")[0]
    pcm = np.resize(speech, int(seconds * RATE))
    mine, ref = features(pcm), reference(pcm)
    assert mine.shape == ref.shape == (80, 800) and mine.dtype == np.float32
    assert np.abs(mine - ref).max() < 1e-4  # float64 here, float32 there: measured 3.3e-6


# --- verdicts ----------------------------------------------------------------------------------


def spoken(text: str, tail_ms: int) -> np.ndarray:
    pcm = piper_wav(text)[0]
    a, b = speech_bounds(pcm)
    zeros = np.zeros  # before the onset as the VAD actor gives it, and the pause so far
    return np.concatenate([zeros(RATE // 2, np.int16), pcm[a:b], zeros(RATE * tail_ms // 1000)])


# 64 ms of silence: about what the first silent chunk gives it (speech/vad.py TURN_CHECKS_MS)
@pytest.mark.parametrize("text", ["What time is it?", "Sure.", "Please send me the report."])
def test_complete_sentence_is_complete(model: SmartTurn, text: str) -> None:
    assert model.probability(spoken(text, 64)) > 0.5  # measured 0.92-0.99


@pytest.mark.parametrize(
    "text", ["So I was thinking that maybe we could", "I would like to go to the"]
)
def test_cut_sentence_is_incomplete(model: SmartTurn, text: str) -> None:
    assert model.probability(spoken(text, 64)) < 0.5  # measured 0.01-0.03


# --- the segmenter's adaptive end of turn -------------------------------------------------------


def adaptive() -> SpeechSegmenter:
    return SpeechSegmenter(
        min_speech_ms=64,
        speech_pad_ms=30,
        turn_model=True,
        complete_silence_ms=100,
        max_silence_ms=1000,
    )


def feed(seg: SpeechSegmenter, probs: list[float], at: int) -> list[tuple[int, str]]:
    out = []
    for i, p in enumerate(probs, start=at):
        out += [(i, ev.kind) for ev in seg.feed(p, i * CHUNK)]
    return out


def speak(seg: SpeechSegmenter) -> None:
    assert feed(seg, [0.0] * 20 + [0.9] * 20, 0) == [(21, "speech_start")]


def pause(seg: SpeechSegmenter) -> TurnCheck:
    """Speech, then its first silent chunk (40): the check the turn model is asked."""
    speak(seg)
    assert seg.check_due() is None  # still speech
    assert feed(seg, [0.0], 40) == [(40, "speech_pause")]
    check = seg.check_due()
    assert check is not None
    return check


PAUSE_SAMPLE = 40 * CHUNK + 30 * RATE // 1000  # the pause's padded end: the turn's end


def test_complete_verdict_ends_after_the_short_silence_once_the_words_agree() -> None:
    seg = adaptive()
    check = pause(seg)
    assert check == TurnCheck(check.token, 20 * CHUNK - 8000, 41 * CHUNK)  # 500 ms pre-roll
    assert seg.check_due() is None  # one at a time
    assert seg.verdict(check.token, True) == []  # 32 ms of silence so far
    assert seg.words(PAUSE_SAMPLE, mid_sentence=False) == []
    assert feed(seg, [0.0] * 3, 41) == [(43, "speech_end")]  # 4 chunks = 128 ms >= 100 ms
    assert seg.state == "silence"


def test_complete_verdict_waits_a_little_for_the_words_and_ends_when_they_come() -> None:
    seg = adaptive()
    check = pause(seg)
    seg.verdict(check.token, True)
    assert feed(seg, [0.0] * 5, 41) == []  # 192 ms: past the short silence, no words yet
    assert seg.words(PAUSE_SAMPLE - 1, mid_sentence=False) == []  # about another pause
    (end,) = seg.words(PAUSE_SAMPLE, mid_sentence=False)
    assert (end.kind, end.sample) == ("speech_end", PAUSE_SAMPLE)


def test_complete_verdict_without_words_ends_after_words_wait() -> None:
    seg = adaptive()
    check = pause(seg)
    seg.verdict(check.token, True)
    events = feed(seg, [0.0] * 20, 41)
    assert events == [(49, "speech_end")]  # 10 chunks = 320 ms >= WORDS_WAIT_MS (300)


def test_words_that_stop_mid_sentence_keep_a_complete_turn_open() -> None:
    seg = adaptive()
    check = pause(seg)
    assert seg.words(PAUSE_SAMPLE, mid_sentence=True) == []  # "I would like to go to"
    assert seg.verdict(check.token, True) == []
    events = feed(seg, [0.0] * 40, 41)
    assert seg.check_due() is None  # the words explain the pause: no re-check
    assert events == [(71, "speech_end")]  # 32 chunks = 1024 ms >= max_silence_ms


def test_late_complete_verdict_ends_at_once_on_the_pause_sample() -> None:
    seg = adaptive()
    check = pause(seg)
    seg.words(PAUSE_SAMPLE, mid_sentence=False)
    assert feed(seg, [0.0] * 5, 41) == []  # 192 ms: without a verdict, wait
    (end,) = seg.verdict(check.token, True)
    assert (end.kind, end.sample) == ("speech_end", PAUSE_SAMPLE)


def test_unfinished_is_checked_again_100_ms_later() -> None:
    seg = adaptive()
    first = pause(seg)
    seg.words(PAUSE_SAMPLE, mid_sentence=False)
    assert seg.verdict(first.token, False) == []
    assert feed(seg, [0.0] * 2, 41) == [] and seg.check_due() is None  # 96 ms
    assert feed(seg, [0.0], 43) == []
    second = seg.check_due()  # 128 ms
    assert second is not None and second.end == 44 * CHUNK
    (end,) = seg.verdict(second.token, True)  # a little more silence sounds finished
    assert (end.kind, end.sample) == ("speech_end", PAUSE_SAMPLE)


def test_unfinished_at_every_check_waits_for_the_max_silence() -> None:
    seg = adaptive()
    first = pause(seg)
    assert seg.verdict(first.token, False) == []
    events: list[tuple[int, str]] = []
    ends = []
    for at in range(41, 80):  # bounded: 1.25 s of silence
        events += feed(seg, [0.0], at)
        if events:
            break
        check = seg.check_due()
        if check is not None:
            ends.append(check.end // CHUNK)
            assert seg.verdict(check.token, False) == []
    # silence of 128, 224, 320, 416 ms (the first chunk at or past each of TURN_CHECKS_MS)
    assert ends == [44, 47, 50, 53]
    assert events == [(71, "speech_end")]


def test_unfinished_twice_but_words_that_end_a_sentence_wait_the_words_silence() -> None:
    seg = SpeechSegmenter(
        min_speech_ms=64, turn_model=True, words_silence_ms=500, max_silence_ms=1000
    )
    first = pause(seg)
    seg.verdict(first.token, False)
    events = feed(seg, [0.0] * 6, 41)
    second = seg.check_due()
    assert second is not None and seg.verdict(second.token, False) == []
    assert seg.words(PAUSE_SAMPLE, mid_sentence=False) == []  # 224 ms of silence
    events += feed(seg, [0.0] * 20, 47)
    assert events == [(55, "speech_end")]  # 16 chunks = 512 ms >= words_silence_ms


def test_words_that_end_a_sentence_late_end_an_unfinished_turn_at_once() -> None:
    seg = SpeechSegmenter(min_speech_ms=64, turn_model=True, words_silence_ms=300)
    first = pause(seg)
    seg.verdict(first.token, False)
    assert feed(seg, [0.0] * 10, 41) == []  # 352 ms: no words yet
    (end,) = seg.words(PAUSE_SAMPLE, mid_sentence=False)
    assert (end.kind, end.sample) == ("speech_end", PAUSE_SAMPLE)


def test_a_complete_verdict_is_not_checked_again() -> None:
    seg = adaptive()
    first = pause(seg)
    seg.verdict(first.token, True)  # the words are late: the turn stays open past 200 ms
    assert feed(seg, [0.0] * 7, 41) == []
    assert seg.check_due() is None  # a second look could only undo a "finished"


def test_a_check_point_passed_while_one_runs_is_not_asked_twice() -> None:
    seg = adaptive()
    first = pause(seg)
    feed(seg, [0.0] * 9, 41)  # 320 ms: past three more points while the first runs
    assert seg.check_due() is None and seg.verdict(first.token, False) == []
    second = seg.check_due()
    assert second is not None and second.end == 50 * CHUNK
    assert seg.verdict(second.token, False) == [] and seg.check_due() is None


def test_speech_back_makes_the_verdict_stale() -> None:
    seg = adaptive()
    speak(seg)
    feed(seg, [0.0], 40)
    old = seg.check_due()
    assert old is not None
    assert feed(seg, [0.9] * 3 + [0.0], 41) == [(41, "speech_resume"), (44, "speech_pause")]
    assert seg.check_due() is None  # the old check still runs
    assert seg.verdict(old.token, True) == []  # about the earlier pause: ignored
    assert seg.complete is None
    new = seg.check_due()
    assert new is not None and new.token != old.token
    assert feed(seg, [0.0] * 10, 45) == []


def test_failed_check_leaves_the_max_silence() -> None:
    seg = adaptive()
    speak(seg)
    feed(seg, [0.0], 40)
    check = seg.check_due()
    assert check is not None and seg.verdict(check.token, None) == []
    assert feed(seg, [0.0] * 31, 41)[-1:] == [(71, "speech_end")]


def test_off_never_asks() -> None:
    seg = SpeechSegmenter(min_speech_ms=64, min_silence_ms=250)
    speak(seg)
    feed(seg, [0.0], 40)
    assert seg.check_due() is None


def test_stream_hands_the_turn_audio_over() -> None:
    speech = piper_wav("What time is it?")[0]
    pcm = np.concatenate([np.zeros(RATE, np.int16), speech, np.zeros(RATE, np.int16)])
    stream = StreamingVad(SileroVad(), adaptive())
    found = None
    for at in range(0, pcm.size - 320, 320):
        kinds = [ev.kind for ev in stream.push(pcm[at : at + 320], at)]
        due = stream.turn_check()
        if due is not None:
            found = due
            break
        assert "speech_end" not in kinds
    assert found is not None
    check, audio = found
    assert check.start < RATE and audio.dtype == np.int16
    assert np.array_equal(audio, pcm[check.start : check.end])


def test_pre_roll_starts_the_turn_before_the_onset_but_not_in_the_last_one() -> None:
    seg = SpeechSegmenter(min_speech_ms=64, min_silence_ms=96, speech_pad_ms=30, pre_roll_ms=200)
    starts = []
    for i, p in enumerate([0.0] * 20 + [0.9] * 10 + [0.0] * 5 + [0.9] * 10 + [0.0] * 5):
        starts += [ev.sample for ev in seg.feed(p, i * CHUNK) if ev.kind == "speech_start"]
    first_end = 30 * CHUNK + 30 * RATE // 1000
    assert starts == [20 * CHUNK - 200 * RATE // 1000, first_end]  # floored at the last end


def test_the_turn_model_runs_below_the_reply_s_priority() -> None:
    """Smart Turn's thread yields the CPU to the turn's ASR and Piper; the VAD's own thread
    (the mic reader) keeps its priority."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with smart_turn_pool() as pool:
        nice = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert nice.result(timeout=10) == min(19, own + SMART_TURN_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
