"""What the VAD and ASR actors share: one mic-ring reader per session, stopped on reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

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
    """Lets a mic-reading loop sleep while there is no session at all: an idle mesh polls
    no ring."""

    def __init__(self) -> None:
        self._opened = asyncio.Event()

    def opened(self) -> None:
        self._opened.set()

    async def until_any(self, sessions: Mapping[str, object]) -> None:
        while not sessions:
            self._opened.clear()
            await self._opened.wait()


def check_slot(segment: RingSegment, slot: int) -> bool:
    return 0 <= slot < len(segment.slots)
