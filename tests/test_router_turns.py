"""Turn-taking logic of the router, driven message by message with a recording outbox.

Time is a FakeClock: a test advances it (``out.clock.advance(s)``) instead of sleeping, so
interrupt_min_ms and hold_s are crossed exactly and cost no wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from fakeclock import FakeClock
from prometheus_client import REGISTRY

from voxmesh.actors.router import turnlog
from voxmesh.actors.router.responder import EchoResponder
from voxmesh.actors.router.session import Reply, Session, State
from voxmesh.actors.router.turns import TurnConfig, TurnEngine
from voxmesh.actors.router.words import RESUME_GRACE_S
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


class Recorder:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = FakeClock() if clock is None else clock
        self.transport: list[Message] = []
        self.tts: list[Message] = []
        self.asr: list[AsrRequest] = []
        self.vad: list[Message] = []
        self.events: list[dict[str, Any]] = []
        self.head = 0
        self.mic_times: dict[int, float] = {}  # mic sample -> when it reached the ring
        self.tts_up = asyncio.Event()
        self.tts_up.set()
        self.tts_process = 1  # a TTS actor that dies comes back as a new process
        self.remembering_asr = True  # ours; a minimal remote ASR is not

    def to_transport(self, msg: Message) -> None:
        self.transport.append(msg)

    def to_tts(self, session: Session, msg: Message) -> bool:
        if not self.tts_up.is_set():
            return False
        self.tts.append(msg)
        return True

    def tts_dies(self) -> None:
        self.tts_up.clear()
        self.tts_process += 1

    def tts_serving(self, session: Session) -> str:
        return f"tts0/{self.tts_process}" if self.tts_up.is_set() else ""

    def tts_alive(self, process: str) -> bool:
        return self.tts_up.is_set() and process == f"tts0/{self.tts_process}"

    async def wait_tts(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await self.clock.wait_for(self.tts_up.wait(), timeout_s)
        return self.tts_up.is_set()

    def to_asr(self, msg: Message) -> None:
        assert isinstance(msg, AsrRequest)
        self.asr.append(msg)

    def asr_remembers(self, session: Session) -> bool:
        return self.remembering_asr

    def to_vad(self, session: Session, msg: Message) -> None:
        self.vad.append(msg)

    def event(self, session: Session, event: dict[str, Any]) -> None:
        self.events.append(event)

    def mic_head(self, session: Session) -> int:
        return self.head

    def mic_time(self, session: Session, sample: int) -> float | None:
        return self.mic_times.get(sample)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.ensure_future(coro)

    def states(self) -> list[str]:
        return [e["state"] for e in self.events if e["type"] == "state"]


def vad(kind: str, sample: int) -> VadEvent:
    return VadEvent(session="s", kind=kind, sample=sample, t=0.0)


def finals(out: Recorder) -> list[dict[str, Any]]:
    return [e for e in out.events if e["type"] == "transcript" and e["final"]]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def make(interrupt_ms: int = 50, hold_s: float = 3.0) -> tuple[TurnEngine, Recorder, Session]:
    out = Recorder()
    cfg = TurnConfig(interrupt_min_ms=interrupt_ms, hold_s=hold_s)
    engine = TurnEngine(out, EchoResponder(), cfg, clock=out.clock)
    return engine, out, Session("s", slot=0, generation=1, client="ws")


async def speak_turn(engine: TurnEngine, out: Recorder, s: Session, text: str) -> None:
    """User says ``text``; ASR answers at the pause; VAD confirms the end; playback starts."""
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_pause", 20000))
    req = out.asr[-1]
    assert (req.start, req.end, req.final) == (1000, 20000, True)
    engine.on_transcript(
        s, Transcript(session="s", turn=req.turn, text=text, final=True, end=20000)
    )
    await settle()
    engine.on_vad(s, vad("speech_end", 20000))
    await settle()
    speak = [m for m in out.tts if isinstance(m, Speak)]
    assert speak, "a reply went to TTS"
    engine.on_playback_started(
        s, PlaybackStarted(session="s", epoch=s.epoch, utterance=speak[-1].utterance, t=0.0)
    )


async def test_turn_reply_is_pregenerated_under_hold_then_released() -> None:
    engine, out, s = make()
    await speak_turn(engine, out, s, "hello there")
    kinds = [type(m).__name__ for m in out.transport]
    assert kinds[0] == "Hold" and "Release" in kinds, kinds
    speak = [m for m in out.tts if isinstance(m, Speak)]
    assert " ".join(m.text for m in speak) == "hello there"
    assert speak[-1].last and speak[0].first
    assert out.states() == ["user_speaking", "thinking", "speaking"]
    assert finals(out) == [{"type": "transcript", "text": "hello there", "final": True}]
    assert {"type": "reply", "text": "hello there"} in out.events


@pytest.mark.parametrize(
    ("heard", "mid_sentence"),
    [
        ("I would like to go to", True),
        ("My favorite color is...", True),
        ("So I was thinking, um", True),
        ("Turn off the lights in the kitchen,", True),
        ("What is the weather like in Paris today?", False),
        ("Where is it?", False),  # a question may end on "is"
        ("Sure", False),
        ("Yes, I can.", False),
    ],
)
async def test_the_words_at_a_pause_go_to_the_vad(heard: str, mid_sentence: bool) -> None:
    engine, out, s = make()
    engine.on_vad(s, vad("speech_start", 0))
    engine.on_vad(s, vad("speech_pause", 8000))
    asr_answers(engine, out, s, heard)
    assert out.vad == [TurnWords(session="s", sample=8000, mid_sentence=mid_sentence)]
    engine.on_vad(s, vad("speech_end", 8000))  # the turn's end takes the same transcript
    asr_answers(engine, out, s, heard)
    assert len(out.vad) == 1  # once per pause, and not once the turn has ended


async def test_speech_resuming_cancels_the_speculative_reply() -> None:
    engine, out, s = make()
    engine.on_vad(s, vad("speech_start", 0))
    engine.on_vad(s, vad("speech_pause", 8000))
    engine.on_transcript(
        s, Transcript(session="s", turn=s.turn, text="hello", final=True, end=8000)
    )
    await settle()
    engine.on_vad(s, vad("speech_resume", 9000))
    stops = [m for m in out.transport if isinstance(m, Stop)]
    assert stops and stops[-1].epoch == s.epoch == 1
    assert s.state == State.USER_SPEAKING
    # the whole turn is transcribed at the real end, from its original start
    engine.on_vad(s, vad("speech_end", 30000))
    assert (out.asr[-1].start, out.asr[-1].end) == (0, 30000)


async def test_a_turn_gone_quiet_is_transcribed_ahead_and_its_answer_decides_nothing() -> None:
    engine, out, s = make()
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_quiet", 1000 + 3000))  # under MIN_ASR_S of audio: not yet
    assert out.asr == []
    engine.on_vad(s, vad("speech_quiet", 19200))
    assert [(r.start, r.end, r.final) for r in out.asr] == [(1000, 19200, True)]
    asr_answers(engine, out, s, "hello there")
    # an answer about no pause: no words to the VAD, no reply, nothing shown
    assert out.vad == [] and out.tts == [] and finals(out) == []
    assert s.state == State.USER_SPEAKING
    engine.on_vad(s, vad("speech_pause", 20000))  # the pause's own final is still asked
    assert (out.asr[-1].start, out.asr[-1].end, out.asr[-1].final) == (1000, 20000, True)
    engine.on_vad(s, vad("speech_quiet", 20320))  # once paused, the final is on its way
    assert len(out.asr) == 2


async def test_an_asr_that_does_not_remember_is_asked_only_at_the_pause() -> None:
    engine, out, s = make()
    out.remembering_asr = False  # asked ahead, it would transcribe the pause's window again
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_quiet", 19200))
    assert out.asr == []
    engine.on_vad(s, vad("speech_pause", 20000))
    assert [(r.start, r.end, r.final) for r in out.asr] == [(1000, 20000, True)]


async def test_barge_in_pauses_at_once_and_stops_on_words_after_interrupt_min() -> None:
    engine, out, s = make(interrupt_ms=30)
    await speak_turn(engine, out, s, "a long answer")
    out.transport.clear()
    out.tts.clear()
    asked = len(out.asr)
    engine.on_vad(s, vad("speech_start", 50000))
    assert isinstance(out.tts[0], Pause) and isinstance(out.transport[0], Hold)
    assert s.state == State.PAUSED
    epoch = s.epoch
    out.clock.advance(0.02)
    assert s.state == State.PAUSED and len(out.asr) == asked  # not before interrupt_min_ms
    out.head = 56000
    out.clock.advance(0.06)
    # Still speaking at interrupt_min_ms, and ASR not yet asked: it is asked now, and its
    # words decide (the first ask of poll_partials would race this timer).
    req = out.asr[-1]
    assert (req.start, req.end, req.final) == (50000 - 3200, 56000, False)
    assert s.state == State.PAUSED
    asr_answers(engine, out, s, "Wait, stop.")
    assert s.state == State.USER_SPEAKING
    assert [m.epoch for m in out.tts if isinstance(m, Stop)] == [epoch + 1]
    assert s.turn_start == 50000 - 3200  # ASR hears the new turn from 200 ms before its onset


async def burst_over_the_reply(head: int) -> tuple[TurnEngine, Recorder, Session]:
    """A reply playing, speech over it from mic sample 50000, the mic ring at ``head``."""
    engine, out, s = make(interrupt_ms=30)
    await speak_turn(engine, out, s, "a long answer")
    engine.on_vad(s, vad("speech_start", 50000))
    out.head = head
    return engine, out, s


async def burst_judged(
    heard: str, pause: int, interrupt_ms: int
) -> tuple[TurnEngine, Recorder, Session]:
    """A reply playing; speech over it from mic sample 50000 to a silence at ``pause``, where
    ASR hears ``heard`` in it (what went to the transport before the burst is cleared)."""
    engine, out, s = make(interrupt_ms=interrupt_ms)
    await speak_turn(engine, out, s, "a long answer")
    out.transport.clear()
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_vad(s, vad("speech_pause", pause))
    asr_answers(engine, out, s, heard)
    return engine, out, s


async def test_speech_past_interrupt_min_heard_as_a_backchannel_resumes_at_its_end() -> None:
    """A backchannel in two bursts ("O- kay"): the second outlasts interrupt_min_ms before
    ASR was asked about it; asked then, it hears "Okay", and the burst's end resumes."""
    engine, out, s = await burst_over_the_reply(head=56000)
    out.clock.advance(0.04)
    asr_answers(engine, out, s, "Okay")
    out.clock.advance(0.5)
    assert s.state == State.PAUSED
    engine.on_vad(s, vad("speech_pause", 57000))
    asr_answers(engine, out, s, "Okay.")
    out.clock.advance(RESUME_GRACE_S)  # no more speech: the reply resumes
    assert s.state == State.SPEAKING
    assert not [m for m in out.tts if isinstance(m, Stop)]


