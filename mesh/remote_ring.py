"""Out rings on another host: what a remote TTS actor writes its frames to.

Rings stay host-local (docs/protocol.md section 5). A TTS actor on a worker host has no
ring segment; ``RemoteSegment`` stands in for one. Each frame the streamer "writes" goes
out as a FRAME on a DEALER data socket (CURVE) to the session host's bridge
(actors/bridge.py), which puts it in that session's real out ring. Space is credit: the
writer may send the frames of a (slot, generation) below the last CREDIT's ``granted``
(``INITIAL_CREDIT`` before one), and waits on a ``Bell`` for the next CREDIT otherwise, so
the streamer's own "wait while the ring is full" works unchanged across the hop.

The generation of a slot is the one the router put in the SPEAK (``note``): the bridge drops
frames of a generation the slot no longer has, and a new generation starts a fresh count.
When the data connection is lost (the bridge restarted, say) the socket is replaced
(mesh/datasock.py) and every stream starts again from seq 0 with the initial credit: the
new bridge knows nothing of the credit the old one gave, and a writer that had used all of
it would otherwise wait for a CREDIT that never comes.
"""

from __future__ import annotations

import zmq

from . import curve
from .datasock import DataSocket
from .doorbell import Bell
from .protocol import INITIAL_CREDIT, Credit, Frame, Message
from .sockets import Counters

NOMINAL_CAPACITY = 250  # frames; the bridge's CREDIT says the real ring's size


class RemoteOutRing:
    """One slot's out ring as the writer sees it: sent frames (``head``) against credit."""

    def __init__(self, segment: RemoteSegment, slot: int, generation: int, session: str) -> None:
        self._segment = segment
        self.slot = slot
        self.generation = generation
        self.session = session
        self.head = 0  # frames sent (the next FRAME's seq)
        self.granted = INITIAL_CREDIT
        self.capacity = NOMINAL_CAPACITY
        self._target: int | None = None  # an armed wait: wake when tail reaches it

    @property
    def tail(self) -> int:
        """Where the reader would be if the ring were ours: head - tail = credit used."""
        return self.granted - self.capacity

    def free(self) -> int:
        return max(0, self.granted - self.head)

    def arm(self, entry: int, bell: Bell, target: int) -> bool:
        """Wake the segment's bell once ``tail`` reaches ``target``; True if it has."""
        if self.tail >= target:
            return True
        self._target = target
        return False

    def write(self, payload: bytes, *, epoch: int = 0, utterance: int = 0, flags: int = 0) -> int:
        seq = self.head
        self._segment.send(
            Frame(
                session=self.session,
                slot=self.slot,
                generation=self.generation,
                epoch=epoch,
                utterance=utterance,
                flags=flags,
                seq=seq,
                pcm=bytes(payload),
            )
        )
        self.head = seq + 1
        return seq

    def restart(self) -> None:
        """A fresh connection: count from 0 again, on the initial credit."""
        self.head = 0
        self.granted = INITIAL_CREDIT
        self._target = None

    def credit(self, msg: Credit) -> None:
        if msg.capacity > 0:
            self.capacity = msg.capacity
        self.granted = max(self.granted, msg.granted)
        if self._target is not None and self.tail >= self._target:
            self._target = None
            self._segment.bell.wake()


class RemoteSlot:
    def __init__(self, segment: RemoteSegment, index: int) -> None:
        self._segment = segment
        self.index = index
        self.out = RemoteOutRing(segment, index, 0, "")

    @property
    def generation(self) -> int:
        return self.out.generation

    def note(self, generation: int, session: str) -> None:
        """A SPEAK for this slot: a new generation (a new session) starts a fresh count."""
        if generation != self.out.generation or session != self.out.session:
            self.out = RemoteOutRing(self._segment, self.index, generation, session)


class _Slots:
    """Slots by index, made when first used (the session host's slot count is not ours to
    know; the bridge refuses an index its segment does not have)."""

    MAX = 1 << 16

    def __init__(self, segment: RemoteSegment) -> None:
        self._segment = segment
        self._slots: dict[int, RemoteSlot] = {}

    def __len__(self) -> int:
        return self.MAX

    def __getitem__(self, index: int) -> RemoteSlot:
        slot = self._slots.get(index)
        if slot is None:
            if not 0 <= index < self.MAX:
                raise IndexError(index)
            slot = self._slots[index] = RemoteSlot(self._segment, index)
        return slot

    def values(self) -> list[RemoteSlot]:
        return list(self._slots.values())


class RemoteSegment:
    """The worker's stand-in for a ring segment; call ``open()`` in the actor's loop."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        keys: curve.ClientKeys | None,
        counters: Counters,
    ) -> None:
        self.endpoint = endpoint
        self.counters = counters
        self.slots = _Slots(self)
        self.bell = Bell()
        self._data = DataSocket(context, endpoint, keys, counters, self._on_message, self._restart)

    @property
    def sent_bytes(self) -> int:
        """FRAME bytes handed to the data socket (bench: bytes/s)."""
        return self._data.sent_bytes

    def open(self) -> None:
        self._data.open()

    def doorbell(self) -> Bell:
        return self.bell

    def note(self, slot: int, generation: int, session: str) -> None:
        self.slots[slot].note(generation, session)

    def send(self, msg: Frame) -> None:
        if not self._data.send(msg):
            self.counters.bump("frames_dropped")

    def _restart(self) -> None:
        for slot in self.slots.values():
            slot.out.restart()
        self.bell.wake()  # a writer waiting for credit has some again

    def _on_message(self, msg: Message) -> None:
        if not isinstance(msg, Credit):
            self.counters.bump("unhandled")
            return
        out = self.slots[msg.slot].out if 0 <= msg.slot < _Slots.MAX else None
        if out is not None and out.generation == msg.generation:
            out.credit(msg)
        else:
            self.counters.bump("stale_credit")

    def close(self) -> None:
        self._data.close()
        self.bell.wake()
