"""Scenario ``echo_human``: people's backchannels and turn starts over the bot's own echo.

The echo bench's users are espeak voices (bench/echo.py); these are people, from the meetings
and the phone call of bench/human_speech.py. Of each speaker's labelled segments:
- a **backchannel**: a segment of SHORT_S or less ("okay", "mm-hmm", "yeah", a short
  answer) that does not take the floor heard clean;
- a **turn start**: the first START_S of a segment of LONG_S or more, when it takes the
  floor heard clean (what the router would hear at an interruption's first pause).

"Heard clean" is the segment alone, on its speaker's track. Each is then played over the
reply's echo by bench/echo.py's offline speakerphone (three rooms, two moments in the reply,
the bot pausing 150 ms after the user starts, as it does through the mesh). It goes through
the server's canceller (``aec server``) or not (``aec off``: the raw mic). tiny.en hears the
router's barge-in window (200 ms before the onset to 100 ms after the end), and the router's
rule (actors/router/words.py ``interrupts``, with Whisper's no_speech and log-probability)
decides whether the words take the floor. Counted per room: backchannels the echo turns
into a stop, and turn starts that still take the floor. Offline, no mesh; the recordings as
turns_human fetches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from voxmesh.actors.router.turns import BARGE_IN_ASR_LEAD
from voxmesh.actors.router.words import interrupts

from . import human_speech, speech
from .echo import CONDITIONS, USER_RMS, Mix, condition, offline_mix
from .registry import BenchContext, Outcome, scenario
from .report import Figure, Row

RATE = speech.MIC_RATE
SHORT_S, LONG_S, START_S = 1.0, 2.0, 0.8
MIN_S = 0.15  # shorter labels are mostly a click or a breath
TAIL = RATE // 10  # the window goes on 100 ms after the words (the burst's first silence)
AT_S = (1.6, 2.6)  # into the mix: the reply has been playing for a while
PAUSE_MS = 150.0  # the bot pauses this long after the user starts (the mesh's reaction)


class Heard(NamedTuple):
    """What tiny.en made of one barge-in window, as the ASR actor's TRANSCRIPT carries it."""

    text: str
    no_speech: float
    logprob: float

    @property
    def interrupts(self) -> bool:
        """The router's words rule on it."""
        return interrupts(self.text, self.no_speech, self.logprob)


@dataclass
class Segment:
    kind: str  # "backchannel" | "turn start"
    clip: np.ndarray  # int16 scale, at the user's level
    clean: str = ""  # tiny.en on the segment alone

    def heard(self, x: np.ndarray, at: int) -> Heard:
        """tiny.en on ``x``'s barge-in window for this clip placed at ``at``."""
        asr = speech.whisper()
        text = asr.transcribe(x[max(0, at - BARGE_IN_ASR_LEAD) : at + self.clip.size + TAIL])
        return Heard(text, asr.last_no_speech, asr.last_logprob)


def segments() -> list[Segment]:
    """Every backchannel and turn start of the labelled recordings, with its clean words."""
    out = []
    for t in human_speech.tracks_or_skip():
        for s, e in t.mine:
            if MIN_S <= e - s <= SHORT_S:
                kind, end = "backchannel", e
            elif e - s >= LONG_S:
                kind, end = "turn start", s + START_S
            else:
                continue
            at = int(s * RATE)
            pcm = t.pcm[at : int(end * RATE)]
            rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) or 1.0
            g = Segment(kind, pcm * (USER_RMS / rms))
            clean = g.heard(t.pcm, at)  # the same window, on its own track
            g.clean = clean.text
            if clean.interrupts == (kind == "turn start"):
                out.append(g)  # else a "backchannel" that takes the floor clean is a short turn
    return out


@scenario("echo_human", "people's backchannels and turn starts over the bot's echo", order=38)
def echo_human_scenario(ctx: BenchContext, out: Outcome) -> None:
    found = segments()
    rooms = [c for c in CONDITIONS if c[0] is not None][: 1 if ctx.quick else None]
    fig = out.add(
        Figure(
            "echo_human",
            "People's backchannels and turn starts over the bot's echo (offline, tiny.en)",
            "values: Whisper's no_speech on each barge-in window; took_floor: windows the "
            "router's words rule calls an interruption (a backchannel's should be 0, a turn "
            "start's all)",
            unit="p",
            target="no backchannel takes the floor; every turn start does",
        )
    )
    for echo_db, delay in rooms:
        # One mix per window; the raw mic is "aec off", the canceller's output "aec server".
        heard: dict[tuple[str, str], list[tuple[Segment, Heard]]] = {}
        for kind in ("backchannel", "turn start"):
            for k, g in enumerate(x for x in found if x.kind == kind):
                for at_s in AT_S:
                    mixed = offline_mix(Mix(echo_db, delay, k, g.clip, at_s, PAUSE_MS))
                    for aec, x in (("off", mixed.mic), ("server", mixed.out)):
                        heard.setdefault((aec, kind), []).append((g, g.heard(x, int(at_s * RATE))))
        for (aec, kind), windows in sorted(heard.items()):
            probs = [h.no_speech for _, h in windows]
            # [clean, over the echo, no_speech, logprob] where the echo changed the verdict
            odd = [
                [g.clean, h.text, round(h.no_speech, 2), round(h.logprob, 2)]
                for g, h in windows
                if h.interrupts != (kind == "turn start")
            ]
            wrong = len(odd)
            fig.add(
                Row(
                    f"{condition(echo_db, delay)}, aec {aec}: {kind}s",
                    probs,
                    {"echo_db": echo_db, "delay_ms": delay, "aec": aec, "set": kind},
                    {
                        "windows": len(probs),
                        "took_floor": wrong if kind == "backchannel" else len(probs) - wrong,
                        "changed": odd,  # JSON only: what was heard where the echo changed it
                    },
                )
            )
            ctx.log(f"   {fig.rows[-1].label}: {wrong} of {len(probs)} changed by the echo")
    n = {kind: sum(g.kind == kind for g in found) for kind in ("backchannel", "turn start")}
    fig.notes.append(
        f"{n['backchannel']} backchannels (<= {SHORT_S:g} s) and {n['turn start']} turn starts "
        f"(the first {START_S:g} s of segments >= {LONG_S:g} s), at {len(AT_S)} moments of the "
        "reply each"
    )
