"""The TTS actor: SPEAK text chunks in, 20 ms 48 kHz frames out through the session rings.

One actor per GPU (the supervisor pins it with ``CUDA_VISIBLE_DEVICES`` in the spec's env)
or one on the CPU. It advertises its models and load in every heartbeat so the router can
send each utterance to an actor that has the voice resident, else the least loaded one.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.protocol import (
    Message,
    ModelInfo,
    ModelList,
    ModelLoad,
    ModelUnload,
    Pause,
    Resume,
    SessionClose,
    Speak,
    Stop,
)
from voxmesh.mesh.remote_ring import RemoteSegment
from voxmesh.mesh.ring import RingSegment
from voxmesh.mesh.settings import TtsSettings
from voxmesh.mesh.spec import ActorSpec, MeshPlace

from .adapters import engine as make_engine
from .adapters import qualified, split_voice
from .models import ModelManager
from .streamer import Streamer

EVICT_INTERVAL_S = 1.0
HOST = socket.gethostname()  # shown by `voxmesh models list` (actors may live elsewhere)


class TtsActor(Actor):
    kind = "tts"

    def __init__(
        self,
        name: str,
        place: MeshPlace,
        settings: TtsSettings | None = None,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        super().__init__(name, place, context=context)
        self.settings = cfg = settings or TtsSettings()
        self.own = own = cfg.own()  # this actor's engine, device and voices
        self.segment_name = place.segment
        # Resolve the engine now: a bad engine name fails at build, not at the first SPEAK.
        self.engine = make_engine(
            own.engine,
            voice=own.voice,
            device=own.device,
            level_dbfs=cfg.level_dbfs,
            steady=cfg.steady,
        )
        self.models = ModelManager(
            self.engine,
            preload=[self.local(v) for v in own.preload],
            resident_max=own.resident_max,
            idle_ttl_s=cfg.idle_ttl_s,
        )
        self.segment: RingSegment | RemoteSegment | None = None
        self.streamer: Streamer | None = None

    async def prepare(self) -> None:
        await self.models.start()  # the default voice and the preload list, warmed up

    async def on_start(self) -> None:
        segment: RingSegment | RemoteSegment
        if self.place.data:  # on a worker host: frames go to the session host's bridge
            segment = RemoteSegment(
                self.context, self.place.data, self.place.curve(), self.counters
            )
            segment.open()
        else:
            segment = RingSegment.attach(self.segment_name)
        self.segment = segment
        self.streamer = Streamer(
            segment,
            self.models,
            send=self.send,
            poll_control=self.poll_control,
            spawn=self.spawn,
            counters=self.counters,
        )
        self.every(EVICT_INTERVAL_S, self._evict_idle)

    async def on_stop(self) -> None:
        try:
            if self.streamer is not None:
                await self.streamer.aclose()
            self.models.close()
        finally:
            if self.segment is not None:
                self.segment.close()
                self.segment = None

    def _evict_idle(self, now: float) -> None:
        evicted = self.models.evict_idle(now)
        if evicted:
            self.counters.bump("models_evicted", len(evicted))

    # --- voices: "engine:voice" on the mesh, the engine's own name inside ------------------

    def qualified(self, voice: str) -> str:
        return qualified(self.engine.name, voice)

    def local(self, voice: str) -> str:
        """``voice`` without our engine's prefix ("" stays "": the default voice); another
        engine's voice stays whole."""
        owner, bare = split_voice(voice)
        return bare if owner == self.engine.name else voice

    def handle(self, msg: Message) -> None:
        streamer = self.streamer
        assert streamer is not None  # links open only after on_start
        if isinstance(msg, Speak):
            if isinstance(self.segment, RemoteSegment):
                self.segment.note(msg.slot, msg.generation, msg.session)
            streamer.speak(dataclasses.replace(msg, voice=self.local(msg.voice)), time.monotonic())
        elif isinstance(msg, Pause):
            streamer.pause(msg)
        elif isinstance(msg, Resume):
            streamer.resume(msg)
        elif isinstance(msg, Stop):
            streamer.stop(msg)
        elif isinstance(msg, SessionClose):
            streamer.close(msg.session)
        else:
            self._serve_models(msg, self.send)

    def handle_supervisor(self, msg: Message) -> None:
        """``voxmesh models load/unload`` reach us through the supervisor."""
        link = self.links.get("supervisor")
        self._serve_models(msg, link.send if link is not None else lambda m: False)

    def _serve_models(self, msg: Message, reply: Callable[[Message], bool]) -> None:
        if isinstance(msg, ModelLoad):
            self.spawn(self._load(self.local(msg.model), reply))
        elif isinstance(msg, ModelUnload):
            voice = self.local(msg.model)
            ok = self.models.unload(voice)
            reply(self._model_info("" if ok else f"voice {msg.model!r} is not resident"))
        elif isinstance(msg, ModelList):
            reply(self._model_info())
        else:
            self.counters.bump("unhandled")

    async def _load(self, voice: str, reply: Callable[[Message], bool]) -> None:
        if split_voice(voice)[0]:  # still qualified after local(): another engine's voice
            reply(self._model_info(f"{self.name} runs {self.engine.name}, not {voice!r}"))
            return
        try:
            await self.models.load(voice)
        except Exception as exc:  # reported to the asker; the actor serves on
            self.counters.bump("model_load_errors")
            reply(self._model_info(f"cannot load {voice!r}: {type(exc).__name__}: {exc}"))
        else:
            reply(self._model_info())

    def _model_info(self, error: str = "") -> ModelInfo:
        return ModelInfo(
            available=[self.qualified(v) for v in self.models.available()],
            resident=[self.qualified(v) for v in self.models.resident()],
            error=error,
            actor=self.name,
        )

    def first_frame_ms(self) -> dict[str, float]:
        """Median and p95 of SPEAK received -> first frame in the ring (recent utterances)."""
        if self.streamer is None or not self.streamer.first_frame_s:
            return {}
        ms = np.array(self.streamer.first_frame_s) * 1000
        return {"p50": float(np.median(ms)), "p95": float(np.percentile(ms, 95))}

    def info(self) -> dict[str, Any]:
        streamer = self.streamer
        return {
            "engine": self.engine.name,
            "device": self.own.device,
            "provider": self.engine.provider(),
            "host": HOST,
            "voices": [self.qualified(v) for v in self.models.available()],
            "resident": [self.qualified(v) for v in self.models.resident()],
            "default": self.qualified(self.models.default),
            "load": streamer.load() if streamer else 0,
            "sessions": len(streamer.sessions) if streamer else 0,
            "first_frame_ms": self.first_frame_ms(),
            "remote": bool(self.place.data),
            "counters": dict(self.counters),
        }


def build(spec: ActorSpec) -> TtsActor:
    """The TTS actor of a supervisor-started process, from its ``[tts]`` settings."""
    for key, value in spec.env.items():  # GPU pinning; the supervisor may have set it already
        os.environ.setdefault(key, value)
    return TtsActor(spec.name, spec.place, spec.section(TtsSettings))
