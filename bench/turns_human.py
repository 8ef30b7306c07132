"""End of turn on recorded people: where each policy would end a turn, and what it cuts.

Offline, on bench/human_speech.py's tracks: Silero runs over each track chunk by chunk and
the VAD actor's own segmenter (speech/vad.py) decides, with Smart Turn's verdicts and the
words of tiny.en on the turn so far delivered as late as they come in the mesh. Each pause
Silero finds is then one of:
- a turn end: another speaker took the floor in it (a segment of theirs >= 1 s began), or
  the recording ended; what counts is how long the policy waited (ms of Silero silence);
- within a turn: the speaker went on in under LONG_PAUSE_MS and nobody else took the floor;
  a policy that ended the turn there cut in, and the reply was heard in the pause when the
  speaker came back more than REPLY_LAG_MS after that (the reply is made ahead, under HOLD);
- long: the speaker went on, but after LONG_PAUSE_MS of silence nobody filled (counted
  apart: a bot may take such a turn).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from voxmesh.actors.router.words import ends_mid_sentence
from voxmesh.actors.vad import segmenter
from voxmesh.mesh.settings import VadSettings
from voxmesh.speech.smart_turn import COMPLETE_ABOVE
from voxmesh.speech.vad import CHUNK, SAMPLE_RATE, VadEvent

from . import human_speech, speech
from .human_speech import Track
from .registry import BenchContext, Outcome, scenario
from .report import Figure, Row

VERDICT_LAG = 2  # chunks (64 ms): Smart Turn's check in the VAD actor on this box
WORDS_LAG = 3  # chunks (96 ms): the transcript of the turn up to a pause reaching the VAD
REPLY_LAG_MS = 100  # a turn's end -> its reply's first audio (made ahead, under HOLD)
LONG_PAUSE_MS = 1500
MS_PER_CHUNK = CHUNK * 1000 // SAMPLE_RATE
TAIL_S = 2.0  # silence after each track, for its last turn to end
NOISE_DBFS = -70.0  # under the silenced parts, so Silero never sees exact zeros
FLOOR_LEAD_S = 0.3  # another speaker's turn may begin this much before Silero's pause
# [vad] settings over the mesh's defaults, one policy each
POLICIES: dict[str, dict[str, Any]] = {
    "smart-turn, words 300 ms": {"turn_model": "smart-turn", "words_silence_ms": 300},
    "smart-turn, words 200 ms": {"turn_model": "smart-turn", "words_silence_ms": 200},
    "off, 250 ms": {"turn_model": "off", "min_silence_ms": 250},
}

TurnModel = Callable[[str, int, int], float]  # (track, start, end) -> P(complete)
Transcriber = Callable[[str, int, int], str]  # (track, start, end) -> text


@dataclass
class Pause:
    track: str
    kind: str
    silence: int  # first sample of the first chunk Silero called silence
    silence_ms: int | None = None  # until Silero's next speech; None: the track ended
    floor_taken: bool = False  # another speaker's turn began in it
    ended_ms: int | None = None  # when the policy ended the turn; None: it did not
    turn_p: list[float] = field(default_factory=list)
    words: str = ""

    @property
    def label(self) -> Literal["end", "within", "long"]:
        if self.silence_ms is None or self.floor_taken:
            return "end"
        return "long" if self.silence_ms >= LONG_PAUSE_MS else "within"

    @property
    def heard_in(self) -> bool:
        """The reply began in a pause the speaker went on after."""
        return (
            self.label == "within"
            and self.ended_ms is not None
            and self.silence_ms is not None
            and self.silence_ms > self.ended_ms + REPLY_LAG_MS
        )


def pauses(
    track: Track,
    probs: np.ndarray,
    policy: dict[str, Any],
    turn_model: TurnModel,
    transcribe: Transcriber,
) -> list[Pause]:
    """Every pause the segmenter reports on ``track``, with what ``policy`` made of it."""
    settings = dataclasses.replace(VadSettings(), **policy)
    seg = segmenter(settings, turn_model=settings.turn_model == "smart-turn")  # as the actor
    due: dict[int, list[Callable[[], list[VadEvent]]]] = {}  # chunk -> answers then
    found: list[Pause] = []
    open_pause: Pause | None = None
    turn_start = 0
    for i, p in enumerate(probs):
        events = seg.feed(float(p), i * CHUNK)
        for answer in due.pop(i, []):
            events += answer()
        for ev in events:
            if ev.kind == "speech_start":
                turn_start = ev.sample
            elif ev.kind == "speech_pause":
                open_pause = Pause(track.name, track.kind, i * CHUNK)
                found.append(open_pause)
                if seg.turn_model:
                    open_pause.words = text = transcribe(track.name, turn_start, ev.sample)
                    words = functools.partial(seg.words, ev.sample, ends_mid_sentence(text))
                    due.setdefault(i + WORDS_LAG, []).append(words)
            elif ev.kind == "speech_end" and open_pause is not None:
                open_pause.ended_ms = ((i + 1) * CHUNK - open_pause.silence) * 1000 // SAMPLE_RATE
                open_pause = None
            elif ev.kind == "speech_resume":
                open_pause = None
        check = seg.check_due()
        if check is not None:
            prob = turn_model(track.name, check.start, check.end)
            if open_pause is not None:
                open_pause.turn_p.append(round(prob, 2))
            verdict = functools.partial(seg.verdict, check.token, prob > COMPLETE_ABOVE)
            due.setdefault(i + VERDICT_LAG, []).append(verdict)
    for pause in found:
        _label(track, probs, pause, seg.threshold)
    return found


def _label(track: Track, probs: np.ndarray, pause: Pause, threshold: float) -> None:
    first = pause.silence // CHUNK
    back = np.flatnonzero(probs[first:] >= threshold)
    if back.size == 0:
        return  # the track ended in it: a turn end
    pause.silence_ms = int(back[0]) * CHUNK * 1000 // SAMPLE_RATE
    t0, t1 = first * CHUNK / SAMPLE_RATE, (first + int(back[0])) * CHUNK / SAMPLE_RATE
    pause.floor_taken = any(
        e - s >= human_speech.OTHER_TURN_S and t0 - FLOOR_LEAD_S <= s <= t1 for s, e in track.others
    )


class Judges:
    """Smart Turn and tiny.en on track audio, each window judged once for all policies."""

    def __init__(self, audio: dict[str, np.ndarray]) -> None:
        from voxmesh.speech.smart_turn import SmartTurn

        self.audio = audio
        self.smart_turn = SmartTurn()
        self.asr = speech.whisper()
        self.turn_memo: dict[tuple[str, int, int], float] = {}
        self.words_memo: dict[tuple[str, int, int], str] = {}

    def turn_model(self, track: str, start: int, end: int) -> float:
        key = (track, start, end)
        if key not in self.turn_memo:
            self.turn_memo[key] = self.smart_turn.probability(self.audio[track][start:end])
        return self.turn_memo[key]

    def transcribe(self, track: str, start: int, end: int) -> str:
        key = (track, start, end)
        if key not in self.words_memo:
            self.words_memo[key] = self.asr.transcribe(self.audio[track][start:end])
        return self.words_memo[key]


def with_tail(track: Track, rng: np.random.Generator) -> np.ndarray:
    pcm = np.concatenate([track.pcm, np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)])
    noise = rng.normal(0.0, 10 ** (NOISE_DBFS / 20), pcm.size)
    out: np.ndarray = (pcm + noise).astype(np.float32)
    return out


def probabilities(pcm: np.ndarray) -> np.ndarray:
    stream = speech.silero().new_stream()
    n = pcm.size // CHUNK
    return np.array([stream.probability(pcm[k * CHUNK : (k + 1) * CHUNK]) for k in range(n)])


def policy_row(name: str, found: list[Pause], kind: str | None = None) -> Row:
    rows = [p for p in found if kind is None or p.kind == kind]
    ends = [p for p in rows if p.label == "end"]
    within = [p for p in rows if p.label == "within"]
    waits = [float(p.ended_ms) for p in ends if p.ended_ms is not None]
    return Row(
        f"{name}: {kind or 'all'}",
        waits,
        {"variant": name, "set": kind or "all"},
        {
            "mean_ms": round(float(np.mean(waits))) if waits else None,
            "p75_ms": round(float(np.percentile(waits, 75))) if waits else None,
            "turn_ends": len(ends),
            "turn_ends_waited_through": sum(p.ended_ms is None for p in ends),
            "within_turn_pauses": len(within),
            "ended_within_turn": sum(p.ended_ms is not None for p in within),
            "reply_heard_within_turn": sum(p.heard_in for p in within),
            "long_pauses": sum(p.label == "long" for p in rows),
        },
    )


@scenario("turns_human", "end of turn on recorded people: where each policy cuts in", order=56)
def turns_human_scenario(ctx: BenchContext, out: Outcome) -> None:
    rng = np.random.default_rng(0)
    tracks = human_speech.tracks_or_skip()
    audio = {t.name: with_tail(t, rng) for t in tracks}
    judges = Judges(audio)
    found: dict[str, list[Pause]] = {name: [] for name in POLICIES}
    for t in tracks:
        probs = probabilities(audio[t.name])
        for name, policy in POLICIES.items():
            found[name] += pauses(t, probs, policy, judges.turn_model, judges.transcribe)
    fig = out.add(
        Figure(
            "turns_human",
            "End of turn on recorded people (AMI meetings, a phone call, read speech)",
            "offline, ms of Silero silence from a pause's first silent chunk to the policy "
            "ending the turn, at turn ends (another speaker took the floor, or the recording "
            f"ended); reply_heard_within_turn: a turn ended in a pause under {LONG_PAUSE_MS} "
            f"ms that the speaker went on after, more than {REPLY_LAG_MS} ms after the end",
        )
    )
    for name, rows in found.items():
        for kind in (None, "conversation", "read"):
            fig.add(policy_row(name, rows, kind))
    seconds = sum(t.pcm.size for t in tracks) / SAMPLE_RATE
    fig.notes.append(
        f"{len(tracks)} tracks, {seconds / 60:.1f} min in all; Smart Turn verdicts "
        f"{VERDICT_LAG * MS_PER_CHUNK} ms and words {WORDS_LAG * MS_PER_CHUNK} ms after they "
        "are asked for (as in the mesh here)"
    )
    ctx.log(f"   {len(judges.turn_memo)} Smart Turn checks, {len(judges.words_memo)} transcripts")
