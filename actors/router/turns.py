"""Turn-taking and barge-in (docs/turn-taking.md), one session at a time.

listening -> user_speaking -> thinking -> speaking -> listening, and speaking -> paused on
speech onset: PAUSE (tts) + HOLD (transport) go out at once; the pause becomes a STOP when
ASR hears words that take the floor in it (asked at its first silence, or after
``interrupt_min_ms`` of speech), when speech comes back after ``interrupt_min_ms``, or after
BACKCHANNEL_MAX_S of it; a RESUME + RELEASE if the noise ends first (RESUME_GRACE_S after ASR
heard nothing in it). The end of a user turn is transcribed speculatively at the first
silence, and the reply is synthesized under HOLD while the VAD confirms the end, so the first
frame is ready the moment the turn is confirmed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from voxmesh.mesh import events, metrics
from voxmesh.mesh.clock import Clock, LoopClock
from voxmesh.mesh.errors import ErrorCode, error_event
from voxmesh.mesh.protocol import (
    AsrRequest,
    Hold,
    Message,
    Pause,
    PlaybackEnded,
    PlaybackStarted,
    Release,
    Resume,
    Speak,
    SpeakDone,
    SpeakProgress,
    Stop,
    Transcript,
    TurnWords,
    VadEvent,
)
from voxmesh.mesh.ring import MIC_RATE
from voxmesh.mesh.settings import AsrSettings, MeshSettings, RouterSettings, TtsSettings
from voxmesh.speech.chunking import SentenceChunker

from . import turnlog
from .responder import Responder
from .session import Reply, Session, State
from .turnlog import TurnRecord
from .words import (
    BACKCHANNEL_MAX_S,
    LONE_WORD_WAIT_S,
    RESUME_GRACE_S,
    ends_mid_sentence,
    goes_on,
    interrupts,
    tentative,
)


class Outbox(Protocol):
    def to_transport(self, msg: Message) -> None: ...
    def to_tts(self, session: Session, msg: Message) -> bool: ...
    def to_asr(self, msg: Message) -> None: ...
    def asr_remembers(self, session: Session) -> bool:
        """Whether the ASR reading the session remembers the windows it transcribed (its
        info's ``remembers``), so that asking ahead of a pause costs it nothing twice."""
        ...

    def to_vad(self, session: Session, msg: Message) -> None: ...
    def event(self, session: Session, event: dict[str, Any]) -> None: ...
    def mic_head(self, session: Session) -> int: ...
    def mic_time(self, session: Session, sample: int) -> float | None:
        """When mic sample ``sample`` reached the ring (None if it is no longer there)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
    async def wait_tts(self, timeout_s: float) -> bool:
        """True once some TTS actor is up (at once if one is), False after ``timeout_s``."""
        ...

    def tts_serving(self, session: Session) -> str:
        """Which TTS process the session's SPEAKs went to last ("" if none): its name and pid,
        so that a restarted actor of the same name is a different one."""
        ...

    def tts_alive(self, process: str) -> bool:
        """Whether that TTS process (as ``tts_serving`` names it) is still up."""
        ...


# An ASR request unanswered this long was lost (the actor restarted): stop counting it as
# work the ASR has queued.
ASR_LOST_S = 2.0

# ASR hears a barge-in from this long before the VAD's onset: Silero starts late on soft
# onsets, and "Stop" cut to "op" is heard as nothing (measured on Piper speech: the first
# word of "Stop, wait a moment." recognised in 4 of 6 windows from the onset, 6 of 6 with 200 ms).
BARGE_IN_ASR_LEAD = MIC_RATE * 200 // 1000

# Audio this short is not transcribed before its pause (partials, ``speech_quiet``): too
# little to be worth a Whisper run.
MIN_ASR_S = 0.3


@dataclass(frozen=True)
class TurnConfig:
    """What the engine needs of the settings (mesh/settings.py defines each one)."""

    interrupt_min_ms: int = RouterSettings.interrupt_min_ms
    continue_ms: int = RouterSettings.continue_ms
    partial_interval_ms: int = AsrSettings.partial_interval_ms
    watchdog_ms: int = RouterSettings.watchdog_ms
    first_chunk_words: int = TtsSettings.first_chunk_words
    hold_s: float = MeshSettings.hold_s  # a reply waits this long for a TTS actor that is away

    @classmethod
    def of(
        cls, router: RouterSettings, asr: AsrSettings, tts: TtsSettings, hold_s: float
    ) -> TurnConfig:
        return cls(
            interrupt_min_ms=router.interrupt_min_ms,
            continue_ms=router.continue_ms,
            partial_interval_ms=asr.partial_interval_ms,
            watchdog_ms=router.watchdog_ms,
            first_chunk_words=tts.first_chunk_words,
            hold_s=hold_s,
        )


class TtsUnavailable(Exception):
    """No TTS actor came back within the hold time."""


class TurnEngine:
    def __init__(
        self, out: Outbox, responder: Responder, cfg: TurnConfig, clock: Clock | None = None
    ) -> None:
        self.out = out
        self.responder = responder
        self.cfg = cfg
        # Every timestamp and timer here goes through it; the ``now`` that poll_partials and
        # watchdog are given must be on the same timebase (LoopClock: time.monotonic()).
        self.clock: Clock = LoopClock() if clock is None else clock
        # (session, final) -> when asked: the ASR's queue as far as we know it. A partial
        # that is only shown waits for it to be empty, so a loaded ASR skips them.
        self.asr_asked: dict[tuple[str, bool], float] = {}

    # --- helpers ---------------------------------------------------------------------------

    def _set_state(self, s: Session, state: State) -> None:
        if s.state != state:
            s.state = state
            self.out.event(s, events.State(state=state.value).as_dict())

    @staticmethod
    def _record(s: Session) -> TurnRecord | None:
        return s.reply.turn if s.reply is not None else None

    def _voice_turn(self, s: Session, text: str, end: int) -> TurnRecord:
        """The record of a spoken turn that ended at mic sample ``end``."""
        return TurnRecord(
            s.id, "voice", text, started=self.out.mic_time(s, end), asr_s=s.asr_s.get(end)
        )

    def _pause_output(self, s: Session) -> None:
        """PAUSE + HOLD at once: the transport stops within a frame and clears the client."""
        self.out.to_tts(s, Pause(session=s.id, epoch=s.epoch))
        self.out.to_transport(Hold(session=s.id, epoch=s.epoch, t_issued=self.clock.now()))

    def _stop_output(self, s: Session, reason: str = "interrupted") -> None:
        """Drop the reply: new epoch, so every older frame and message is dead."""
        for task in (s.reply_task, s.failover_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        s.reply_task = s.failover_task = None
        if s.reply is not None:
            if s.reply.turn is not None:
                s.reply.turn.cut(reason, s.reply.text)
            s.cut_reply, s.reply = s.reply, None
        s.epoch += 1
        self.out.to_tts(s, Stop(session=s.id, epoch=s.epoch, reason=reason))
        self.out.to_transport(Stop(session=s.id, epoch=s.epoch, reason=reason))

    def _request_asr(self, s: Session, end: int, final: bool, *, ahead: bool = False) -> None:
        """The turn so far, up to ``end``. A final is owed to the turn (asked again if the
        ASR restarts) unless it is asked ``ahead`` of the pause (``speech_quiet``)."""
        req = AsrRequest(session=s.id, turn=s.turn, start=s.turn_start, end=end, final=final)
        if final and not ahead:
            s.final_request = req  # asked again if the ASR actor restarts before it answers
        self._ask_asr(req)

    def _ask_asr(self, req: AsrRequest) -> None:
        self.asr_asked[(req.session, req.final)] = self.clock.now()
        self.out.to_asr(req)

    def _asr_busy(self, now: float) -> bool:
        lost = [key for key, t in self.asr_asked.items() if now - t >= ASR_LOST_S]
        for key in lost:
            del self.asr_asked[key]
        return bool(self.asr_asked)

    def asr_back(self, s: Session) -> None:
        """The ASR actor (re)started: ask again for the final transcript still owed."""
        req = s.final_request
        if req is not None and req.turn == s.turn:
            self._ask_asr(req)

    def _new_turn(self, s: Session, start: int) -> None:
        s.turn += 1
        s.turn_start = start
        s.pending_end = None
        s.turn_end = None
        s.continues = False
        s.window_from = None
        s.transcripts.clear()
        s.asr_s.clear()
        s.partial_inflight_since = 0.0

    # --- VAD -------------------------------------------------------------------------------

    def on_vad(self, s: Session, ev: VadEvent) -> None:
        handler = {
            "speech_start": self._speech_start,
            "speech_pause": self._speech_pause,
            "speech_resume": self._speech_resume,
            "speech_end": self._speech_end,
            "speech_quiet": self._speech_quiet,
        }.get(ev.kind)
        if handler is not None:
            handler(s, ev)

    def _speech_start(self, s: Session, ev: VadEvent) -> None:
        s.vad_speaking = True
        self.out.event(s, events.Vad(event="speech_start", sample=ev.sample).as_dict())
        if s.state == State.SPEAKING:
            self._pause_output(s)
            turnlog.barge_in(self._record(s), "pause", s.id, "speech over the reply")
            s.onset_sample = ev.sample
            s.cancel_timer()
            s.onset_at = self.clock.now()
            s.confirm_timer = self.clock.call_later(
                self.cfg.interrupt_min_ms / 1000, self._confirm_due, s
            )
            s.last_partial_at = 0.0  # ASR may check the barge-in as soon as it has audio
            self._set_state(s, State.PAUSED)
        elif s.state == State.PAUSED:  # speech again before the last burst was judged
            s.burst_end = None
            if s.resume_timer is not None:
                self._burst_goes_on(s)
            elif s.confirm_due:
                self._interrupt(s, "speech again after interrupt_min_ms")
        elif s.state == State.THINKING:
            # The user went on talking before the reply played: drop it, keep the turn whole;
            # a final transcript already out is replaced by the whole turn's (as _interrupt).
            said, continues = self._confirmed(s), s.continues
            self._stop_output(s)
            if said:
                self._retract_turn(s)
            self._new_turn(s, s.turn_start)
            s.continues = said or continues
            self._set_state(s, State.USER_SPEAKING)
        elif s.state == State.LISTENING:
            self._new_turn(s, ev.sample)
            self._set_state(s, State.USER_SPEAKING)

    def _speech_pause(self, s: Session, ev: VadEvent) -> None:
        s.vad_speaking = False
        if s.state == State.USER_SPEAKING:
            s.pending_end = ev.sample
            self._request_asr(s, ev.sample, final=True)
        elif s.state == State.PAUSED:
            # Judge the burst at its first silence: the end of the *turn* may be up to
            # vad.max_silence_ms away (an unfinished verdict), and a cough must not hold the
            # reply that long.
            self._burst_silent(s, ev.sample)

    def _speech_quiet(self, s: Session, ev: VadEvent) -> None:
        """The user's audio went quiet ahead of Silero's pause: ask for the turn so far now.
        The ASR remembers it, so the pause's final, if nothing loud came since, is answered
        at once (speech/asr.py); its own answer is kept like any other final, by its end."""
        if s.state != State.USER_SPEAKING or s.pending_end is not None:
            return
        if ev.sample - s.turn_start < MIC_RATE * MIN_ASR_S:
            return
        if not self.out.asr_remembers(s):
            return  # it would transcribe the pause's window again, after this one
        self._request_asr(s, ev.sample, final=True, ahead=True)

    def _burst_silent(self, s: Session, sample: int) -> None:
        """A cough, an "mm-hmm": carry on where the user left off, but only once ASR has
        heard the burst: a short word and a pause ("Stop, wait...") is an interruption."""
        s.burst_end = sample
        if not s.partial_inflight_since:
            self._request_partial(s, self._barge_in_start(s.onset_sample), sample, self.clock.now())

    def _speech_resume(self, s: Session, ev: VadEvent) -> None:
        s.vad_speaking = True
        if s.state == State.PAUSED and s.resume_timer is not None:
            s.burst_end = None
            self._burst_goes_on(s)
        elif s.state == State.PAUSED and s.confirm_due:
            self._interrupt(s, "speech again after interrupt_min_ms")
        elif s.state == State.PAUSED:
            s.burst_end = None  # the burst goes on: no resume on its first silence
        elif s.state == State.SPEAKING:  # resumed at the burst's silence, and it goes on
            self._speech_start(s, ev)
        elif s.state == State.LISTENING:
            # That burst's segment outlived the reply ("um, | the station" after a short
            # answer): what comes back is the user's new turn, or its words are never heard.
            self._new_turn(s, self._barge_in_start(ev.sample))
            self._set_state(s, State.USER_SPEAKING)
        elif s.state == State.USER_SPEAKING:
            s.pending_end = None
            if s.reply is not None:  # a reply pre-generated under HOLD: the turn goes on
                self._stop_output(s)

    def _speech_end(self, s: Session, ev: VadEvent) -> None:
        s.vad_speaking = False
        self.out.event(s, events.Vad(event="speech_end", sample=ev.sample).as_dict())
        if s.state == State.PAUSED:
            s.burst_over = True
            if s.burst_end != ev.sample:  # not judged at its first silence already
                self._burst_silent(s, ev.sample)
        elif s.state == State.USER_SPEAKING:
            self._turn_ended(s, ev.sample)

    def _turn_ended(self, s: Session, sample: int) -> None:
        s.turn_end = s.window_from = sample
        self._set_state(s, State.THINKING)
        if sample in s.transcripts:
            self._turn_confirmed(s, s.transcripts[sample])
        elif s.pending_end != sample:
            self._request_asr(s, sample, final=True)

    def _confirm_due(self, s: Session) -> None:
        s.confirm_timer = None
        if s.state != State.PAUSED:
            return
        # Speech this long is judged by its words ("okaaay" outlasts interrupt_min_ms): ASR
        # is asked now if it is not judging the burst already (poll_partials' first ask races
        # this timer). Its answer, the burst's end or BACKCHANNEL_MAX_S decides.
        if s.vad_speaking and not (s.backchannel or s.partial_inflight_since):
            start, head = self._barge_in_start(s.onset_sample), self.out.mic_head(s)
            if head - start < MIC_RATE * MIN_ASR_S:  # the mic ring stalled: nothing to judge
                self._interrupt(s, "speech for interrupt_min_ms")
                return
            self._request_partial(s, start, head, self.clock.now())
        s.confirm_due = True  # and speech after a silence now interrupts (speech_resume)

    def _await_more(self, s: Session) -> None:
        """Tentative words at the burst's silence (words.py): more speech within
        LONE_WORD_WAIT_S is an interruption (speech_start / speech_resume with confirm_due),
        none resumes."""
        if s.confirm_timer is not None:
            s.confirm_timer.cancel()
        s.confirm_due = s.awaiting_more = True
        s.confirm_timer = self.clock.call_later(LONE_WORD_WAIT_S, self._lone_word_over, s)

    def _resume_soon(self, s: Session) -> None:
        """Heard as nothing at the burst's silence: resume after RESUME_GRACE_S of it."""
        s.resume_timer = self.clock.call_later(RESUME_GRACE_S, self._grace_over, s)

    def _grace_over(self, s: Session) -> None:
        s.resume_timer = None
        if s.state == State.PAUSED and not s.vad_speaking:
            self._resume(s)

    @staticmethod
    def _burst_goes_on(s: Session) -> None:
        """Speech within RESUME_GRACE_S of a burst heard as nothing: the same burst, judged
        whole (ASR from its first onset) at its next silence."""
        assert s.resume_timer is not None
        s.resume_timer.cancel()
        s.resume_timer = None

    def _lone_word_over(self, s: Session) -> None:
        s.confirm_timer = None
        if s.state == State.PAUSED and not s.vad_speaking:
            self._resume(s)

    def _resume(self, s: Session) -> None:
        if s.burst_end is not None and self._just_answered(s):
            # "go out for dinner" whose first syllable ASR heard as nothing: the rest of it,
            # soon after, still goes on with the turn
            s.window_from = s.burst_end
        s.cancel_timer()
        self.out.to_tts(s, Resume(session=s.id, epoch=s.epoch))
        self.out.to_transport(Release(session=s.id, epoch=s.epoch))
        self._set_state(s, State.SPEAKING)

    def _interrupt(self, s: Session, why: str) -> None:
        """A real interruption: the bot yields the floor to the user's new turn, or, when
        the user has only gone on with the turn just answered, to that whole turn again."""
        burst_end, over = s.burst_end, s.burst_over
        goes_on_turn = self._just_answered(s)
        s.cancel_timer()
        if goes_on_turn:
            why += " (the user's turn goes on)"
        turnlog.barge_in(self._record(s), "stop", s.id, why)
        self._stop_output(s)
        if goes_on_turn:
            self._retract_turn(s)
            self._new_turn(s, s.turn_start)  # ASR hears it all again, pause and all
            s.continues = True
        else:
            self._new_turn(s, self._barge_in_start(s.onset_sample))
        self._set_state(s, State.USER_SPEAKING)
        if burst_end is not None and over:  # the VAD has ended this speech: so has the turn
            self._turn_ended(s, burst_end)
        elif burst_end is not None:  # at a pause, as a user's turn is: ASR speculates on it
            s.pending_end = burst_end
            self._request_asr(s, burst_end, final=True)

    def _just_answered(self, s: Session) -> bool:
        """Is the speech over the reply within router.continue_ms (mic time) of the end of
        the spoken turn the reply answers? Then the reply began in the user's pause ("Turn
        off the lights in the kitchen, | please."), and what they say now goes on with it."""
        reply = s.reply
        if reply is None or reply.turn is None or reply.turn.source != "voice":
            return False
        if self.cfg.continue_ms <= 0:
            return False
        window = self.cfg.continue_ms * MIC_RATE // 1000
        return s.window_from is not None and 0 <= s.onset_sample - s.window_from <= window

    @staticmethod
    def _confirmed(s: Session) -> bool:
        """Has the turn that ended at ``s.turn_end`` had its final transcript sent (and its
        text entered the history)? _turn_confirmed does so as soon as it has words."""
        return s.turn_end is not None and bool(s.transcripts.get(s.turn_end, "").strip())

    @staticmethod
    def _retract_turn(s: Session) -> None:
        """The user's turn goes on: its text so far and the (stopped) reply to it leave the
        history; the whole turn's transcript takes their place when it comes."""
        if s.history and s.history[-1]["role"] == "user":
            s.history.pop()
        if s.cut_reply is not None:
            s.cut_reply.retracted = True

    # --- ASR -------------------------------------------------------------------------------

    def on_transcript(self, s: Session, tr: Transcript) -> None:
        self.asr_asked.pop((s.id, tr.final), None)
        kind = "final" if tr.final else "partial"
        if tr.remembered:  # ~0 ms: in the model's histogram it would hide the model's time
            metrics.ASR_REMEMBERED.labels(kind=kind).inc()
        elif tr.elapsed_ms > 0:
            metrics.ASR.labels(kind=kind).observe(tr.elapsed_ms / 1000)
        if tr.turn != s.turn:
            return  # an older turn's answer
        if not tr.final:
            s.partial_inflight_since = 0.0
            if s.state not in (State.USER_SPEAKING, State.PAUSED):
                return  # the turn ended while it ran: the final transcript is out already
            if tr.text:
                ev = events.Transcript(text=tr.text, final=False, continues=s.continues or None)
                self.out.event(s, ev.as_dict())
            if s.state != State.PAUSED:
                return
            turnlog.barge_in_heard(s.id, tr.text, tr.no_speech, tr.logprob)
            if interrupts(tr.text, tr.no_speech, tr.logprob) or (
                self._just_answered(s) and goes_on(tr.text)
            ):
                # ASR hears words: not a cough, not a backchannel
                self._interrupt(s, f"heard {tr.text[: turnlog.TEXT_MAX]!r}")
            elif s.burst_end is not None and tentative(tr.text, tr.no_speech, tr.logprob):
                self._await_more(s)
            elif s.burst_end is not None:
                self._resume_soon(s)
            else:
                # No words that take the floor so far ("okaaay", "mm-hmm", a hum): the burst's
                # end resumes the reply, BACKCHANNEL_MAX_S of it stops it (poll_partials).
                s.backchannel = True
            return
        s.transcripts[tr.end] = tr.text
        s.asr_s[tr.end] = tr.elapsed_ms / 1000
        if s.final_request is not None and s.final_request.end == tr.end:
            s.final_request = None
        if s.state == State.USER_SPEAKING and tr.end == s.pending_end:
            # The words decide with the turn model whether this pause ends the turn (vad.py)
            mid = ends_mid_sentence(tr.text)
            self.out.to_vad(s, TurnWords(session=s.id, sample=tr.end, mid_sentence=mid))
        if s.state == State.THINKING and tr.end == s.turn_end and s.reply is None:
            self._turn_confirmed(s, tr.text)
        elif s.state == State.USER_SPEAKING and tr.end == s.pending_end and tr.text:
            turn = self._voice_turn(s, tr.text, tr.end)  # speculative: gated until speech_end
            self._start_reply(s, tr.text, held=True, turn=turn)

    def _turn_confirmed(self, s: Session, text: str) -> None:
        if not text.strip():
            if s.reply is not None:
                self._stop_output(s)
            self._set_state(s, State.LISTENING)
            return
        ev = events.Transcript(text=text, final=True, continues=s.continues or None)
        self.out.event(s, ev.as_dict())
        if s.reply is None:
            assert s.turn_end is not None  # both callers have set it
            self._start_reply(s, text, held=False, turn=self._voice_turn(s, text, s.turn_end))
        else:
            s.reply.released = True
            if s.reply.turn is not None:
                s.reply.turn.release(self.clock.now())
            if s.reply.complete:  # else _stream_reply says it once it is (not twice)
                self.out.event(s, events.Reply(text=s.reply.text).as_dict())
            self.out.to_transport(Release(session=s.id, epoch=s.epoch))
        s.history.append({"role": "user", "content": text})

    def poll_partials(self, s: Session, now: float) -> None:
        if s.state not in (State.USER_SPEAKING, State.PAUSED):
            return
        if s.state == State.PAUSED and s.vad_speaking and now - s.onset_at >= BACKCHANNEL_MAX_S:
            self._interrupt(s, "speech for BACKCHANNEL_MAX_S")  # no backchannel is this long
            return
        if s.state == State.PAUSED and (s.awaiting_more or s.resume_timer is not None):
            return  # ASR has judged the burst: more speech or a timer decides
        interval = self.cfg.partial_interval_ms / 1000
        stale = now - s.partial_inflight_since > 2 * interval
        if s.partial_inflight_since and not stale:
            return
        if s.state == State.PAUSED and s.burst_end is not None:
            self._resume(s)  # ASR never answered on the burst: do not hold the reply forever
            return
        if s.state == State.USER_SPEAKING:
            # Only shown, never decisive (a barge-in's are): as often as the client asked, and
            # only while the ASR has nothing else to do. Each one is a Whisper run.
            if not s.partial_ms or self._asr_busy(now):
                return
            interval = max(interval, s.partial_ms / 1000)
        if now - s.last_partial_at < interval:
            return  # back to back, partials would keep the ASR (and its cores) always busy
        if s.state == State.USER_SPEAKING and s.pending_end is not None:
            return  # the speculative final for this pause is on its way: a partial only delays it
        start = s.onset_sample if s.state == State.PAUSED else s.turn_start
        head = self.out.mic_head(s)
        if head - start >= MIC_RATE * MIN_ASR_S:
            if s.state == State.PAUSED:
                start = self._barge_in_start(s.onset_sample)
            self._request_partial(s, start, head, now)

    @staticmethod
    def _barge_in_start(onset: int) -> int:
        """Where ASR starts hearing speech the VAD found mid-reply at ``onset``."""
        return max(0, onset - BARGE_IN_ASR_LEAD)

    def _request_partial(self, s: Session, start: int, end: int, now: float) -> None:
        s.partial_inflight_since = s.last_partial_at = now
        self._ask_asr(AsrRequest(session=s.id, turn=s.turn, start=start, end=end, final=False))

    # --- replies ---------------------------------------------------------------------------

    def say(self, s: Session, text: str, *, as_user: bool) -> None:
        """Client text: ``as_user`` answers it as if spoken; else speak it verbatim."""
        if s.state in (State.SPEAKING, State.PAUSED, State.THINKING) or s.reply is not None:
            self.interrupt_now(s, next_state=State.THINKING)
        if as_user:
            self._new_turn(s, self.out.mic_head(s))
            self.out.event(s, events.Transcript(text=text, final=True).as_dict())
            turn = TurnRecord(s.id, "text", text, started=self.clock.now())
            self._start_reply(s, text, held=False, turn=turn)
            s.history.append({"role": "user", "content": text})
        else:
            turn = TurnRecord(s.id, "say", text, started=self.clock.now())
            self._start_reply(s, text, held=False, turn=turn, verbatim=True)
        self._set_state(s, State.THINKING)

    def interrupt_now(self, s: Session, next_state: State = State.LISTENING) -> None:
        """The client's explicit interrupt: stop now, whatever the state. It stops the bot,
        not the user: speech over the reply becomes their turn, as a confirmed barge-in, and
        a turn they are in goes on (else the VAD's pause and end, in "listening", would
        never reach the ASR)."""
        if next_state == State.LISTENING and s.state == State.PAUSED:
            self._interrupt(s, "the client's interrupt")
            return
        if next_state == State.LISTENING and s.state == State.USER_SPEAKING:
            if s.reply is not None:  # one made ahead under HOLD: the turn's end makes another
                self._stop_output(s)
            return
        s.cancel_timer()
        if s.reply is not None or s.state in (State.SPEAKING, State.PAUSED, State.THINKING):
            self._pause_output(s)
            self._stop_output(s)
        self._set_state(s, next_state)

    def _start_reply(
        self,
        s: Session,
        text: str,
        *,
        held: bool,
        turn: TurnRecord,
        verbatim: bool = False,
    ) -> None:
        s.utterances += 1
        reply = Reply(utterance=s.utterances, released=not held, turn=turn, voice=s.voice)
        s.reply = reply
        if held:
            self.out.to_transport(Hold(session=s.id, epoch=s.epoch, t_issued=self.clock.now()))
        else:
            turn.release(self.clock.now())
        s.last_progress = self.clock.now()
        history = list(s.history)  # before this turn's user text is appended
        s.reply_task = self.out.spawn(self._stream_reply(s, reply, text, verbatim, history))

    async def _stream_reply(
        self, s: Session, reply: Reply, text: str, verbatim: bool, history: list[dict[str, str]]
    ) -> None:
        epoch = s.epoch
        turn = reply.turn
        assert turn is not None  # only a reply adopted from an earlier router has none
        chunker = SentenceChunker(first_max_words=self.cfg.first_chunk_words)
        pending: list[str] = []
        first = True

        async def send(chunk: str, last: bool) -> None:
            nonlocal first
            msg = Speak(
                session=s.id,
                slot=s.slot,
                epoch=epoch,
                utterance=reply.utterance,
                text=chunk,
                first=first,
                last=last,
                voice=reply.voice,
                chunk=len(reply.sent),
                generation=s.generation,
            )
            first = False
            async with reply.lock:  # one sender at a time: chunks reach the TTS in order
                await self._deliver(s, reply, msg)
            turn.spoke(self.clock.now())

        try:
            if not verbatim:
                turn.asked(self.clock.now())
            deltas = _once(text) if verbatim else self.responder.reply(history, text)
            async for delta in deltas:
                turn.token(self.clock.now())
                reply.text += delta
                pending.extend(chunker.push(delta))
                while len(pending) > 1:  # keep one back: the last chunk must say last=True
                    await send(pending.pop(0), last=False)
            pending.extend(chunker.flush())
            if not pending:
                pending = [reply.text or "..."]
            for i, chunk in enumerate(pending):
                await send(chunk, last=i == len(pending) - 1)
            reply.complete = True
            if reply.released:
                self.out.event(s, events.Reply(text=reply.text).as_dict())
        except asyncio.CancelledError:
            raise
        except TtsUnavailable as exc:
            self.out.event(s, error_event(ErrorCode.UNAVAILABLE, str(exc)))
            if s.epoch == epoch:
                self._stop_output(s, reason="failed")
                self._set_state(s, State.LISTENING)
        except Exception as exc:
            self.out.event(s, error_event(ErrorCode.RESPONDER_FAILED, str(exc)))
            if s.epoch == epoch:
                turn.end("failed", reply.text)
                self._stop_output(s)
                self._set_state(s, State.LISTENING)
        finally:
            if s.reply_task is asyncio.current_task():
                s.reply_task = None

    async def _send_speak(self, s: Session, msg: Speak) -> None:
        """SPEAK to the session's TTS actor, waiting (up to hold_s) for one to be up."""
        deadline = self.clock.now() + self.cfg.hold_s
        while not self.out.to_tts(s, msg):
            # The one picked may have died a moment ago (its send failed): the hub forgets
            # it on the next turn of the loop, so let that run before looking again.
            await asyncio.sleep(0)
            left = deadline - self.clock.now()
            if left <= 0 or not await self.out.wait_tts(left):
                break
        else:
            return
        raise TtsUnavailable(f"no TTS actor came back within {self.cfg.hold_s:g} s")

    async def _deliver(self, s: Session, reply: Reply, new: Speak | None) -> None:
        """Under ``reply.lock``: first the chunks a dead TTS process owed (not wholly in the
        ring: SPEAK_PROGRESS), again, as continuations, to the one serving now; then ``new``.
        """
        for i in range(reply.chunks_done, len(reply.sent)):
            if not self.out.tts_alive(reply.sent_to[i]):
                await self._send_speak(s, dataclasses.replace(reply.sent[i], first=False))
                reply.sent_to[i] = self.out.tts_serving(s)
                s.last_progress = self.clock.now()
        if new is not None:
            await self._send_speak(s, new)
            reply.sent.append(new)
            reply.sent_to.append(self.out.tts_serving(s))

    # --- TTS failover ----------------------------------------------------------------------

    def tts_lost(self, s: Session) -> None:
        """The TTS actor speaking for ``s`` died: hand the rest of the reply to another."""
        reply = s.reply
        if reply is None or reply.synthesized or not reply.sent:
            return  # nothing it owed us (what it wrote is in the ring and plays on)
        if s.failover_task is not None:
            s.failover_task.cancel()
        s.last_progress = self.clock.now()
        s.failover_task = self.out.spawn(self._failover(s, reply))

    async def _failover(self, s: Session, reply: Reply) -> None:
        epoch = s.epoch
        try:
            # Chunks wholly in the ring play on; the rest is synthesized again. A chunk the
            # dead actor had begun is heard again from its start (not from the first unheard
            # sample: a new synthesis does not give the same audio).
            async with reply.lock:
                if s.epoch == epoch and s.reply is reply:
                    await self._deliver(s, reply, None)
        except TtsUnavailable as exc:
            if s.epoch == epoch and s.reply is reply:
                self.out.event(s, error_event(ErrorCode.TTS_LOST, str(exc)))
                self.recover(s, reason="failed")
        finally:
            if s.failover_task is asyncio.current_task():
                s.failover_task = None

    # --- playback --------------------------------------------------------------------------

    def on_speak_progress(self, s: Session, msg: SpeakProgress) -> None:
        reply = s.reply
        if msg.epoch == s.epoch and reply is not None and msg.utterance == reply.utterance:
            reply.chunks_done = max(reply.chunks_done, msg.chunk + 1)
            s.last_progress = self.clock.now()

    def on_speak_done(self, s: Session, msg: SpeakDone) -> None:
        if msg.epoch != s.epoch or s.reply is None or msg.utterance != s.reply.utterance:
            return
        s.reply.samples = msg.samples
        s.reply.synthesized = True
        s.last_progress = self.clock.now()
        if msg.error:
            self.out.event(s, error_event(ErrorCode.TTS_FAILED, msg.error))
            self.recover(s, reason="failed")

    def on_playback_started(self, s: Session, msg: PlaybackStarted) -> None:
        if msg.epoch != s.epoch:
            return
        reply = s.reply if s.reply is not None and msg.utterance == s.reply.utterance else None
        if reply is not None and not reply.released:
            # Its first frames beat its HOLD to the transport (a fast TTS): the HOLD cuts them
            # and the transport says PLAYBACK_STARTED again when the RELEASE lets it play.
            return
        s.last_progress = self.clock.now()
        if reply is not None and reply.turn is not None:
            reply.turn.first_frame(msg.t)
        if s.state == State.THINKING:
            self._set_state(s, State.SPEAKING)

    def on_playback_ended(self, s: Session, msg: PlaybackEnded) -> None:
        for reply in (s.reply, s.cut_reply):
            if reply is not None and msg.utterance == reply.utterance:
                if reply.turn is not None:
                    reply.turn.finish(msg.reason, reply.text)
                if not reply.adopted:  # an adopted reply's text died with the old router
                    heard = _heard_text(reply, msg)
                    if not reply.retracted:
                        s.history.append({"role": "assistant", "content": heard})
                    if msg.reason == "interrupted":  # the page shows only what was heard
                        ev = events.Heard(utterance_id=reply.utterance, text=heard)
                        self.out.event(s, ev.as_dict())
                if reply is s.reply:
                    s.reply = None
                else:
                    s.cut_reply = None
        if msg.epoch == s.epoch and msg.reason == "done" and s.state == State.SPEAKING:
            self._set_state(s, State.LISTENING)

    def closed(self, s: Session) -> None:
        """The session ended: a reply still under way ends with it."""
        for final in (True, False):
            self.asr_asked.pop((s.id, final), None)
        for reply in (s.reply, s.cut_reply):
            if reply is not None and reply.turn is not None:
                reply.turn.end("closed", reply.text)

    def recover(self, s: Session, reason: str = "interrupted") -> None:
        """Give the floor back to the user after a failure (stuck turn, TTS lost)."""
        s.cancel_timer()
        self._stop_output(s, reason=reason)
        self._set_state(s, State.LISTENING)

    def adopt(self, s: Session, epoch: int, playing: int, utterances: int) -> None:
        """Take over a session a previous router ran: its epoch, and the reply it plays."""
        s.epoch = epoch
        s.utterances = max(utterances, playing)
        if playing:
            s.reply = Reply(
                utterance=playing, released=True, complete=True, synthesized=True, adopted=True
            )
            s.state = State.SPEAKING  # the caller announces the state

    def watchdog(self, s: Session, now: float, out_mark: Callable[[], tuple[int, int]]) -> None:
        """A turn that should be making sound but is not: report it and recover."""
        if s.state not in (State.THINKING, State.SPEAKING) or s.reply is None:
            return
        if not s.reply.released:
            return
        if s.failover_task is not None:
            s.last_progress = now  # a new TTS actor is taking the reply over
            return
        mark = out_mark()
        if mark != s.progress_mark:
            s.progress_mark = mark
            s.last_progress = now
        elif now - s.last_progress > self.cfg.watchdog_ms / 1000:
            self.out.event(
                s,
                error_event(ErrorCode.STUCK_TURN, "no audio flowed for the reply; listening again"),
            )
            self.recover(s, reason="failed")


async def _once(text: str) -> Any:
    yield text


HEARD_CHARS_PER_S = 15  # about what Piper's and espeak's voices say per second


def _heard_text(reply: Reply, ended: PlaybackEnded) -> str:
    """The part of the reply the user actually heard, by share of samples played."""
    if ended.reason == "done" or not reply.text:
        return reply.text
    if reply.samples > 0:
        share = min(1.0, ended.heard_samples / reply.samples)
        cut = int(len(reply.text) * share)
    else:  # cut before the TTS had it all: its length is unknown, so by a speaking rate
        cut = int(ended.heard_samples / 48000 * HEARD_CHARS_PER_S)
    heard = reply.text[:cut].rsplit(" ", 1)[0] if cut < len(reply.text) else reply.text
    return heard + "..." if heard != reply.text else heard
