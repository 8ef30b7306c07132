"""What the VAD and ASR actors share: one mic-ring reader per session, stopped on reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from voxmesh.mesh.doorbell import Doorbell
from voxmesh.mesh.ring import MIC_FRAME_SAMPLES, MicReader, RingSegment, Slot


@dataclass
class MicSession:
    """A session's mic stream as one reader sees it: 16 kHz frames with absolute positions."""

    id: str
    slot: Slot
    generation: int
    reader: MicReader

    @classmethod
    def open(
        cls, segment: RingSegment, session: str, slot: int, generation: int, *, from_start: bool
    ) -> MicSession:
        """A reader from the ring's oldest frame (``from_start``) or from its head: an actor
        that restarts mid-session must not take audio it has judged before for new speech."""
        ring_slot = segment.slots[slot]
        return cls(session, ring_slot, generation, MicReader(ring_slot.mic, from_start=from_start))

    @property
    def stale(self) -> bool:
        """The slot was released and claimed by someone else: stop reading it."""
        return self.slot.generation != self.generation

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(absolute first sample, int16 samples) for every frame written since last call."""
        while (frame := self.reader.read()) is not None:
            yield frame.seq * MIC_FRAME_SAMPLES, np.frombuffer(frame.data, dtype=np.int16)


class Idle:
    """How a mic-reading loop sleeps: with no session, until one opens (an idle mesh looks
    at no ring); else until a ring it reads has the frames it asked for (the transport's
    write rings ``bell``), a session opens, or the doorbell's safety timer fires."""

    def __init__(self) -> None:
        self.bell: Doorbell | None = None  # the actor's, once on_start attached the segment
        self._opened = asyncio.Event()

    def opened(self) -> None:
        self._opened.set()
        if self.bell is not None:
            self.bell.wake()  # the loop has a new ring to arm

    async def until_frames(self, entry: int, wants: Iterable[tuple[MicSession, int]]) -> None:
        """Sleep until some session's ring holds ``n`` frames its reader has not taken, for
        each (session, n) in ``wants``; ``entry`` is our waiter entry (ring.MIC_VAD...)."""
        assert self.bell is not None
        for mic, frames in wants:
            if mic.slot.mic.arm(entry, self.bell, mic.reader.cursor + frames):
                return  # already there
        await self.bell.wait()

    async def until_any(self, sessions: Mapping[str, object]) -> None:
        while not sessions:
            self._opened.clear()
            await self._opened.wait()


def check_slot(segment: RingSegment, slot: int) -> bool:
    return 0 <= slot < len(segment.slots)
