"""The recorded-speech end-of-turn bench's own logic: corpus reading and pause labels.

The models are stand-ins here (the bench runs the real ones); what is checked is that a
policy's wait is measured where the segmenter really ends the turn, and that a pause is
called a turn end or a pause within a turn from the speakers' labels.
"""

from __future__ import annotations

import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from voxmesh.bench import human_speech
from voxmesh.bench.human_speech import Track
from voxmesh.bench.registry import BenchContext, Outcome, Skip
from voxmesh.bench.turns_human import MS_PER_CHUNK, POLICIES, pauses, turns_human_scenario
from voxmesh.speech.vad import SAMPLE_RATE


def probs(*runs: tuple[float, int]) -> np.ndarray:
    """Silero probabilities as (value, ms) runs, one per 32 ms chunk."""
    return np.concatenate([np.full(ms // MS_PER_CHUNK, p) for p, ms in runs])


def unfinished(_track: str, _start: int, _end: int) -> float:
    return 0.1  # Smart Turn calls every pause unfinished


def finished_words(_track: str, _start: int, _end: int) -> str:
    return "I went home."  # ...over words that end a sentence


def test_words_200_cuts_a_288_ms_pause_that_words_300_waits_through() -> None:
    # 1 s of speech, a 288 ms pause, 1 s more, then the recording's end
    track = Track("t", "read", np.zeros(1))
    p = probs((0.9, 992), (0.05, 288), (0.9, 992), (0.05, 1504))
    short = pauses(track, p, POLICIES["smart-turn, words 200 ms"], unfinished, finished_words)
    long = pauses(track, p, POLICIES["smart-turn, words 300 ms"], unfinished, finished_words)
    assert [(x.label, x.silence_ms) for x in short] == [("within", 288), ("end", None)]
    assert [x.ended_ms for x in short] == [224, 224]  # seven chunks: the first >= 200 ms
    assert not any(x.heard_in for x in short)  # 288 < 224 + the reply's 100 ms
    assert [x.ended_ms for x in long] == [None, 320]  # back at 288, before 300
    assert short[0].turn_p and short[0].words == "I went home."


def test_another_speakers_turn_in_the_pause_makes_it_a_turn_end() -> None:
    p = probs((0.9, 992), (0.05, 992), (0.9, 992), (0.05, 992), (0.9, 992), (0.05, 1504))
    # the other speaker: a 1.2 s turn in the first pause, a 0.4 s "yeah" in the second
    track = Track("c", "conversation", np.zeros(1), [(1.0, 2.2), (3.0, 3.4)])
    found = pauses(track, p, POLICIES["off, 250 ms"], unfinished, finished_words)
    assert [x.label for x in found] == ["end", "within", "end"]
    assert [x.ended_ms for x in found] == [256, 256, 256]
    assert [x.heard_in for x in found] == [False, True, False]


def test_rttm_and_float_wav_are_read(tmp_path: Path) -> None:
    text = (
        "SPEAKER rec 1 1.440 2.000 <NA> <NA> A <NA> <NA>\n"
        "SPEAKER rec 1 3.500 0.500 <NA> <NA> B <NA> <NA>\n"
    )
    assert human_speech.rttm(text) == {"rec": {"A": [(1.44, 3.44)], "B": [(3.5, 4.0)]}}
    pcm = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    fmt = struct.pack("<HHIIHH", 3, 1, SAMPLE_RATE, 4 * SAMPLE_RATE, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", pcm.nbytes) + pcm.tobytes()
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert np.array_equal(human_speech.load(tmp_path / "f.wav"), pcm)
    (tmp_path / "s.wav").write_bytes(
        (tmp_path / "f.wav")
        .read_bytes()
        .replace(struct.pack("<I", SAMPLE_RATE), b"\x44\xac\0\0", 1)
    )
    with pytest.raises(ValueError, match="not 16 kHz mono"):
        human_speech.load(tmp_path / "s.wav")


def test_a_speakers_track_silences_the_others_solo_speech() -> None:
    pcm = np.ones(5 * SAMPLE_RATE, np.float32)
    tracks = human_speech.speaker_tracks(
        "rec", pcm, {"A": [(0.0, 3.5)], "B": [(3.0, 5.0)], "C": [(4.0, 4.2)]}
    )
    assert [t.name for t in tracks] == ["rec:A"]  # B and C say too little for a track
    a = tracks[0]
    assert a.pcm[: int(3.5 * SAMPLE_RATE)].all() and not a.pcm[int(3.5 * SAMPLE_RATE) :].any()
    assert a.others == [(3.0, 5.0), (4.0, 4.2)]


def test_without_the_recordings_the_bench_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*_args: object, **_kw: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("VOXMESH_HUMAN_SPEECH", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(Skip, match="VOXMESH_HUMAN_SPEECH"):
        turns_human_scenario(BenchContext(out=tmp_path), Outcome())
    assert not any(tmp_path.iterdir())  # nothing half-fetched is left to be taken as whole