async def test_speech_past_interrupt_min_with_no_audio_to_judge_interrupts() -> None:
    _, out, s = await burst_over_the_reply(head=50000)  # the ring stalled at the onset
    out.clock.advance(0.04)
    assert s.state == State.USER_SPEAKING


def asr_answers(engine: TurnEngine, out: Recorder, s: Session, text: str) -> AsrRequest:
    """ASR answers the newest request with ``text``; returns that request."""
    req = out.asr[-1]
    engine.on_transcript(
        s, Transcript(session="s", turn=req.turn, text=text, final=req.final, end=req.end)
    )
    return req


async def test_false_interruption_resumes_once_asr_hears_no_words() -> None:
    engine, out, s = make(interrupt_ms=200)
    await speak_turn(engine, out, s, "keep talking")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_vad(s, vad("speech_pause", 52400))
    engine.on_vad(s, vad("speech_end", 52400))
    assert s.state == State.PAUSED  # the burst goes to ASR first
    req = asr_answers(engine, out, s, "")
    assert (req.start, req.end, req.final) == (50000 - 3200, 52400, False)  # 200 ms lead
    assert s.state == State.PAUSED  # not at once: more speech would be the same burst
    out.clock.advance(RESUME_GRACE_S)  # no more speech: the reply resumes
    assert s.state == State.SPEAKING
    assert any(isinstance(m, Resume) for m in out.tts)
    assert any(isinstance(m, Release) for m in out.transport)
    assert not any(isinstance(m, Stop) for m in out.tts)
    assert out.clock.pending() == 0  # the confirm timer was cancelled...
    out.clock.advance(0.25)  # ...so it cannot fire an interruption later
    assert s.state == State.SPEAKING


