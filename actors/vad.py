"""The VAD actor: Silero over every session's mic ring, speech events to the router.

It also owns the end of a turn: with ``vad.turn_model = "smart-turn"`` each pause is judged
by Smart Turn (speech/smart_turn.py) on a worker thread, and the segmenter ends the turn
after a short silence when it hears a finished turn, or waits longer when it does not.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zmq

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.protocol import Message, SessionClose, SessionOpen, TurnWords, VadEvent
from voxmesh.mesh.ring import MIC_FRAME_SAMPLES, MIC_VAD, RingSegment
from voxmesh.mesh.settings import VadSettings
from voxmesh.mesh.sockets import log
from voxmesh.mesh.spec import ActorSpec, MeshPlace
from voxmesh.speech.smart_turn import COMPLETE_ABOVE, SmartTurn
from voxmesh.speech.vad import SileroVad, SpeechSegmenter, StreamingVad, TurnCheck

from .micreader import Idle, MicSession, check_slot


class VadActor(Actor):
    kind = "vad"

    def __init__(
        self,
        name: str,
        place: MeshPlace,
        settings: VadSettings | None = None,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        super().__init__(name, place, context=context)
        self.settings = settings or VadSettings()
        self.segment_name = place.segment
        self.model_path = self.settings.model or None
        self.sessions: dict[str, tuple[MicSession, StreamingVad]] = {}
        self.idle = Idle()
        self.vad: SileroVad | None = None
        self.turn: SmartTurn | None = None
        # One thread for every session's checks: the model takes a core for ~60-150 ms on
        # this 2-core box, and a second one at once would only slow both.
        self.pool: ThreadPoolExecutor | None = None
        self.turn_checks = 0
        self.turn_s = 0.0
        self.segment: RingSegment | None = None

    async def prepare(self) -> None:
        log.info("%s: loading Silero VAD", self.name)
        self.vad = SileroVad(self.model_path)
        if self.settings.turn_model == "smart-turn":
            self.turn = SmartTurn(self.settings.turn_model_path or None)
            self.pool = smart_turn_pool()
            # The first run of an ONNX session is slow (allocations): not in a user's turn.
            self.turn.probability(np.zeros(16000, np.int16))

    async def on_start(self) -> None:
        self.segment = RingSegment.attach(self.segment_name)
        self.idle.bell = self.segment.doorbell()
        self.spawn(self._read_loop())

    async def on_stop(self) -> None:
        self.sessions.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.segment is not None:
            self.segment.close()

    def info(self) -> dict[str, Any]:
        lost = sum(mic.reader.lost for mic, _ in self.sessions.values())
        mean_ms = 1000 * self.turn_s / self.turn_checks if self.turn_checks else 0.0
        return {
            "sessions": len(self.sessions),
            "lost_frames": lost,
            "turn_checks": self.turn_checks,
            "turn_check_ms": round(mean_ms, 1),
        }

    def handle(self, msg: Message) -> None:
        if isinstance(msg, SessionOpen):
            assert self.segment is not None and self.vad is not None
            if not check_slot(self.segment, msg.slot):
                self.counters.bump("bad_slot")
                return
            known = self.sessions.get(msg.session)
            if known is not None and known[0].generation == msg.generation:
                return  # announced again (the router restarted): keep reading where we are
            mic = MicSession.open(
                self.segment, msg.session, msg.slot, msg.generation, from_start=not msg.resume
            )
            if not mic.stale:
                seg = segmenter(self.settings, turn_model=self.turn is not None)
                stream = StreamingVad(self.vad, seg, quiet_ms=self.settings.quiet_ms)
                self.sessions[msg.session] = (mic, stream)
                self.idle.opened()
        elif isinstance(msg, SessionClose):
            self.sessions.pop(msg.session, None)
        elif isinstance(msg, TurnWords):
            known = self.sessions.get(msg.session)
            if known is not None:
                self._send(msg.session, known[1].words(msg.sample, msg.mid_sentence))
        else:
            self.counters.bump("unexpected")

    async def _read_loop(self) -> None:
        while True:
            await self.idle.until_any(self.sessions)
            for sid, (mic, stream) in list(self.sessions.items()):
                if mic.stale:
                    del self.sessions[sid]
                    continue
                for start, pcm in mic.frames():
                    self._send(sid, stream.push(pcm, start))
                due = stream.turn_check()
                if due is not None:
                    self.spawn(self._check(sid, stream, *due))
            await self.idle.until_frames(MIC_VAD, self._frames_wanted())

    def _send(self, sid: str, events: list[Any]) -> None:
        for ev in events:
            log.debug("%s: %s %s at %d", self.name, sid, ev.kind, ev.sample)
            self.send(VadEvent(session=sid, kind=ev.kind, sample=ev.sample, t=time.monotonic()))

    async def _check(
        self, sid: str, stream: StreamingVad, check: TurnCheck, audio: np.ndarray
    ) -> None:
        """Smart Turn on the worker thread; its verdict may end the turn at once."""
        assert self.turn is not None and self.pool is not None
        began = time.perf_counter()
        complete: bool | None = None
        try:
            p = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.turn.probability, audio
            )
            complete = p > COMPLETE_ABOVE
            self.turn_checks += 1
            self.turn_s += time.perf_counter() - began
            log.debug("%s: %s turn check at %d: p=%.3f", self.name, sid, check.end, p)
        except Exception:
            self.counters.bump("turn_model_failed")  # the max silence ends the turn instead
            log.exception("%s: turn model failed", self.name)
        known = self.sessions.get(sid)
        if known is not None and known[1] is stream:
            self._send(sid, stream.verdict(check.token, complete))

    def _frames_wanted(self) -> list[tuple[MicSession, int]]:
        """Per session, the frames that complete its next model chunk: no event comes sooner."""
        return [
            (mic, math.ceil(stream.wanted / MIC_FRAME_SAMPLES))
            for mic, stream in self.sessions.values()
        ]


# How much nicer than the actor its thread runs: Smart Turn's verdict is wanted only by
# complete_silence_ms after the pause, while the turn's ASR and Piper's first chunk are the
# path the reply waits on (docs/turn-taking.md has the A/B).
SMART_TURN_NICE = 10


def smart_turn_pool() -> ThreadPoolExecutor:
    """The one thread Smart Turn runs in, at a lower priority than the reply's work."""
    return ThreadPoolExecutor(1, thread_name_prefix="smart-turn", initializer=_yield_to_the_reply)


def _yield_to_the_reply() -> None:
    # On Linux a thread's id is a PRIO_PROCESS target: this thread alone gets the nice value.
    me = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + SMART_TURN_NICE)
        )
    except OSError as exc:  # raising one's own nice value is always allowed; say if not
        log.warning("smart-turn thread keeps its priority: %s", exc)


def segmenter(settings: VadSettings, *, turn_model: bool = False) -> SpeechSegmenter:
    """The turn decisions ``[vad]`` asks for (the bench's baselines use it too); with
    ``turn_model`` the caller runs the checks it asks for (VadActor._check)."""
    return SpeechSegmenter(
        threshold=settings.threshold,
        min_speech_ms=settings.min_speech_ms,
        min_silence_ms=settings.min_silence_ms,
        speech_pad_ms=settings.speech_pad_ms,
        pre_roll_ms=settings.pre_roll_ms,
        turn_model=turn_model,
        complete_silence_ms=settings.complete_silence_ms,
        words_silence_ms=settings.words_silence_ms,
        max_silence_ms=settings.max_silence_ms,
    )


def build(spec: ActorSpec) -> VadActor:
    return VadActor(spec.name, spec.place, spec.section(VadSettings))
