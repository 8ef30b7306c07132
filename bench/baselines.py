"""The libraries alone, same texts, same run: what the mesh adds on top of them.

- Piper called directly: time to the first audio of the first chunk the router would send
  (``split_for_speech``), through the project's ``PiperSpeaker`` and through piper-tts's
  own ``PiperVoice.synthesize`` (no trimming, no resampling).
- faster-whisper on the same audio: ``WhisperAsr`` (short encoder window, what the ASR actor
  runs) and the plain ``WhisperModel.transcribe`` (Whisper's fixed 30 s window).
- The stages of a voice-to-voice turn, each timed on its own: the VAD's end-of-turn wait
  (in audio time, with the mesh's VAD settings), ASR of the turn, Piper's first chunk. This
  is the profile that names the largest contributor to voice-to-voice latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import speech
from .report import Figure, Row

PIPER_DEF = "text available -> first audio piece out of the library (in-process, no mesh)"


def _first_chunk(text: str) -> str:
    from voxmesh.speech.chunking import split_for_speech

    words = speech.mesh_config().tts.first_chunk_words
    return str(split_for_speech(text, first_max_words=words)[0])


def _time_first(pieces: Any) -> float:
    """Milliseconds until ``pieces`` (a fresh generator) yields, then close it."""
    t0 = time.perf_counter()
    next(iter(pieces), None)
    ms = (time.perf_counter() - t0) * 1e3
    close = getattr(pieces, "close", None)
    if close is not None:
        close()
    return ms


class PiperDirect:
    """Piper alone, one text at a time (so it can be interleaved with mesh trials under the
    same load): first audio of each text's first chunk, two ways."""

    def __init__(self) -> None:
        self.speaker = speech.piper()
        self.ours: list[float] = []
        self.raw: list[float] = []
        self.trimmed: list[float] = []

    def measure(self, text: str) -> None:
        sp, chunk = self.speaker, _first_chunk(text)
        self.ours.append(_time_first(sp.synthesize(chunk, first=True)))
        self.trimmed.append(sp.last_trimmed_ms)
        self.raw.append(_time_first(sp.voice.synthesize(chunk, sp.syn_config)))

    def rows(self) -> list[Row]:
        trimmed = float(np.median(self.trimmed)) if self.trimmed else 0.0
        return [
            Row(
                "Piper direct (PiperSpeaker, first chunk)",
                self.ours,
                {"engine": "piper", "path": "library"},
                {"leading_silence_trimmed_ms_median": round(trimmed, 1)},
            ),
            Row("piper-tts PiperVoice.synthesize (raw)", self.raw, {"path": "raw"}),
        ]


def asr_direct_figure(texts: list[str]) -> Figure:
    """faster-whisper on the same utterances: short window vs Whisper's 30 s window."""
    from voxmesh.speech.wer import word_errors

    asr = speech.whisper()
    fig = Figure(
        "asr_direct",
        "Whisper tiny.en int8 called directly on one utterance",
        "transcribe() of one whole utterance (voiced part + 30 ms pad), wall time",
        target="ASR share of the voice-to-voice budget (~70 ms, docs/bench.md)",
    )
    short, full = [], []
    errs = {"short": [0, 0], "full": [0, 0]}
    for text in texts:
        audio, first, last = speech.spoken(text)
        turn = audio[max(0, first - 480) : last + 480]
        t0 = time.perf_counter()
        hyp_short = asr.transcribe(turn)
        short.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        segments, _ = asr._wm.transcribe(
            turn.astype(np.float32) / 32768.0, beam_size=1, language="en",
            without_timestamps=True, vad_filter=False, condition_on_previous_text=False,
        )  # fmt: skip
        hyp_full = " ".join(s.text.strip() for s in segments)
        full.append((time.perf_counter() - t0) * 1e3)
        for key, hyp in (("short", hyp_short), ("full", hyp_full)):
            e, n = word_errors(text, hyp)
            errs[key][0] += e
            errs[key][1] += n
    wer = {k: round(100.0 * e / max(n, 1), 1) for k, (e, n) in errs.items()}
    fig.add(Row("WhisperAsr short window", short, {"path": "short"}, {"wer_pct": wer["short"]}))
    fig.add(Row("WhisperModel.transcribe (30 s)", full, {"path": "full"}, {"wer_pct": wer["full"]}))
    return fig