async def test_a_cough_resumes_at_its_first_silence_not_at_the_turn_end() -> None:
    """The end of a turn may be a second away (an unfinished Smart Turn verdict): the burst is
    judged at its first silence, and speech that goes on after the resume pauses again."""
    engine, out, s = make(interrupt_ms=200)
    await speak_turn(engine, out, s, "keep talking")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_vad(s, vad("speech_pause", 52400))  # no speech_end yet
    req = asr_answers(engine, out, s, "")
    assert (req.end, req.final) == (52400, False)
    out.clock.advance(RESUME_GRACE_S)  # no more speech: the reply resumes
    assert s.state == State.SPEAKING and any(isinstance(m, Resume) for m in out.tts)
    engine.on_vad(s, vad("speech_end", 52400))  # late: changes nothing
    assert s.state == State.SPEAKING
    out.tts.clear()
    engine.on_vad(s, vad("speech_start", 60000))
    engine.on_vad(s, vad("speech_pause", 61000))
    engine.on_vad(s, vad("speech_resume", 61600))  # the burst goes on: not judged at 61000
    assert s.state == State.PAUSED and s.burst_end is None
    asr_answers(engine, out, s, "")  # the answer on the first silence comes late
    assert s.state == State.PAUSED and not any(isinstance(m, Resume) for m in out.tts)


async def test_speech_going_on_after_a_resume_at_a_pause_pauses_again() -> None:
    engine, out, s = make(interrupt_ms=200)
    await speak_turn(engine, out, s, "keep talking")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_vad(s, vad("speech_pause", 52400))
    asr_answers(engine, out, s, "")
    out.clock.advance(RESUME_GRACE_S)  # no more speech: the reply resumes
    assert s.state == State.SPEAKING
    engine.on_vad(s, vad("speech_resume", 54000))  # the same VAD segment, speech again
    assert s.state == State.PAUSED


@pytest.mark.parametrize("second", ["Wait, stop, that is not what I asked.", ""])
async def test_speech_soon_after_a_burst_heard_as_nothing_is_the_same_burst(second: str) -> None:
    """ "Wait, | stop, ...": tiny.en hears the canceller's "Wait," as nothing. Speech within
    RESUME_GRACE_S keeps the bot paused, and ASR judges the whole burst at its next silence:
    its words stop the reply with no resume in between; a second cough resumes it once."""
    engine, out, s = await burst_judged("", 54000, interrupt_ms=200)
    out.clock.advance(RESUME_GRACE_S / 2)
    engine.on_vad(s, vad("speech_resume", 56000))
    out.head = 60000
    out.clock.advance(RESUME_GRACE_S)  # and past interrupt_min_ms: ASR is asked again
    engine.poll_partials(s, out.clock.now())  # as the actor does every tick
    assert s.state == State.PAUSED
    engine.on_vad(s, vad("speech_pause", 64000))
    req = asr_answers(engine, out, s, second)
    assert req.start == 50000 - 3200  # the whole burst, from its first onset
    out.clock.advance(RESUME_GRACE_S)
    resumes = [m for m in out.transport if isinstance(m, Release)]
    if second:
        assert s.state == State.USER_SPEAKING and any(isinstance(m, Stop) for m in out.tts)
        assert not resumes
    else:
        assert s.state == State.SPEAKING and len(resumes) == 1


async def test_words_at_a_pause_interrupt_and_the_turn_waits_for_its_end() -> None:
    """ "Stop, wait..." heard at the first silence stops the bot; the user's turn then ends
    where the VAD ends it, with ASR already speculating on the pause."""
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "one two three")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_vad(s, vad("speech_pause", 54000))
    asr_answers(engine, out, s, "Stop.")
    assert any(isinstance(m, Stop) for m in out.tts)
    assert s.state == State.USER_SPEAKING and s.pending_end == 54000
    req = out.asr[-1]
    assert (req.end, req.final) == (54000, True)
    asr_answers(engine, out, s, "Stop, wait.")
    engine.on_vad(s, vad("speech_end", 54000))
    await settle()
    assert s.state in (State.THINKING, State.SPEAKING)
    assert finals(out)[-1]["text"] == "Stop, wait."


async def test_words_heard_during_pause_confirm_the_interruption() -> None:
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "one two three")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_transcript(
        s, Transcript(session="s", turn=s.turn, text="wait", final=False, end=56000)
    )
    assert s.state == State.USER_SPEAKING


async def test_a_short_word_then_a_pause_is_an_interruption() -> None:
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "one two three")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_vad(s, vad("speech_pause", 54000))
    engine.on_vad(s, vad("speech_end", 54000))  # "Stop," and the user draws breath
    asr_answers(engine, out, s, "Stop.")
    assert any(isinstance(m, Stop) for m in out.tts)
    assert not any(isinstance(m, Resume) for m in out.tts)
    # The VAD has already ended that speech: the user's turn is over, its words go to ASR.
    assert s.state == State.THINKING
    req = asr_answers(engine, out, s, "Stop.")
    assert (req.start, req.end, req.final) == (50000 - 3200, 54000, True)
    await settle()
    assert finals(out)[-1]["text"] == "Stop."


def cut_reply_ends(engine: TurnEngine, s: Session) -> None:
    """The transport reports the stopped reply's end (half of it heard)."""
    reply = s.cut_reply
    assert reply is not None
    ended = PlaybackEnded(
        session="s",
        epoch=s.epoch - 1,
        utterance=reply.utterance,
        sent_samples=4800,
        heard_samples=2400,
        reason="interrupted",
        t=0.0,
    )
    engine.on_playback_ended(s, ended)


@pytest.mark.parametrize(("heard", "no_speech"), [("way to the museum", 0.1), ("Please.", 0.53)])
async def test_words_soon_after_the_turn_go_on_with_it(heard: str, no_speech: float) -> None:
    """The reply began in the user's pause ("Can you tell me the | way to the museum?"): what
    they say within router.continue_ms stops it, even a lone word Whisper half calls silence,
    and the whole turn is heard and answered again, one user turn in the history."""
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "Can you tell me that?")  # the turn: 1000-20000
    engine.on_vad(s, vad("speech_start", 20000 + 9600))  # 600 ms later
    engine.on_vad(s, vad("speech_pause", 36000))
    engine.on_vad(s, vad("speech_end", 36000))
    req = out.asr[-1]
    engine.on_transcript(
        s,
        Transcript(
            session="s", turn=req.turn, text=heard, final=False, end=req.end, no_speech=no_speech
        ),
    )
    assert any(isinstance(m, Stop) for m in out.tts)  # at once: no LONE_WORD_WAIT_S
    cut_reply_ends(engine, s)
    req = asr_answers(engine, out, s, "Can you tell me the way to the museum?")
    assert (req.start, req.end, req.final) == (1000, 36000, True)  # the whole turn again
    await settle()
    assert finals(out)[-1] == {
        "type": "transcript",
        "text": "Can you tell me the way to the museum?",
        "final": True,
        "continues": True,
    }
    assert "continues" not in finals(out)[0]
    assert s.history == [{"role": "user", "content": "Can you tell me the way to the museum?"}]
    speak = [m for m in out.tts if isinstance(m, Speak) and m.epoch == s.epoch]
    assert " ".join(m.text for m in speak) == "Can you tell me the way to the museum?"


