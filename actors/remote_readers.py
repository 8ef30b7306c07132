"""VAD and ASR on a worker host: the actors of actors/vad.py and actors/asr.py, unchanged,
on a ring of their own that the session host's bridge fills (mesh/remote_mic.py).

``voxmesh worker vad|asr`` builds these (supervisor/worker.py). Each SESSION_OPEN from the
router first makes the feed subscribe to that session's mic and take a local slot; the
actor then reads that slot as it would read the session host's. What differs:
- the ASR may be asked for audio that is still on its way (the request came on the control
  link, the frames on the data socket), so a request waits here until the ring holds its
  end, ``MIC_WAIT_S`` at most (what has not come by then is silence to it), the newest per
  session and kind as the ASR itself keeps them;
- heartbeats say ``host`` and ``remote``, so `voxmesh status` shows where it runs.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Literal, cast

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.protocol import AsrRequest, Message, SessionClose, SessionOpen
from voxmesh.mesh.remote_mic import MicFeed
from voxmesh.mesh.ring import Geometry
from voxmesh.mesh.settings import AsrSettings, MeshSettings, VadSettings
from voxmesh.mesh.spec import ActorSpec

from .asr import AsrActor
from .vad import VadActor

HOST = socket.gethostname()
MIC_WAIT_S = 1.0  # an ASR request waits this long at most for its audio to arrive


class RemoteReader(Actor):
    """What a mic reader on a worker host adds to its actor class (first in the bases)."""

    segment_name: str
    mic_geometry = Geometry(MeshSettings.max_sessions, MeshSettings.mic_ring_frames, 1)
    feed: MicFeed | None = None

    async def on_start(self) -> None:
        assert self.place.data, "a remote reader needs the bridge's endpoint"
        feed = MicFeed(
            self.context,
            self.place.data,
            self.place.curve(),
            self.counters,
            kind=cast(Literal["vad", "asr"], self.kind),
            geometry=self.mic_geometry,
            on_frames=self.on_mic,
        )
        self.feed = feed
        self.segment_name = feed.segment.name  # the actor attaches our ring, not a host's
        feed.open()
        await super().on_start()

    async def on_stop(self) -> None:
        try:
            await super().on_stop()
        finally:
            if self.feed is not None:
                self.feed.close()
                self.feed = None

    def handle(self, msg: Message) -> None:
        assert self.feed is not None
        if isinstance(msg, SessionOpen):
            local = self.feed.subscribe(msg)
            if local is not None:
                super().handle(local)
            return
        if isinstance(msg, SessionClose):
            self.feed.unsubscribe(msg.session)
        super().handle(msg)

    def on_mic(self, session: str) -> None:
        """Frames of ``session`` are in our ring."""

    def info(self) -> dict[str, Any]:
        mic = self.feed.info() if self.feed is not None else {}
        return {**super().info(), **mic, "host": HOST, "remote": True}


class RemoteVadActor(RemoteReader, VadActor):
    pass


class RemoteAsrActor(RemoteReader, AsrActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (final, session) -> the request waiting for its audio, and its deadline
        self.parked: dict[tuple[bool, str], tuple[AsrRequest, asyncio.TimerHandle]] = {}

    def handle(self, msg: Message) -> None:
        assert self.feed is not None
        if isinstance(msg, AsrRequest) and self.feed.covered(msg.session) < msg.end:
            key = (msg.final, msg.session)
            self._cancel(key)  # one waiting is overtaken, as the ASR's own queue would have it
            later = asyncio.get_running_loop().call_later(MIC_WAIT_S, self._release, key, True)
            self.parked[key] = (msg, later)
            return
        if isinstance(msg, SessionClose):
            for final in (True, False):
                self._cancel((final, msg.session))
        super().handle(msg)

    def on_mic(self, session: str) -> None:
        assert self.feed is not None
        for final in (True, False):
            entry = self.parked.get((final, session))
            if entry is not None and self.feed.covered(session) >= entry[0].end:
                self._release((final, session), False)

    def _release(self, key: tuple[bool, str], late: bool) -> None:
        entry = self._cancel(key)
        if entry is not None:
            if late:
                self.counters.bump("asr_audio_late")  # what has not come is silence
            super().handle(entry)

    def _cancel(self, key: tuple[bool, str]) -> AsrRequest | None:
        entry = self.parked.pop(key, None)
        if entry is None:
            return None
        entry[1].cancel()
        return entry[0]

    async def on_stop(self) -> None:
        for key in list(self.parked):
            self._cancel(key)
        await super().on_stop()


def _geometry(spec: ActorSpec) -> Geometry:
    mesh = spec.section(MeshSettings)
    return Geometry(mesh.max_sessions, mesh.mic_ring_frames, 1)


def build_vad(spec: ActorSpec) -> RemoteVadActor:
    actor = RemoteVadActor(spec.name, spec.place, spec.section(VadSettings))
    actor.mic_geometry = _geometry(spec)
    return actor


def build_asr(spec: ActorSpec) -> RemoteAsrActor:
    actor = RemoteAsrActor(spec.name, spec.place, spec.section(AsrSettings))
    actor.mic_geometry = _geometry(spec)
    return actor
