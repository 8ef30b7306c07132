"""The TTS engines behind actors/tts/adapters.py: what runs each voice (``provider``), the
level every real voice is matched to, and the parts of the experimental XTTS adapter that
need no model (messages, the 24 -> 48 kHz stream). Piper and espeak run for real here; XTTS
and Piper on CUDA do not (scripts/gpu-check.sh checks those on a GPU machine)."""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from voxmesh.actors.tts import adapters
from voxmesh.actors.tts.adapters import EngineUnavailable, MockVoice, mock_pcm, mock_samples
from voxmesh.speech import xtts_voice
from voxmesh.speech.piper_voice import CPU, CUDA, choose_providers
from voxmesh.speech.voice import (
    CALIBRATION_TEXT,
    OUTPUT_RATE,
    PEAK_CEILING,
    LeadingSilenceTrimmer,
    LevelMatched,
    active_level_dbfs,
    cuda_ordinal,
    level_matched,
)

TARGET = -23.0
# Not the calibration phrase: the gain must carry over to what a voice says next.
PASSAGE = (
    "Thanks for calling. Please send me the report by Friday. The weather tomorrow looks "
    "sunny with a light breeze from the west. Your order number is four two seven."
)


def said(voice: adapters.Voice, text: str) -> np.ndarray:
    return np.concatenate([np.zeros(0, np.int16), *voice.synthesize(text, first=True)])


def sine(
    seconds: float, amplitude: float, rate: int = OUTPUT_RATE, freq: float = 440.0
) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.asarray(amplitude * np.sin(2 * np.pi * freq * t), np.float32)


@dataclass
class ToneVoice:
    """A stand-in voice: a tone at a chosen amplitude, in uneven pieces."""

    amplitude: float
    name: str = "tone"
    provider: str = "test"

    def synthesize(self, text: str, *, first: bool) -> Iterator[np.ndarray]:
        pcm = np.rint(sine(0.02 * len(text), self.amplitude) * 32767).astype(np.int16)
        for start in range(0, pcm.size, 1234):
            yield pcm[start : start + 1234]


# --- the engine API ---------------------------------------------------------------------------


def test_mock_engine_reports_its_provider_and_stays_exact() -> None:
    eng = adapters.engine("mock", level_dbfs=-10.0)  # the mock ignores any level
    assert (eng.name, eng.default_voice, eng.device, eng.provider()) == ("mock", "mock", "cpu", "")
    voice = eng.load("mock:mock-b")  # qualified names are accepted
    assert isinstance(voice, MockVoice) and voice.provider == "mock" == eng.provider()
    assert np.array_equal(said(voice, "Hi."), mock_pcm(mock_samples("Hi.")))
    with pytest.raises(EngineUnavailable, match="belongs to engine 'espeak'"):
        eng.load("espeak:en-us")
    assert adapters.engine("mock", voice="mock:mock-c").default_voice == "mock-c"
    with pytest.raises(EngineUnavailable, match="not one of engine 'mock'"):
        adapters.engine("mock", voice="piper:joe")


def test_voice_names_are_engine_qualified() -> None:
    assert adapters.qualified("piper", "joe") == "piper:joe"
    assert adapters.split_voice("espeak:en-us") == ("espeak", "en-us")
    assert adapters.split_voice("joe") == ("", "joe")
    assert adapters.split_voice("/models/a:b.onnx") == ("", "/models/a:b.onnx")


def test_cuda_ordinal_follows_cuda_visible_devices() -> None:
    assert cuda_ordinal("cpu", {}) is None
    assert cuda_ordinal("1", {}) == 1  # nothing pinned: the index as written
    assert cuda_ordinal("1", {"CUDA_VISIBLE_DEVICES": "1"}) == 0  # the supervisor's pinning
    assert cuda_ordinal("3", {"CUDA_VISIBLE_DEVICES": "2,3"}) == 1
    assert cuda_ordinal("0", {"CUDA_VISIBLE_DEVICES": ""}) is None  # a CPU actor sees no GPU


def test_piper_provider_choice() -> None:
    assert choose_providers("cpu", [CUDA, CPU]) == ([CPU], "device cpu")
    providers, why = choose_providers("0", [CPU])
    assert providers == [CPU] and f"no {CUDA}" in why and "voxmesh[gpu]" in why
    providers, why = choose_providers("0", [CUDA, CPU])
    assert providers[0][0] == CUDA and providers[0][1]["device_id"] == 0 and providers[1] == CPU