async def burst_heard_as_nothing(
    said: str, onset: int, pause: int
) -> tuple[TurnEngine, Recorder, Session]:
    """The user's turn ``said`` is answered; a burst over the reply, [onset, pause), is heard
    as nothing by ASR and the reply resumes."""
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, said)
    engine.on_vad(s, vad("speech_start", onset))
    engine.on_vad(s, vad("speech_pause", pause))
    asr_answers(engine, out, s, "")
    out.clock.advance(RESUME_GRACE_S)  # no more speech: the reply resumes
    assert s.state == State.SPEAKING  # resumed
    return engine, out, s


async def turn_heard(
    engine: TurnEngine, out: Recorder, s: Session, span: tuple[int, int], text: str
) -> None:
    """The VAD ends the user's turn at ``span``'s end; the router asks ASR for all of
    ``span`` as a final, and it answers ``text``."""
    engine.on_vad(s, vad("speech_pause", span[1]))
    req = out.asr[-1]
    assert (req.start, req.end, req.final) == (*span, True)
    engine.on_vad(s, vad("speech_end", span[1]))
    asr_answers(engine, out, s, text)
    await settle()


async def held_reply(engine: TurnEngine, out: Recorder, s: Session, text: str) -> Reply:
    """The user pauses after [1000, 20000); ASR hears ``text`` and the reply to it is made
    ahead, under HOLD (not released: the VAD has not ended the turn)."""
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_pause", 20000))
    asr_answers(engine, out, s, text)
    await settle()
    assert s.reply is not None and not s.reply.released
    return s.reply


async def test_a_burst_heard_as_nothing_keeps_the_window_open() -> None:
    """ "...maybe we could | go out for dinner": ASR hears nothing in the first syllable and
    the reply resumes; the rest, soon after, still goes on with the turn."""
    engine, out, s = await burst_heard_as_nothing(
        "So I was thinking that maybe we could...", 28000, 31000
    )
    onset = 31000 + 12800  # 1.5 s after the turn's end, 0.8 s after the burst's
    engine.on_vad(s, vad("speech_start", onset))
    engine.on_vad(s, vad("speech_pause", onset + 8000))
    asr_answers(engine, out, s, "Four dinner.")
    req = out.asr[-1]
    assert (req.start, req.final) == (1000, True)


async def test_speech_back_after_the_reply_ended_is_a_turn_of_its_own() -> None:
    """ "I would like to go to | um, the station": "um" over a short reply is heard as
    nothing and the reply plays to its end; the VAD's segment then resumes with "the
    station", which must become the user's turn, not be dropped for want of a start."""
    engine, out, s = await burst_heard_as_nothing("I would like to go to", 44864, 52192)
    engine.on_playback_ended(s, ended(s, speaks(out)[-1].utterance, "done"))
    assert s.state == State.LISTENING
    engine.on_vad(s, vad("speech_resume", 53760))  # the same VAD segment, speech again
    await turn_heard(engine, out, s, (53760 - 3200, 56800), "The station.")
    assert [f["text"] for f in finals(out)] == ["I would like to go to", "The station."]
    assert len(speaks(out)) == 2  # and it is answered


async def test_words_after_continue_ms_are_a_turn_of_their_own() -> None:
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "Can you tell me that?")
    onset = 20000 + 16000 + 16  # just over router.continue_ms
    engine.on_vad(s, vad("speech_start", onset))
    engine.on_vad(s, vad("speech_pause", onset + 8000))
    engine.on_vad(s, vad("speech_end", onset + 8000))
    asr_answers(engine, out, s, "Please.")  # a lone word: the bot waits for more
    assert not any(isinstance(m, Stop) for m in out.tts)
    out.clock.advance(0.6)
    assert s.state == State.SPEAKING
    engine.on_vad(s, vad("speech_start", onset + 20000))
    engine.on_vad(s, vad("speech_pause", onset + 30000))
    asr_answers(engine, out, s, "where is the museum")
    cut_reply_ends(engine, s)
    req = asr_answers(engine, out, s, "Where is the museum?")
    assert req.start == onset + 20000 - 3200  # the new words only
    await settle()
    assert "continues" not in finals(out)[-1]
    assert [m["role"] for m in s.history] == ["user", "assistant"]  # the next user text waits


@pytest.mark.parametrize("heard", ["Okay.", "Mm-hmm."])
async def test_a_backchannel_soon_after_the_turn_lets_the_reply_play(heard: str) -> None:
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "Tell me a story.")
    engine.on_vad(s, vad("speech_start", 24000))
    engine.on_vad(s, vad("speech_pause", 30000))
    engine.on_vad(s, vad("speech_end", 30000))
    asr_answers(engine, out, s, heard)
    out.clock.advance(RESUME_GRACE_S)  # no more speech: the reply resumes
    assert s.state == State.SPEAKING and any(isinstance(m, Resume) for m in out.tts)


async def test_a_pause_with_no_asr_answer_resumes_after_a_while() -> None:
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "one two three")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_vad(s, vad("speech_end", 52400))
    now = s.partial_inflight_since
    engine.poll_partials(s, now + 0.5)
    assert s.state == State.PAUSED
    engine.poll_partials(s, now + 2 * 0.6 + 0.01)
    assert s.state == State.SPEAKING


@pytest.mark.parametrize("text", ["Uh.", "uh uh uh", "Mm-hmm.", "Hmm?", "H", "X.", "I..."])
async def test_filler_sounds_heard_during_pause_do_not_interrupt(text: str) -> None:
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "one two three")
    engine.on_vad(s, vad("speech_start", 50000))
    engine.on_transcript(s, Transcript(session="s", turn=s.turn, text=text, final=False, end=1))
    assert s.state == State.PAUSED
    engine.on_vad(s, vad("speech_pause", 52400))
    engine.on_vad(s, vad("speech_end", 52400))
    asr_answers(engine, out, s, text)
    out.clock.advance(RESUME_GRACE_S)  # no more speech: the reply resumes
    assert s.state == State.SPEAKING  # resumed: a backchannel, not a turn


async def test_partial_arriving_after_the_turn_ended_is_not_shown() -> None:
    engine, out, s = make()
    await speak_turn(engine, out, s, "hello there")
    engine.on_transcript(
        s, Transcript(session="s", turn=s.turn, text="hello the", final=False, end=19000)
    )
    texts = [(e["text"], e["final"]) for e in out.events if e["type"] == "transcript"]
    assert texts == [("hello there", True)]


