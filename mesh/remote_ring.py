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
"""

from __future__ import annotations

import zmq

from . import curve, protocol
from .doorbell import Bell
from .protocol import INITIAL_CREDIT, Credit, Frame, ProtocolError
from .sockets import Counters, Readable, configure, log_drop, recv_all

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
        self.sent_bytes = 0  # FRAME bytes handed to the data socket (bench: bytes/s)
        sock = context.socket(zmq.DEALER)
        configure(sock)
        if keys is not None:
            curve.as_client(sock, keys)
        sock.connect(endpoint)
        self._sock: zmq.Socket[bytes] = sock
        self._readable: Readable | None = None

    def open(self) -> None:
        self._readable = Readable(self._sock, self._drain)

    def doorbell(self) -> Bell:
        return self.bell

    def note(self, slot: int, generation: int, session: str) -> None:
        self.slots[slot].note(generation, session)

    def send(self, msg: Frame) -> None:
        frames = protocol.encode(msg)
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the bridge is unreachable and the queue full
            log_drop(self.counters, "frames_dropped", f"FRAME to {self.endpoint}: {exc}")
        else:
            self.sent_bytes += sum(len(f) for f in frames)
        finally:
            if self._readable is not None:
                self._readable.kick()

    def _drain(self) -> None:
        for frames in recv_all(self._sock):
            try:
                msg = protocol.decode(frames)
            except ProtocolError as exc:
                log_drop(self.counters, "malformed", f"from the bridge: {exc}")
                continue
            if not isinstance(msg, Credit):
                self.counters.bump("unhandled")
                continue
            out = self.slots[msg.slot].out if 0 <= msg.slot < _Slots.MAX else None
            if out is not None and out.generation == msg.generation:
                out.credit(msg)
            else:
                self.counters.bump("stale_credit")

    def close(self) -> None:
        if self._readable is not None:
            self._readable.close()
            self._readable = None
        self._sock.close(linger=0)
        self.bell.wake()
