"""What each reply cost and how it ended: one INFO line per turn (and per session), and the
turn metrics (``mesh/metrics.py``).

The engine (``turns.py``) keeps a ``TurnRecord`` on each ``Reply`` and tells it the moments
it sees: the responder asked and its first text, the first SPEAK, the release (a reply
made under HOLD plays only once the turn is confirmed), the first frame sent (the
transport's PLAYBACK_STARTED) and how the reply ended. All times are ``time.monotonic()``
seconds, in every process of the mesh alike (the mic ring's stamps, the transport's ``t``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from voxmesh.mesh import metrics

log = logging.getLogger("voxmesh.router.turns")

TEXT_MAX = 80  # characters of the transcript and of the reply a log line keeps
TEXT_FIELDS = frozenset({"session", "source", "outcome", "transcript", "reply"})
_TURN_LINE = re.compile(r"\bturn (session=.*)$")
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass
class TurnRecord:
    session: str
    source: str  # "voice" (spoken), "text" (typed, answered) or "say" (spoken verbatim)
    transcript: str
    # End of the user's turn: the last speech sample's arrival in the mic ring (voice) or
    # the request's arrival (text, say); None when the ring no longer held that frame.
    started: float | None
    asr_s: float | None = None  # the final transcript's ASR time
    asked_at: float | None = None
    first_token_at: float | None = None
    speak_at: float | None = None
    released_at: float | None = None
    first_frame_at: float | None = None
    pauses: int = 0
    stops: int = 0
    finished: bool = False

    def asked(self, now: float) -> None:
        self.asked_at = now

    def token(self, now: float) -> None:
        if self.first_token_at is None and self.asked_at is not None:
            self.first_token_at = now
            metrics.RESPONDER_FIRST_TOKEN.observe(now - self.asked_at)

    def spoke(self, now: float) -> None:
        if self.speak_at is None:
            self.speak_at = now

    def release(self, now: float) -> None:
        if self.released_at is None:
            self.released_at = now

    def first_frame(self, t: float) -> None:
        if self.first_frame_at is not None:
            return
        self.first_frame_at = t
        if self.started is not None and t >= self.started:
            metrics.VOICE_TO_VOICE.labels(source=self.source).observe(t - self.started)

    def barge_in(self, action: str) -> None:
        if action == "pause":
            self.pauses += 1
        else:
            self.stops += 1

    def cut(self, reason: str, reply_text: str) -> None:
        """The reply was stopped: one that played ends with its PLAYBACK_ENDED."""
        if self.first_frame_at is None:
            self.end(reason, reply_text)

    def end(self, outcome: str, reply_text: str) -> None:
        """Ended for good, whatever played. A reply made under HOLD and never released was
        speculation the turn outgrew: not a turn."""
        if self.released_at is None:
            self.finished = True
        else:
            self.finish(outcome, reply_text)

    def finish(self, outcome: str, reply_text: str) -> None:
        """Count the turn and log its line (once; later calls do nothing)."""
        if self.finished:
            return
        self.finished = True
        metrics.TURNS.labels(source=self.source, outcome=outcome).inc()
        fields = self.fields(outcome, reply_text)
        log.info("%s", turn_line(fields), extra={"fields": {"event": "turn", **fields}})

    def fields(self, outcome: str, reply_text: str) -> dict[str, Any]:
        first, spoke, released = self.first_frame_at, self.speak_at, self.released_at
        tts_from = None if spoke is None or released is None else max(spoke, released)
        return {
            "session": self.session,
            "source": self.source,
            "outcome": outcome,
            "v2v_ms": _ms(self.started, first),
            # The end of turn's share: end of speech -> the turn confirmed and its reply
            # released (the silence waited, the turn model, a final transcript not yet in).
            "eot_ms": _ms(self.started, released),
            "asr_ms": None if self.asr_s is None else round(self.asr_s * 1000, 1),
            "first_token_ms": _ms(self.asked_at, self.first_token_at),
            # The TTS's share of v2v: first SPEAK (or the release, if later) -> first frame.
            "tts_ms": _ms(tts_from, first),
            "pauses": self.pauses,
            "stops": self.stops,
            "transcript": _clip(self.transcript),
            "reply": _clip(reply_text),
        }


def barge_in(record: TurnRecord | None, action: str, session: str, why: str) -> None:
    """User speech over a reply: ``pause`` at the onset, ``stop`` once it is an interruption
    (``record``: the reply's, None for one adopted from an earlier router); ``why`` goes to
    the DEBUG log, for "why did it stop?"."""
    metrics.BARGE_INS.labels(action=action).inc()
    log.debug("barge-in %s session=%s: %s", action, session, why)
    if record is not None:
        record.barge_in(action)


def barge_in_heard(session: str, text: str, no_speech: float, logprob: float) -> None:
    """What ASR made of speech over a reply (it decides: words stop the bot)."""
    log.debug(
        "barge-in session=%s: ASR heard %r (no_speech %.2f, logprob %.2f)",
        session,
        text[:TEXT_MAX],
        no_speech,
        logprob,
    )


def session_opened(session: str, client: str, slot: int) -> None:
    log.info(
        "session open session=%s client=%s slot=%d",
        session,
        client,
        slot,
        extra={"fields": {"event": "session_open", "session": session, "client": client}},
    )


def session_closed(session: str, reason: str, seconds: float, replies: int) -> None:
    fields = {"session": session, "reason": reason, "seconds": round(seconds, 1)}
    log.info(
        "session close session=%s reason=%s seconds=%.1f replies=%d",
        session,
        reason,
        seconds,
        replies,
        extra={"fields": {"event": "session_close", **fields, "replies": replies}},
    )


def turn_line(fields: dict[str, Any]) -> str:
    """The text of a turn's log line: ``turn key=value ...``, logfmt-like."""
    return "turn " + " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def parse_turn_line(line: str) -> dict[str, Any] | None:
    """The fields of a ``turn_line`` in a log of the text format (None
    for any other line), for what reads a mesh's log (bench/turns.py): times as floats,
    ``-`` as None."""
    found = _TURN_LINE.search(line)
    if found is None:
        return None
    fields: dict[str, Any] = {}
    for key, raw in _FIELD.findall(found.group(1)):
        text = json.loads(raw) if raw.startswith('"') else raw
        if raw == "-":
            fields[key] = None
        elif key in TEXT_FIELDS:
            fields[key] = text
        else:
            try:
                fields[key] = float(text)
            except ValueError:  # a field this reader does not know yet
                fields[key] = text
    return fields


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None or end < start:
        return None
    return round((end - start) * 1000, 1)


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "…"


def _value(v: Any) -> str:
    """logfmt-like: ``-`` for unknown, a string quoted (JSON) when it has to be."""
    if v is None:
        return "-"
    if isinstance(v, str) and (not v or any(c in v for c in ' "=\\\n')):
        return json.dumps(v, ensure_ascii=False)
    return str(v)