async def test_partials_go_out_at_most_once_per_interval_and_not_during_a_pause() -> None:
    out = Recorder()
    engine = TurnEngine(out, EchoResponder(), TurnConfig(partial_interval_ms=600), clock=out.clock)
    s = Session("s", slot=0, generation=1, client="ws", partial_ms=1)  # as fast as allowed
    engine.on_vad(s, vad("speech_start", 0))
    out.head = 16000

    def answer(t: float) -> None:
        engine.poll_partials(s, t)
        req = out.asr[-1]
        engine.on_transcript(
            s, Transcript(session="s", turn=req.turn, text="so", final=False, end=req.end)
        )

    answer(100.0)
    answer(100.3)  # answered at once, but too soon for another
    engine.poll_partials(s, 100.5)
    assert len(out.asr) == 1
    engine.poll_partials(s, 100.61)
    assert len(out.asr) == 2
    engine.on_vad(s, vad("speech_pause", 16000))  # a speculative final goes out...
    engine.poll_partials(s, 102.0)  # ...and no partial competes with it
    assert [r.final for r in out.asr] == [False, False, True]


def _speaking(engine: TurnEngine, out: Recorder, sid: str, partial_ms: int) -> Session:
    s = Session(sid, slot=0, generation=1, client="ws", partial_ms=partial_ms)
    engine.on_vad(s, vad("speech_start", 0))
    out.head = 16000
    return s


async def test_a_client_that_asks_no_partials_gets_none_while_it_speaks() -> None:
    out = Recorder()
    engine = TurnEngine(out, EchoResponder(), TurnConfig(partial_interval_ms=600), clock=out.clock)
    s = _speaking(engine, out, "s", partial_ms=0)
    for t in (100.0, 101.0, 102.0):
        engine.poll_partials(s, t)
    assert out.asr == []
    engine.on_vad(s, vad("speech_pause", 16000))
    assert [r.final for r in out.asr] == [True]  # the speculative final still goes out


async def test_partials_follow_the_clients_rate_above_the_servers_floor() -> None:
    out = Recorder()
    engine = TurnEngine(out, EchoResponder(), TurnConfig(partial_interval_ms=600), clock=out.clock)
    s = _speaking(engine, out, "s", partial_ms=1500)
    asked = []
    for t in (100.0, 100.7, 101.4, 101.6):
        engine.poll_partials(s, t)
        if len(out.asr) > len(asked):
            asked.append(t)
            req = out.asr[-1]
            engine.on_transcript(
                s, Transcript(session="s", turn=req.turn, text="so", final=False, end=req.end)
            )
    assert asked == [100.0, 101.6]


async def test_a_shown_partial_waits_while_the_asr_works_for_another_session() -> None:
    out = Recorder()
    engine = TurnEngine(out, EchoResponder(), TurnConfig(partial_interval_ms=600), clock=out.clock)
    busy = _speaking(engine, out, "b", partial_ms=0)
    engine.on_vad(busy, vad("speech_pause", 16000))  # b's speculative final is with the ASR
    s = _speaking(engine, out, "s", partial_ms=600)
    now = out.clock.now()
    engine.poll_partials(s, now)
    assert [r.session for r in out.asr] == ["b"]
    req = out.asr[-1]
    engine.on_transcript(
        busy, Transcript(session="b", turn=req.turn, text="hi", final=True, end=req.end)
    )
    engine.poll_partials(s, now)
    assert [r.session for r in out.asr] == ["b", "s"]


async def test_the_client_s_interrupt_over_speech_makes_that_speech_the_user_s_turn() -> None:
    """ "Stop, I meant Tuesday" with the page's stop button pressed as they start: the bot
    stops at once and what the user says is heard and answered."""
    engine, out, s = make(interrupt_ms=5000)
    await speak_turn(engine, out, s, "book it for Monday")
    engine.on_vad(s, vad("speech_start", 50000))
    assert s.state == State.PAUSED
    engine.interrupt_now(s)
    assert s.state == State.USER_SPEAKING and any(isinstance(m, Stop) for m in out.tts)
    await turn_heard(engine, out, s, (50000 - 3200, 60000), "I meant Tuesday.")
    assert finals(out)[-1]["text"] == "I meant Tuesday."
    assert speaks(out)[-1].text == "I meant Tuesday."


async def test_the_client_s_interrupt_while_the_user_speaks_leaves_their_turn_alone() -> None:
    engine, out, s = make()
    engine.on_vad(s, vad("speech_start", 1000))
    engine.interrupt_now(s)
    await turn_heard(engine, out, s, (1000, 20000), "What time is it?")
    assert [f["text"] for f in finals(out)] == ["What time is it?"]
    assert speaks(out), "and it is answered"


async def test_the_client_s_interrupt_drops_a_held_reply_and_the_turn_end_makes_another() -> None:
    engine, out, s = make()
    held = await held_reply(engine, out, s, "What time is it?")
    engine.interrupt_now(s)
    assert s.reply is None and s.state == State.USER_SPEAKING
    engine.on_vad(s, vad("speech_end", 20000))
    await settle()
    assert s.reply is not None and s.reply is not held and s.reply.released
    assert [f["text"] for f in finals(out)] == ["What time is it?"]


async def test_stale_transcripts_and_playback_events_are_ignored() -> None:
    engine, out, s = make()
    await speak_turn(engine, out, s, "first")
    old_turn = s.turn
    engine.interrupt_now(s)
    engine.on_transcript(
        s, Transcript(session="s", turn=old_turn - 1, text="late", final=True, end=1)
    )
    engine.on_playback_started(
        s, PlaybackStarted(session="s", epoch=s.epoch - 1, utterance=1, t=0.0)
    )
    assert s.state == State.LISTENING


async def test_heard_text_is_trimmed_after_interruption() -> None:
    engine, out, s = make()
    await speak_turn(engine, out, s, "one two three four")
    assert s.reply is not None
    s.reply.samples = 48000
    utt = s.reply.utterance
    engine.interrupt_now(s)
    engine.on_playback_ended(
        s,
        PlaybackEnded(
            session="s",
            epoch=s.epoch - 1,
            utterance=utt,
            sent_samples=30000,
            heard_samples=24000,
            reason="interrupted",
            t=0.0,
        ),
    )
    assert s.history[-1]["role"] == "assistant"
    assert s.history[-1]["content"].startswith("one two")
    assert "four" not in s.history[-1]["content"]
    # The client is told what was heard (the page shows only that, marked interrupted).
    heard = {"type": "heard", "utterance_id": utt, "text": s.history[-1]["content"]}
    assert out.events[-1] == heard


