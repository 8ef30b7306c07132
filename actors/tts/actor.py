"""The TTS actor: SPEAK text chunks in, 20 ms 48 kHz frames out through the session rings.

One actor per GPU (the supervisor pins it with ``CUDA_VISIBLE_DEVICES`` in the spec's env)
or one on the CPU. It advertises its models and load in every heartbeat so the router can
send each utterance to an actor that has the voice resident, else the least loaded one.
"""

from __future__ import annotations

import os
import time
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
from voxmesh.mesh.ring import RingSegment
from voxmesh.mesh.settings import TtsSettings
from voxmesh.mesh.spec import ActorSpec, MeshPlace

from .adapters import engine as make_engine
from .models import ModelManager
from .streamer import Streamer

EVICT_INTERVAL_S = 1.0


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
        self.segment_name = place.segment
        # Resolve the engine now: a bad engine name fails at build, not at the first SPEAK.
        self.engine = make_engine(cfg.engine, {"voice": cfg.voice})
        self.models = ModelManager(
            self.engine,
            preload=cfg.preload,
            resident_max=cfg.resident_max,
            idle_ttl_s=cfg.idle_ttl_s,
        )
        self.segment: RingSegment | None = None
        self.streamer: Streamer | None = None

    async def prepare(self) -> None:
        await self.models.start()  # the default voice and the preload list, warmed up

    async def on_start(self) -> None:
        self.segment = RingSegment.attach(self.segment_name)
        self.streamer = Streamer(
            self.segment,
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

    def handle(self, msg: Message) -> None:
        streamer = self.streamer
        assert streamer is not None  # links open only after on_start
        if isinstance(msg, Speak):
            streamer.speak(msg, time.monotonic())
        elif isinstance(msg, Pause):
            streamer.pause(msg)
        elif isinstance(msg, Resume):
            streamer.resume(msg)
        elif isinstance(msg, Stop):
            streamer.stop(msg)
        elif isinstance(msg, SessionClose):
            streamer.close(msg.session)
        elif isinstance(msg, ModelLoad):
            self.spawn(self._load(msg.model))
        elif isinstance(msg, ModelUnload):
            ok = self.models.unload(msg.model)
            self._model_info("" if ok else f"model {msg.model!r} is not resident")
        elif isinstance(msg, ModelList):
            self._model_info()
        else:
            self.counters.bump("unhandled")

    async def _load(self, model: str) -> None:
        try:
            await self.models.load(model)
        except Exception as exc:  # reported to the asker; the actor serves on
            self.counters.bump("model_load_errors")
            self._model_info(f"cannot load {model!r}: {type(exc).__name__}: {exc}")
        else:
            self._model_info()

    def _model_info(self, error: str = "") -> None:
        self.send(
            ModelInfo(
                available=self.models.available(), resident=self.models.resident(), error=error
            )
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
            "models": self.models.available(),
            "resident": self.models.resident(),
            "default": self.models.default,
            "load": streamer.load() if streamer else 0,
            "sessions": len(streamer.sessions) if streamer else 0,
            "first_frame_ms": self.first_frame_ms(),
            "counters": dict(self.counters),
        }


def build(spec: ActorSpec) -> TtsActor:
    """The TTS actor of a supervisor-started process, from its ``[tts]`` settings."""
    for key, value in spec.env.items():  # GPU pinning; the supervisor may have set it already
        os.environ.setdefault(key, value)
    return TtsActor(spec.name, spec.place, spec.section(TtsSettings))
