"""The VAD actor: Silero over every session's mic ring, speech events to the router."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.protocol import Message, SessionClose, SessionOpen, VadEvent
from voxmesh.mesh.ring import RingSegment
from voxmesh.mesh.sockets import log
from voxmesh.speech.vad import SileroVad, SpeechSegmenter, StreamingVad
from voxmesh.supervisor.spec import ActorSpec

from .micreader import Idle, MicSession, check_slot

POLL_S = 0.008  # a 32 ms model chunk is seen within ~8 ms of its last frame


class VadActor(Actor):
    kind = "vad"

    def __init__(
        self,
        name: str = "vad",
        *,
        router: str,
        supervisor: str | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        segment: str,
        model: str = "",
        threshold: float = 0.5,
        min_speech_ms: int = 64,
        min_silence_ms: int = 250,
        speech_pad_ms: int = 30,
        heartbeat_s: float = 0.5,
        liveness: int = 3,
        secret: str | None = None,
    ) -> None:
        super().__init__(
            name,
            router=router,
            supervisor=supervisor,
            context=context,
            heartbeat_s=heartbeat_s,
            liveness=liveness,
            secret=secret,
        )
        self.segment_name = segment
        self.model_path = model or None
        self.segmenter_args: dict[str, Any] = dict(
            threshold=threshold,
            min_speech_ms=min_speech_ms,
            min_silence_ms=min_silence_ms,
            speech_pad_ms=speech_pad_ms,
        )
        self.sessions: dict[str, tuple[MicSession, StreamingVad]] = {}
        self.idle = Idle()
        self.vad: SileroVad | None = None
        self.segment: RingSegment | None = None

    async def prepare(self) -> None:
        log.info("%s: loading Silero VAD", self.name)
        self.vad = SileroVad(self.model_path)

    async def on_start(self) -> None:
        self.segment = RingSegment.attach(self.segment_name)
        self.spawn(self._read_loop())

    async def on_stop(self) -> None:
        self.sessions.clear()
        if self.segment is not None:
            self.segment.close()

    def info(self) -> dict[str, Any]:
        lost = sum(mic.reader.lost for mic, _ in self.sessions.values())
        return {"sessions": len(self.sessions), "lost_frames": lost}

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
                stream = StreamingVad(self.vad, SpeechSegmenter(**self.segmenter_args))
                self.sessions[msg.session] = (mic, stream)
                self.idle.opened()
        elif isinstance(msg, SessionClose):
            self.sessions.pop(msg.session, None)
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
                    for ev in stream.push(pcm, start):
                        self.send(
                            VadEvent(
                                session=sid, kind=ev.kind, sample=ev.sample, t=time.monotonic()
                            )
                        )
            await asyncio.sleep(POLL_S)


def build(spec: ActorSpec) -> VadActor:
    cfg = spec.section("vad")
    return VadActor(
        spec.name,
        **spec.mesh_args(),
        model=str(cfg.get("model", "")),
        threshold=float(cfg.get("threshold", 0.5)),
        min_speech_ms=int(cfg.get("min_speech_ms", 64)),
        min_silence_ms=int(cfg.get("min_silence_ms", 250)),
        speech_pad_ms=int(cfg.get("speech_pad_ms", 30)),
    )