# --- level matching --------------------------------------------------------------------------


def test_active_level_leaves_pauses_out() -> None:
    tone = np.rint(sine(1.0, 0.1) * 32767).astype(np.int16)
    level = 20 * np.log10(0.1 / np.sqrt(2))  # a sine's RMS
    paused = np.concatenate([tone, np.zeros(OUTPUT_RATE * 2, np.int16), tone])
    assert active_level_dbfs(tone) == pytest.approx(level, abs=0.05)
    assert active_level_dbfs(paused) == pytest.approx(level, abs=0.05)
    assert active_level_dbfs(np.zeros(100, np.int16)) == float("-inf")


def test_level_matched_uses_one_fixed_gain() -> None:
    raw = ToneVoice(0.5)
    voice = level_matched(raw, TARGET)
    assert isinstance(voice, LevelMatched) and voice.provider == "test"
    assert voice.gain_db == pytest.approx(TARGET - active_level_dbfs(said(raw, CALIBRATION_TEXT)))
    for before, after in zip(
        raw.synthesize("x" * 90, first=True), voice.synthesize("x" * 90, first=True), strict=True
    ):
        assert np.array_equal(after, np.rint(before * np.float32(voice.gain)).astype(np.int16))
    assert active_level_dbfs(said(voice, "another text")) == pytest.approx(TARGET, abs=0.1)


def test_a_reloaded_voice_keeps_its_gain_without_calibrating_again() -> None:
    eng = adapters.Engine("tone", "tone", lambda name: ToneVoice(0.5), level_dbfs=TARGET)
    first, again = eng.load("tone"), eng.load("tone")
    assert isinstance(first, LevelMatched) and isinstance(again, LevelMatched)
    assert again.gain == first.gain and again.calibration_s == 0.0 < first.calibration_s
    assert eng.provider() == "test"


def test_level_matched_never_pushes_peaks_past_the_ceiling() -> None:
    quiet = level_matched(ToneVoice(0.01), -3.0)  # -3 dBFS RMS would need a +3 dB peak
    peak = np.abs(said(quiet, "some text").astype(np.float64)).max() / 32768
    assert peak <= PEAK_CEILING + 1e-3
    with pytest.raises(RuntimeError, match="said nothing"):
        level_matched(ToneVoice(0.0), TARGET)


def test_level_matching_can_be_turned_off() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from voxmesh.speech.espeak_voice import EspeakVoice

    voice = adapters.engine("espeak", level_dbfs=None).load("en-us")
    assert isinstance(voice, EspeakVoice) and voice.provider == "espeak-ng"


def test_a_steady_piper_says_a_text_the_same_way_every_time() -> None:
    """`tts.steady`: Piper's sampling noise off, so a reply's audio depends on its text alone
    (the mesh tests that transcribe Piper's replies use it)."""
    pytest.importorskip("piper")
    text = "My brother plays the guitar every evening."
    steady = adapters.engine("piper", steady=True).load("joe")
    assert np.array_equal(said(steady, text), said(steady, text))
    noisy = adapters.engine("piper").load("joe")  # the default: sampled afresh each time
    assert not np.array_equal(said(noisy, text), said(noisy, text))


@dataclass
class Loaded:
    piper: LevelMatched
    espeak: LevelMatched
    log: list[str]  # what the loads logged


@pytest.fixture(scope="module")
def loaded() -> Loaded:
    """Piper, asked for GPU 0 (a CPU-only onnxruntime must say why it runs on the CPU), and
    espeak, both level-matched."""
    pytest.importorskip("piper")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("voxmesh.tts")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        piper = adapters.engine("piper", device="0", level_dbfs=TARGET).load("joe")
        espeak = adapters.engine("espeak", level_dbfs=TARGET).load("en-us")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert isinstance(piper, LevelMatched) and isinstance(espeak, LevelMatched)
    return Loaded(piper, espeak, lines)


