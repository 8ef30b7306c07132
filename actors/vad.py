"""The VAD actor: Silero over every session's mic ring, speech events to the router."""

from __future__ import annotations

import math
import time
from typing import Any

import zmq

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.protocol import Message, SessionClose, SessionOpen, VadEvent
from voxmesh.mesh.ring import MIC_FRAME_SAMPLES, MIC_VAD, RingSegment
from voxmesh.mesh.settings import VadSettings
from voxmesh.mesh.sockets import log
from voxmesh.mesh.spec import ActorSpec, MeshPlace
from voxmesh.speech.vad import SileroVad, SpeechSegmenter, StreamingVad

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
        self.segment: RingSegment | None = None

    async def prepare(self) -> None:
        log.info("%s: loading Silero VAD", self.name)
        self.vad = SileroVad(self.model_path)

    async def on_start(self) -> None:
        self.segment = RingSegment.attach(self.segment_name)
        self.idle.bell = self.segment.doorbell()
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
                stream = StreamingVad(self.vad, segmenter(self.settings))
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
            await self.idle.until_frames(MIC_VAD, self._frames_wanted())

    def _frames_wanted(self) -> list[tuple[MicSession, int]]:
        """Per session, the frames that complete its next model chunk: no event comes sooner."""
        return [
            (mic, math.ceil(stream.wanted / MIC_FRAME_SAMPLES))
            for mic, stream in self.sessions.values()
        ]


def segmenter(settings: VadSettings) -> SpeechSegmenter:
    """The turn decisions ``[vad]`` asks for (the bench's baselines use it too)."""
    return SpeechSegmenter(
        threshold=settings.threshold,
        min_speech_ms=settings.min_speech_ms,
        min_silence_ms=settings.min_silence_ms,
        speech_pad_ms=settings.speech_pad_ms,
    )


def build(spec: ActorSpec) -> VadActor:
    return VadActor(spec.name, spec.place, spec.section(VadSettings))