@dataclass(frozen=True)
class VadDecision:
    sample: int  # the sample the event names (speech_start: where speech began, padded)
    decided: int  # the first sample after the chunk on which the VAD decided it


def vad_decisions(audio: np.ndarray) -> dict[str, VadDecision]:
    """Feed ``audio`` to the mesh's VAD (its settings from mesh.toml) chunk by chunk, as the
    VAD actor does; the first decision of each kind, in audio time."""
    from voxmesh.actors.vad import segmenter
    from voxmesh.speech.vad import CHUNK, StreamingVad

    vad = StreamingVad(speech.silero(), segmenter(speech.mesh_config().vad))
    found: dict[str, VadDecision] = {}
    for at in range(0, audio.size - CHUNK + 1, CHUNK):
        for ev in vad.push(audio[at : at + CHUNK], at):
            found.setdefault(ev.kind, VadDecision(ev.sample, at + CHUNK))
        if "speech_end" in found:
            break
    return found


def _ms(samples: int) -> float:
    return samples * 1e3 / speech.MIC_RATE


def onset_decision_ms(texts: list[str]) -> list[float]:
    """First voiced sample -> the VAD decides speech_start, in audio time (barge-in's VAD
    share; the same clips as the barge-in scenario)."""
    out = []
    for text in texts:
        audio, first, _ = speech.spoken(text, before_s=0.5, after_s=0.3)
        start = vad_decisions(audio).get("speech_start")
        if start is not None:
            out.append(_ms(start.decided - first))
    return out


def v2v_stages_figure(texts: list[str]) -> Figure:
    """Each stage of a voice turn timed alone; the sum (serial) and the overlapped estimate."""
    asr, speaker = speech.whisper(), speech.piper()
    fig = Figure(
        "v2v_stages",
        "Voice-to-voice by stage, libraries alone (profile)",
        "per utterance: VAD end-of-turn wait (audio time, mesh VAD settings) | ASR of "
        "[speech_start, speech_pause) | Piper first chunk of the echoed transcript",
        target="voice-to-voice median <= 350 ms, p95 <= 500 ms",
    )
    wait, hangover, asr_ms, tts_ms = [], [], [], []
    for text in texts:
        audio, _, last = speech.spoken(text)
        vad = vad_decisions(audio)
        if not {"speech_start", "speech_pause", "speech_end"} <= vad.keys():
            continue
        t0 = time.perf_counter()
        hyp = asr.transcribe(audio[vad["speech_start"].sample : vad["speech_pause"].sample])
        asr_ms.append((time.perf_counter() - t0) * 1e3)
        wait.append(_ms(vad["speech_end"].decided - last))
        hangover.append(_ms(vad["speech_pause"].decided - last))
        tts_ms.append(_time_first(speaker.synthesize(_first_chunk(hyp or text), first=True)))
    serial = [w + a + t for w, a, t in zip(wait, asr_ms, tts_ms, strict=True)]
    # The router starts ASR (then the first TTS chunk) at speech_pause, during the wait.
    overlapped = [
        max(w, h + a + t) for w, h, a, t in zip(wait, hangover, asr_ms, tts_ms, strict=True)
    ]
    for label, values in (
        ("VAD end-of-turn wait", wait),
        ("VAD: last voiced sample -> speech_pause decided", hangover),
        ("ASR (short window)", asr_ms),
        ("Piper first chunk", tts_ms),
        ("sum, stages in series", serial),
        ("overlapped: max(end wait, pause + ASR + TTS)", overlapped),
    ):
        fig.add(Row(label, values, {"stage": label}))
    if wait:
        stages = {"VAD end-of-turn wait": wait, "ASR": asr_ms, "Piper first chunk": tts_ms}
        top = max(stages, key=lambda k: float(np.median(stages[k])))
        fig.notes.append(
            "largest contributor to voice-to-voice (median of the stage timings): "
            f"{top} ({np.median(stages[top]):.0f} ms of a {np.median(serial):.0f} ms serial sum)"
        )
    return fig