def test_piper_says_what_runs_it(loaded: Loaded) -> None:
    import onnxruntime

    (line,) = [ln for ln in loaded.log if ln.startswith("piper ")]
    if CUDA in onnxruntime.get_available_providers():
        assert loaded.piper.provider == CUDA, line
    else:
        assert loaded.piper.provider == CPU
        assert line.startswith(f"piper en_US-joe-medium on {CPU}: device 0 asked but"), line
        assert f"no {CUDA}" in line
    assert any(ln.startswith("tts piper:joe level") for ln in loaded.log), loaded.log


def test_piper_and_espeak_speak_at_one_level(loaded: Loaded) -> None:
    voices = {"piper": loaded.piper, "espeak": loaded.espeak}
    before = {n: round(active_level_dbfs(said(v.voice, PASSAGE)), 2) for n, v in voices.items()}
    after = {n: round(active_level_dbfs(said(v, PASSAGE)), 2) for n, v in voices.items()}
    report = f"levels before {before}, after {after} (dBFS)"
    assert abs(after["piper"] - after["espeak"]) <= 1.0, report
    assert all(abs(level - TARGET) <= 1.5 for level in after.values()), report


# --- XTTS without coqui-tts -------------------------------------------------------------------


def test_xtts_needs_its_package() -> None:
    if xtts_voice.missing_package() is None:
        pytest.skip("coqui-tts and torch are installed here")
    with pytest.raises(EngineUnavailable, match=r"needs .*pip install 'voxmesh\[xtts\]'"):
        adapters.engine("xtts", voice="/models/xtts_v2")


def test_xtts_says_what_the_checkpoint_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xtts_voice, "missing_package", lambda: None)

    def problem(voice: str) -> str:
        with pytest.raises(EngineUnavailable) as caught:
            adapters.engine("xtts", voice=voice)
        return str(caught.value)

    assert "needs a voice: the path of an XTTS-v2 checkpoint directory" in problem("")
    assert "does not exist" in problem(str(tmp_path / "nowhere"))
    assert problem(str(tmp_path)).endswith("lacks config.json, model.pth, vocab.json")
    for name in xtts_voice.CHECKPOINT_FILES:
        (tmp_path / name).write_text("{}")
    assert "has neither reference.wav nor speakers_xtts.pth" in problem(str(tmp_path))
    assert "has no speakers_xtts.pth" in problem(f"{tmp_path}#Ana Florence")
    assert "reference audio '/no/such.wav' does not exist" in problem(f"{tmp_path}#/no/such.wav")
    (tmp_path / "reference.wav").write_bytes(b"")
    eng = adapters.engine("xtts", voice=str(tmp_path), device="0")  # builds: nothing loaded yet
    assert (eng.name, eng.default_voice, eng.device) == ("xtts", str(tmp_path), "0")


class FakeTensor:
    """What torch hands back from a CUDA model: a tensor to detach and bring to the CPU."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def detach(self) -> FakeTensor:
        return self

    def float(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.data


def test_xtts_stream_becomes_48k_int16() -> None:
    audio = np.concatenate(
        [np.zeros(2400, np.float32), sine(1.0, 0.5, xtts_voice.XTTS_RATE, 300.0)]
    )
    cuts = [0, 1000, 1003, 9000, 20000, audio.size]
    chunks = [
        FakeTensor(audio[a:b]) if i % 2 else audio[a:b]
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
    ]
    pieces = list(xtts_voice.stream_pcm(chunks))
    assert all(p.dtype == np.int16 and p.ndim == 1 for p in pieces)
    out = np.concatenate(pieces)
    assert out.size == pytest.approx(2 * audio.size, abs=2)
    whole = np.concatenate(list(xtts_voice.stream_pcm([audio])))
    assert np.array_equal(out, whole)  # chunk boundaries leave no trace
    spectrum = np.abs(np.fft.rfft(out[4800:].astype(np.float64)))
    assert np.argmax(spectrum) * OUTPUT_RATE / (out.size - 4800) == pytest.approx(300.0, abs=2)
    trimmed = np.concatenate(
        list(
            xtts_voice.stream_pcm(chunks, LeadingSilenceTrimmer(xtts_voice.XTTS_RATE, threshold=64))
        )
    )
    assert out.size - trimmed.size == pytest.approx(2 * 2400 - 2 * 120, abs=4)  # 5 ms kept