async def test_heard_text_before_the_tts_finished_is_by_speaking_rate() -> None:
    engine, out, s = make()
    text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    await speak_turn(engine, out, s, text)
    assert s.reply is not None and s.reply.samples == 0  # no SPEAK_DONE yet
    utt = s.reply.utterance
    engine.interrupt_now(s)
    ended = PlaybackEnded(
        session="s",
        epoch=s.epoch - 1,
        utterance=utt,
        sent_samples=60000,
        heard_samples=48000,  # 1 s: about 15 characters
        reason="interrupted",
        t=0.0,
    )
    engine.on_playback_ended(s, ended)
    assert out.events[-1]["type"] == "heard"
    assert out.events[-1]["text"] == "one two three..."


@pytest.mark.parametrize("mode", ["text", "say"])
async def test_client_text_replies(mode: str) -> None:
    engine, out, s = make()
    engine.say(s, "good morning", as_user=mode == "text")
    await settle()
    speak = [m for m in out.tts if isinstance(m, Speak)]
    assert " ".join(m.text for m in speak) == "good morning"
    assert s.state == State.THINKING


# --- when an actor dies ----------------------------------------------------------------------

THREE = "First sentence here. Then a second one. And a third to end."


def speaks(out: Recorder) -> list[Speak]:
    return [m for m in out.tts if isinstance(m, Speak)]


async def test_a_dead_tts_actors_unwritten_chunks_go_to_the_next_one() -> None:
    engine, out, s = make()
    engine.say(s, THREE, as_user=False)
    await settle()
    sent = speaks(out)
    assert len(sent) == 3 and [m.chunk for m in sent] == [0, 1, 2]
    utt = sent[0].utterance
    engine.on_speak_progress(s, SpeakProgress(session="s", epoch=s.epoch, utterance=utt, chunk=0))
    out.tts.clear()
    out.tts_dies()  # tts0 died; nobody is up for a moment
    engine.tts_lost(s)
    await settle()
    assert out.tts == []  # waiting for a TTS actor, not failing
    out.tts_up.set()  # the restarted one READYs
    await settle()
    again = speaks(out)
    assert [(m.chunk, m.text, m.first) for m in again] == [
        (1, sent[1].text, False),
        (2, sent[2].text, False),
    ]
    assert {(m.epoch, m.utterance) for m in again} == {(s.epoch, utt)}
    assert not [e for e in out.events if e["type"] == "error"]
    assert s.reply is not None and s.failover_task is None


async def test_a_reply_wholly_synthesized_is_not_sent_again() -> None:
    engine, out, s = make()
    engine.say(s, THREE, as_user=False)
    await settle()
    utt = speaks(out)[0].utterance
    engine.on_speak_done(s, SpeakDone(session="s", epoch=s.epoch, utterance=utt, samples=9))
    out.tts.clear()
    engine.tts_lost(s)
    await settle()
    assert out.tts == [] and s.failover_task is None  # what it wrote plays on from the ring


