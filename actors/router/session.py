"""One conversation's state as the router sees it."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

from voxmesh.mesh.clock import Timer
from voxmesh.mesh.protocol import AsrRequest, Speak

from .turnlog import TurnRecord


class State(enum.StrEnum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"
    PAUSED = "paused"


@dataclass
class Reply:
    """One bot utterance: its text as sent to TTS and what became of it."""

    utterance: int
    text: str = ""
    voice: str = ""  # the session's voice when the utterance began (a switch waits for the next)
    complete: bool = False  # every chunk has been sent to TTS
    samples: int = 0  # total 48 kHz samples, known at SPEAK_DONE
    released: bool = False  # frames may go out (False while pre-generated under HOLD)
    sent: list[Speak] = field(default_factory=list)  # every chunk sent to TTS, in order
    sent_to: list[str] = field(default_factory=list)  # the TTS process each went to last
    chunks_done: int = 0  # chunks wholly in the out ring (SPEAK_PROGRESS)
    synthesized: bool = False  # SPEAK_DONE came: every frame is in the ring
    adopted: bool = False  # learnt from the transport after a router restart (text unknown)
    retracted: bool = False  # its turn went on (router.continue_ms): not part of the history
    turn: TurnRecord | None = None  # its timings, for the turn's log line (None: adopted)
    # One sender at a time: a failover re-sending chunks must not interleave with new ones.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Session:
    id: str
    slot: int
    generation: int
    client: str
    state: State = State.LISTENING
    epoch: int = 0
    turn: int = 0  # bumps per user turn; stale transcripts carry an older one
    turn_start: int = 0  # mic sample where the user's current turn began
    vad_speaking: bool = False  # the VAD's latest word: speech (start/resume) or not
    pending_end: int | None = None  # sample of a tentative end (speech_pause) being transcribed
    turn_end: int | None = None  # confirmed end (speech_end)
    continues: bool = False  # this turn is the last one gone on with (router.continue_ms)
    # The user's last speech a continuation's router.continue_ms counts from: the turn's end,
    # or the end of a burst over the reply within that window that was not words yet.
    window_from: int | None = None
    transcripts: dict[int, str] = field(default_factory=dict)  # end sample -> final text
    asr_s: dict[int, float] = field(default_factory=dict)  # end sample -> its ASR time
    tts: str | None = None  # TTS actor serving this session (sticky)
    voice: str = ""  # engine:voice for the next utterance ("" the mesh's default)
    utterances: int = 0
    reply: Reply | None = None
    cut_reply: Reply | None = None  # stopped, awaiting its PLAYBACK_ENDED (what was heard)
    reply_task: asyncio.Task[None] | None = None
    failover_task: asyncio.Task[None] | None = None  # re-sending a reply after a TTS died
    final_request: AsrRequest | None = None  # the final transcript asked for, not yet in
    onset_sample: int = 0  # where a barge-in began
    confirm_timer: Timer | None = None  # the engine's clock's call_later
    confirm_due: bool = False  # the interruption timer ran out during a speech pause
    burst_end: int | None = None  # a barge-in burst ended here: resume unless ASR hears words
    burst_over: bool = False  # ...and the VAD has ended that speech (speech_end, not a pause)
    backchannel: bool = False  # ASR heard no floor-taking words in the burst ("okay", "mm")
    awaiting_more: bool = False  # tentative words at its silence: the lone-word wait decides
    resume_timer: Timer | None = None  # heard as nothing: the reply resumes when it runs out
    onset_at: float = 0.0  # the engine clock at the barge-in's onset
    partial_ms: int = 0  # the client's partial transcripts: at most every N ms, 0 none
    partial_inflight_since: float = 0.0
    last_partial_at: float = 0.0  # partials go out at most every partial_interval_ms
    last_progress: float = 0.0  # watchdog: last sign of frames flowing
    progress_mark: tuple[int, int] = (0, 0)  # (out head, out tail) at last_progress
    history: list[dict[str, str]] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)

    def cancel_timer(self) -> None:
        if self.confirm_timer is not None:
            self.confirm_timer.cancel()
            self.confirm_timer = None
        if self.resume_timer is not None:
            self.resume_timer.cancel()
            self.resume_timer = None
        self.confirm_due = False
        self.burst_end = None
        self.burst_over = False
        self.backchannel = False
        self.awaiting_more = False