async def test_no_tts_actor_back_in_time_fails_the_reply_loudly() -> None:
    engine, out, s = make(hold_s=0.05)
    engine.say(s, THREE, as_user=False)
    await settle()
    out.tts_dies()
    engine.tts_lost(s)
    await settle()  # the failover is waiting for a TTS actor
    assert not [e for e in out.events if e["type"] == "error"]
    out.clock.advance(0.1)  # past hold_s
    await settle()
    errors = [e for e in out.events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["tts_lost"]
    stops = [m for m in out.transport if isinstance(m, Stop)]
    assert stops and stops[-1].reason == "failed"  # the client's audio_end says "failed"
    assert s.state == State.LISTENING and s.reply is None
    out.tts_up.set()  # the next turn works
    engine.say(s, "Hello again.", as_user=False)
    await settle()
    assert speaks(out)[-1].text == "Hello again." and speaks(out)[-1].epoch == s.epoch


async def test_a_say_while_no_tts_actor_is_up_waits_then_answers_unavailable() -> None:
    engine, out, s = make(hold_s=0.05)
    out.tts_dies()
    engine.say(s, "Anyone there?", as_user=False)
    await settle()  # the reply is waiting for a TTS actor
    assert not [e for e in out.events if e["type"] == "error"]
    out.clock.advance(0.1)  # past hold_s
    await settle()
    errors = [e for e in out.events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["unavailable"]  # retryable, never silence
    assert s.state == State.LISTENING


async def test_a_say_waits_for_a_tts_actor_that_comes_back_in_time() -> None:
    engine, out, s = make(hold_s=2.0)
    out.tts_dies()
    engine.say(s, "Anyone there?", as_user=False)
    await settle()
    assert out.tts == []
    out.clock.advance(1.9)  # still within hold_s
    await settle()
    assert out.tts == []
    out.tts_up.set()
    await settle()
    assert [m.text for m in speaks(out)] == ["Anyone there?"]
    assert not [e for e in out.events if e["type"] == "error"]


async def test_an_adopted_session_keeps_its_epoch_and_its_reply_can_be_interrupted() -> None:
    """A restarted router learns a session from the transport's re-announcement."""
    engine, out, s = make()
    engine.adopt(s, epoch=5, playing=3, utterances=3)
    assert s.state == State.SPEAKING and s.epoch == 5
    engine.interrupt_now(s)
    pause = [m for m in out.tts if isinstance(m, Pause)]
    stops = [m for m in out.transport if isinstance(m, Stop)]
    assert pause[0].epoch == 5 and stops[0].epoch == 6  # fences what the transport plays
    engine.say(s, "Fresh.", as_user=False)
    await settle()
    new = speaks(out)[-1]
    assert (new.epoch, new.utterance) == (6, 4)  # no id the transport has seen before


async def test_a_restarted_asr_is_asked_again_for_the_final_transcript() -> None:
    engine, out, s = make()
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_pause", 20000))
    asked = out.asr[-1]
    engine.asr_back(s)
    assert out.asr[-1] == asked and len(out.asr) == 2
    engine.on_transcript(
        s, Transcript(session="s", turn=asked.turn, text="hi", final=True, end=20000)
    )
    engine.asr_back(s)
    assert len(out.asr) == 2  # answered: nothing owed


class ScriptedResponder:
    """A responder whose deltas the test hands over one by one (an LLM still streaming)."""

    name = "scripted"

    def __init__(self) -> None:
        self.deltas: asyncio.Queue[str | None] = asyncio.Queue()

    async def reply(self, history: list[dict[str, str]], text: str) -> AsyncIterator[str]:
        while (delta := await self.deltas.get()) is not None:
            yield delta

    async def aclose(self) -> None:
        pass


async def test_chunks_still_streaming_when_the_tts_dies_reach_the_next_one_in_order() -> None:
    """The responder is mid-reply: the failover's re-sends go before the next new chunk."""
    out = Recorder()
    responder = ScriptedResponder()
    engine = TurnEngine(out, responder, TurnConfig(hold_s=3.0), clock=out.clock)
    s = Session("s", slot=0, generation=1, client="ws")
    engine.say(s, "hello", as_user=True)
    for delta in ("First sentence here. ", "Then a second one. ", "And a third. ", "A fourth. "):
        responder.deltas.put_nowait(delta)
    await settle()
    sent = speaks(out)
    assert [m.chunk for m in sent] == [0, 1]  # the chunker and the last-chunk rule hold 2 back
    utt = sent[0].utterance
    engine.on_speak_progress(s, SpeakProgress(session="s", epoch=s.epoch, utterance=utt, chunk=0))
    out.tts.clear()
    out.tts_dies()
    responder.deltas.put_nowait("A fifth. ")  # chunk 2 goes out while no TTS is up
    await settle()
    engine.tts_lost(s)
    await settle()
    assert out.tts == []
    out.tts_up.set()  # a new tts0 process
    responder.deltas.put_nowait(None)
    for _ in range(4):
        await settle()
    again = speaks(out)
    assert [(m.chunk, m.first) for m in again] == [(1, False), (2, False), (3, False), (4, False)]
    assert [m.text for m in again] == [sent[1].text, "And a third.", "A fourth.", "A fifth."]
    assert again[-1].last and not [e for e in out.events if e["type"] == "error"]


async def test_a_reply_still_streaming_at_the_turn_end_is_shown_once_whole() -> None:
    """The LLM is mid-reply when the user's turn is confirmed: the client gets one `reply`
    event, with the whole text, once the reply is complete (not its start, then all of it)."""
    out = Recorder()
    responder = ScriptedResponder()
    engine = TurnEngine(out, responder, TurnConfig(hold_s=3.0), clock=out.clock)
    s = Session("s", slot=0, generation=1, client="ws")
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_pause", 20000))
    req = out.asr[-1]
    engine.on_transcript(
        s, Transcript(session="s", turn=req.turn, text="hi", final=True, end=20000)
    )
    responder.deltas.put_nowait("The start of it. ")
    await settle()
    engine.on_vad(s, vad("speech_end", 20000))  # confirmed while the reply still streams
    await settle()
    assert [e for e in out.events if e["type"] == "reply"] == []
    responder.deltas.put_nowait("And the rest.")
    responder.deltas.put_nowait(None)
    for _ in range(4):
        await settle()
    replies = [e for e in out.events if e["type"] == "reply"]
    assert replies == [{"type": "reply", "text": "The start of it. And the rest."}]


# --- per-turn log line and turn metrics (actors/router/turnlog.py) ----------------------------


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def ended(s: Session, utterance: int, reason: str) -> PlaybackEnded:
    return PlaybackEnded(
        session="s",
        epoch=s.epoch,
        utterance=utterance,
        sent_samples=9600,
        heard_samples=9600,
        reason=reason,
        t=0.0,
    )


def turn_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("turn ")]


async def test_a_remembered_transcript_is_counted_apart_from_the_model_s_time() -> None:
    """voxmesh_asr_seconds is the model's time: a final the ASR answered from memory (~1 ms,
    transcribed ahead of the pause) is counted, not observed."""
    engine, _, s = make()
    model = metric("voxmesh_asr_seconds_count", kind="final")
    model_sum = metric("voxmesh_asr_seconds_sum", kind="final")
    remembered = metric("voxmesh_asr_remembered_total", kind="final")
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_quiet", 19000))
    ahead = Transcript(
        session="s", turn=s.turn, text="hello", final=True, end=19000, elapsed_ms=80.0
    )
    engine.on_transcript(s, ahead)
    engine.on_vad(s, vad("speech_pause", 19000))
    again = Transcript(
        session="s",
        turn=s.turn,
        text="hello",
        final=True,
        end=19000,
        elapsed_ms=1.0,
        remembered=True,
    )
    engine.on_transcript(s, again)
    assert metric("voxmesh_asr_seconds_count", kind="final") == model + 1
    assert metric("voxmesh_asr_seconds_sum", kind="final") == pytest.approx(model_sum + 0.08)
    assert metric("voxmesh_asr_remembered_total", kind="final") == remembered + 1


async def test_a_spoken_turn_logs_one_info_line_with_its_timings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="voxmesh.router.turns")
    engine, out, s = make()
    t0 = out.clock.now()
    out.mic_times[20000] = t0 - 0.1  # the last speech sample reached the ring 100 ms ago
    done = metric("voxmesh_turns_total", source="voice", outcome="done")
    v2v = metric("voxmesh_voice_to_voice_seconds_count", source="voice")
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_pause", 20000))
    engine.on_transcript(
        s,
        Transcript(
            session="s", turn=s.turn, text="hello there", final=True, end=20000, elapsed_ms=70.0
        ),
    )
    await settle()
    engine.on_vad(s, vad("speech_end", 20000))
    await settle()
    utt = speaks(out)[-1].utterance
    frame_at = t0 + 0.25  # the transport's first frame: 350 ms after the end of speech
    engine.on_playback_started(
        s, PlaybackStarted(session="s", epoch=s.epoch, utterance=utt, t=frame_at)
    )
    assert not turn_lines(caplog), "no line before the reply has ended"
    engine.on_playback_ended(s, ended(s, utt, "done"))

    [line] = turn_lines(caplog)
    assert line.levelno == logging.INFO
    fields = line.fields  # type: ignore[attr-defined]
    assert fields == {
        **fields,
        "session": "s",
        "source": "voice",
        "outcome": "done",
        "v2v_ms": 350.0,
        "eot_ms": 100.0,  # released at speech_end, t0
        "asr_ms": 70.0,
        "first_token_ms": 0.0,  # the echo answers at once (and the clock stood still)
        "tts_ms": 250.0,  # SPEAK and release at t0 -> first frame
        "pauses": 0,
        "stops": 0,
        "transcript": "hello there",
        "reply": "hello there",
    }
    text = line.getMessage()
    assert "v2v_ms=350.0 eot_ms=100.0 asr_ms=70.0" in text and 'transcript="hello there"' in text
    # what reads a mesh's log (bench/turns.py) gets the same fields back
    parsed = turnlog.parse_turn_line(f"router[1] INFO voxmesh.router.turns: {text}")
    assert parsed is not None and {**parsed, "event": "turn"} == fields
    assert metric("voxmesh_turns_total", source="voice", outcome="done") == done + 1
    assert metric("voxmesh_voice_to_voice_seconds_count", source="voice") == v2v + 1
    engine.on_playback_ended(s, ended(s, utt, "done"))  # again: still one line
    assert len(turn_lines(caplog)) == 1


def test_a_turn_line_parses_back_whatever_its_text_holds() -> None:
    record = turnlog.TurnRecord("s1", "voice", 'he said "x=1" \\ ok…', started=None)
    fields = record.fields("interrupted", "Yes.")
    line = turnlog.turn_line(fields)
    assert turnlog.parse_turn_line("2026-12-06 router[7] INFO x: " + line) == fields
    assert fields["v2v_ms"] is None and fields["reply"] == "Yes."  # unknown, and unquoted
    assert turnlog.parse_turn_line("session close session=s1 reason=bye") is None


async def test_a_barge_in_counts_a_pause_and_a_stop_on_its_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="voxmesh.router.turns")
    engine, out, s = make(interrupt_ms=30)
    pauses = metric("voxmesh_barge_ins_total", action="pause")
    stops = metric("voxmesh_barge_ins_total", action="stop")
    await speak_turn(engine, out, s, "a long answer")
    utt = speaks(out)[-1].utterance
    engine.on_vad(s, vad("speech_start", 50000))
    out.clock.advance(0.05)  # past interrupt_min_ms, still speaking: an interruption
    assert s.state == State.USER_SPEAKING
    engine.on_playback_ended(s, ended(s, utt, "interrupted"))
    [line] = turn_lines(caplog)
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["outcome"], fields["pauses"], fields["stops"]) == ("interrupted", 1, 1)
    assert fields["v2v_ms"] is None  # the mic ring did not know that sample
    assert metric("voxmesh_barge_ins_total", action="pause") == pauses + 1
    assert metric("voxmesh_barge_ins_total", action="stop") == stops + 1


async def test_a_reply_the_turn_outgrew_logs_nothing_and_a_dropped_one_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="voxmesh.router.turns")
    engine, _, s = make()
    engine.on_vad(s, vad("speech_start", 0))
    engine.on_vad(s, vad("speech_pause", 8000))
    engine.on_transcript(
        s, Transcript(session="s", turn=s.turn, text="hello", final=True, end=8000)
    )
    await settle()
    engine.on_vad(s, vad("speech_resume", 9000))  # speculation under HOLD, never released
    assert not turn_lines(caplog)
    engine.say(s, "typed words", as_user=True)
    await settle()
    engine.interrupt_now(s)  # before any frame played: the reply ends here
    [line] = turn_lines(caplog)
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["source"], fields["outcome"], fields["transcript"]) == (
        "text",
        "interrupted",
        "typed words",
    )


async def test_words_before_the_reply_plays_make_the_whole_turn_replace_its_transcript() -> None:
    """ "Turn off the lights in the kitchen, | please.": the turn ended at the comma and its
    transcript went out, but the user goes on before the reply plays. The client gets the
    whole turn as the one that replaces it, and answers it once."""
    engine, out, s = make()
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_pause", 20000))
    asr_answers(engine, out, s, "Turn off the lights in the kitchen.")
    engine.on_vad(s, vad("speech_end", 20000))
    await settle()
    assert s.state == State.THINKING and len(finals(out)) == 1
    engine.on_vad(s, vad("speech_start", 20000 + 6400))  # before any frame played
    assert any(isinstance(m, Stop) for m in out.tts)
    engine.on_vad(s, vad("speech_pause", 34000))
    req = asr_answers(engine, out, s, "Turn off the lights in the kitchen, please.")
    assert (req.start, req.end) == (1000, 34000)  # the whole turn again
    engine.on_vad(s, vad("speech_end", 34000))
    await settle()
    assert finals(out)[-1] == {
        "type": "transcript",
        "text": "Turn off the lights in the kitchen, please.",
        "final": True,
        "continues": True,
    }
    assert s.history == [{"role": "user", "content": "Turn off the lights in the kitchen, please."}]
    speak = [m for m in out.tts if isinstance(m, Speak) and m.epoch == s.epoch]
    assert " ".join(m.text for m in speak) == "Turn off the lights in the kitchen, please."


async def test_words_before_a_transcript_keep_the_turn_whole_without_replacing_one() -> None:
    engine, out, s = make()
    engine.on_vad(s, vad("speech_start", 1000))
    engine.on_vad(s, vad("speech_end", 20000))  # ended before ASR answered the pause
    assert s.state == State.THINKING and finals(out) == []
    engine.on_vad(s, vad("speech_start", 26400))
    engine.on_vad(s, vad("speech_pause", 34000))
    asr_answers(engine, out, s, "Turn off the lights in the kitchen, please.")
    engine.on_vad(s, vad("speech_end", 34000))
    await settle()
    assert finals(out) == [
        {"type": "transcript", "text": "Turn off the lights in the kitchen, please.", "final": True}
    ]


async def test_a_held_reply_that_raced_its_hold_plays_and_ends_as_any_reply() -> None:
    """The TTS's first frames of the speculative reply reached the transport before its
    HOLD, so PLAYBACK_STARTED came while the user was still talking: that is not the reply
    starting. The one sent after the RELEASE is, and the turn then ends in LISTENING."""
    engine, out, s = make()
    reply = await held_reply(engine, out, s, "Please send me the report by Friday.")
    assert reply.turn is not None
    early = PlaybackStarted(session="s", epoch=s.epoch, utterance=reply.utterance, t=1.0)
    engine.on_playback_started(s, early)
    assert s.state == State.USER_SPEAKING and reply.turn.first_frame_at is None
    engine.on_vad(s, vad("speech_end", 20000))
    assert s.state == State.THINKING and reply.released
    engine.on_playback_started(
        s, PlaybackStarted(session="s", epoch=s.epoch, utterance=reply.utterance, t=2.0)
    )
    assert s.state == State.SPEAKING and reply.turn.first_frame_at == 2.0
    engine.on_playback_ended(
        s,
        PlaybackEnded(
            session="s",
            epoch=s.epoch,
            utterance=reply.utterance,
            sent_samples=4800,
            heard_samples=4800,
            reason="done",
            t=3.0,
        ),
    )
    assert out.states()[-3:] == ["thinking", "speaking", "listening"]
