"""The audio bridge: frames of TTS actors on other hosts into this host's out rings.

Rings stay host-local (docs/protocol.md section 5). A remote TTS sends each 20 ms frame as
a FRAME on its own data socket (never the control socket, so a PAUSE never waits behind
audio); the bridge binds that socket (a ROUTER, CURVE with the mesh's allow-list) and
writes each frame into the slot's out ring exactly as a local TTS would, epoch and flags
included, so the transport's epoch fencing and HOLD work unchanged: a pause stops at the
transport within a frame, whatever is still on the network.

Flow control is credit. A writer may send the frames of a (slot, generation) below the last
CREDIT's ``granted`` (``INITIAL_CREDIT`` before one); the bridge grants what the ring can
take (frames received + free space - frames it still holds). When a writer is nearly out
of credit the bridge arms the ring's writer doorbell and sends the next CREDIT once the
transport has freed ``REFILL`` frames: one CREDIT per 320 ms of playback, not per frame.
Frames of a generation the slot no longer has (the session ended) are dropped and counted.

The other way, the bridge streams each session's mic frames to the VAD and ASR actors on
other hosts that subscribed to it (actors/bridge_mic.py); the same doorbell wakes both.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from voxmesh.mesh import curve, protocol
from voxmesh.mesh.actor import Actor
from voxmesh.mesh.protocol import Credit, Frame, MicSubscribe, MicUnsubscribe, ProtocolError
from voxmesh.mesh.ring import OUT_FRAME_BYTES, OUT_WRITER, OutRing, RingSegment
from voxmesh.mesh.settings import RemoteSettings
from voxmesh.mesh.sockets import Readable, configure, log_drop, recv_all
from voxmesh.mesh.spec import ActorSpec, MeshPlace, data_endpoint

from .bridge_mic import QUEUE, MicStreams

log = logging.getLogger("voxmesh.bridge")

REFILL = 16  # frames freed before a waiting writer hears of it (as the local writer's refill)
IDLE_FORGET_S = 60.0  # a writer silent this long is forgotten (its worker is gone)


@dataclass(eq=False)
class _Writer:
    """One remote writer's stream into one slot."""

    identity: bytes
    slot: int
    generation: int
    received: int = 0  # the next seq we expect
    granted: int = protocol.INITIAL_CREDIT  # what we last told it (or the initial credit)
    held: deque[Frame] = field(default_factory=deque)  # frames beyond the ring's free space
    last_at: float = 0.0
    waiting: bool = False  # the ring's writer bell is armed for it


class BridgeActor(Actor):
    kind = "bridge"

    def __init__(
        self,
        name: str,
        place: MeshPlace,
        settings: RemoteSettings,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        super().__init__(name, place, context=context)
        self.settings = settings
        self.endpoint = data_endpoint(settings.listen, settings.data)
        self.segment: RingSegment | None = None
        self.writers: dict[tuple[bytes, int], _Writer] = {}
        self.bytes_in = 0
        self._sock: zmq.Socket[bytes] | None = None
        self._readable: Readable | None = None
        self._auth: Any = None
        self.mic: MicStreams | None = None

    async def on_start(self) -> None:
        self.segment = RingSegment.attach(self.place.segment)
        self.bell = self.segment.doorbell()
        sock = self.context.socket(zmq.ROUTER)
        configure(sock)
        sock.setsockopt(zmq.SNDHWM, QUEUE)  # per peer: mic beyond it waits in the ring
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a peer gone fails: forget it
        try:
            self._auth = curve.bind_server(
                self.context,
                sock,
                self.endpoint,
                self.settings.key,
                self.settings.allowed,
                self.counters,
            )
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock
        self._readable = Readable(sock, self._drain)
        self.mic = MicStreams(self.segment, self.bell, self._send_raw, self.counters)
        self.spawn(self._refill_loop())
        self.every(IDLE_FORGET_S / 4, self._forget_idle)
        log.info("bridge: remote audio on %s", self.endpoint)

    async def on_stop(self) -> None:
        if self._readable is not None:
            self._readable.close()
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    # --- frames in ----------------------------------------------------------------------------

    def _drain(self) -> None:
        assert self._sock is not None
        touched: set[_Writer] = set()
        subscribed = False
        for frames in recv_all(self._sock):
            if len(frames) != 4:
                log_drop(self.counters, "malformed", "data message without identity")
                continue
            self.bytes_in += sum(len(f) for f in frames[1:])
            try:
                msg = protocol.decode(frames[1:])
            except ProtocolError as exc:
                log_drop(self.counters, "malformed", f"on the data socket: {exc}")
                continue
            if isinstance(msg, Frame):
                writer = self._take(frames[0], msg)
                if writer is not None:
                    touched.add(writer)
            elif isinstance(msg, MicSubscribe):
                assert self.mic is not None
                self.mic.subscribe(frames[0], msg)
                subscribed = True
            elif isinstance(msg, MicUnsubscribe):
                assert self.mic is not None
                self.mic.unsubscribe(frames[0], msg)
            else:
                log_drop(self.counters, "refused_data", f"{type(msg).__name__} on the data socket")
        for writer in touched:
            self._credit(writer)
        if subscribed and self.mic is not None:
            self.mic.pump()  # a backlog asked for goes at once

    def _take(self, identity: bytes, msg: Frame) -> _Writer | None:
        """Put one frame in its ring (or hold it); the writer it belongs to, None if dropped."""
        assert self.segment is not None
        if not 0 <= msg.slot < len(self.segment.slots) or len(msg.pcm) != OUT_FRAME_BYTES:
            log_drop(self.counters, "bad_frame", f"slot {msg.slot}, {len(msg.pcm)} bytes")
            return None
        slot = self.segment.slots[msg.slot]
        if msg.generation != slot.generation:
            self.counters.bump("stale_generation")  # that session is over
            return None
        key = (identity, msg.slot)
        writer = self.writers.get(key)
        if writer is None or writer.generation != msg.generation:
            writer = self.writers[key] = _Writer(identity, msg.slot, msg.generation)
        if msg.seq != writer.received:
            log_drop(self.counters, "seq_gap", f"slot {msg.slot}: {writer.received} -> {msg.seq}")
        writer.received = msg.seq + 1
        writer.last_at = time.monotonic()
        if writer.held or slot.out.free() == 0:
            if len(writer.held) >= slot.out.capacity:
                self.counters.bump("overflow_dropped")  # beyond any credit it was given
                return writer
            writer.held.append(msg)
        else:
            self._write(slot.out, msg)
        return writer

    def _write(self, ring: OutRing, msg: Frame) -> None:
        ring.write(msg.pcm, epoch=msg.epoch, utterance=msg.utterance, flags=msg.flags)
        self.counters.bump("frames")

    # --- credit out ---------------------------------------------------------------------------

    def _credit(self, writer: _Writer) -> None:
        """Flush what the ring can take, grant the rest of its space, and arm the ring's
        writer bell when the writer is about to run dry."""
        assert self.segment is not None
        slot = self.segment.slots[writer.slot]
        if slot.generation != writer.generation:
            self.writers.pop((writer.identity, writer.slot), None)
            return
        ring = slot.out
        while writer.held and ring.free() > 0:
            self._write(ring, writer.held.popleft())
        granted = writer.received + ring.free() - len(writer.held)
        if granted > writer.granted:
            writer.granted = granted
            credit = Credit(writer.slot, writer.generation, granted, ring.capacity)
            try:
                self._send_raw(writer.identity, protocol.encode(credit))
            except zmq.ZMQError as exc:  # the worker went away: its frames stop coming
                log_drop(self.counters, "credit_failed", exc)
        low = writer.granted - writer.received < REFILL or writer.held
        writer.waiting = bool(low) and not ring.arm(
            OUT_WRITER, self.bell, ring.head - ring.capacity + min(REFILL, ring.capacity)
        )
        if low and not writer.waiting:
            self.bell.wake()  # already free again: look once more from the loop

    def _send_raw(self, identity: bytes, frames: list[bytes]) -> None:
        assert self._sock is not None and self._readable is not None
        try:
            self._sock.send_multipart([identity, *frames], zmq.NOBLOCK)
        finally:
            self._readable.kick()

    async def _refill_loop(self) -> None:
        """One doorbell for both ways: out rings with space again, mic rings with frames."""
        while True:
            await self.bell.wait()
            for writer in [w for w in self.writers.values() if w.waiting or w.held]:
                self._credit(writer)
            if self.mic is not None:
                self.mic.pump()

    def _forget_idle(self, now: float) -> None:
        for key, writer in list(self.writers.items()):
            if now - writer.last_at > IDLE_FORGET_S and not writer.held:
                del self.writers[key]

    def info(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "sessions": len({w.slot for w in self.writers.values()}),
            "bytes_in": self.bytes_in,
            "mic_streams": len(self.mic.subs) if self.mic is not None else 0,
            "mic_bytes_out": self.mic.bytes_out if self.mic is not None else 0,
            "counters": dict(self.counters),
        }


def build(spec: ActorSpec) -> BridgeActor:
    return BridgeActor(spec.name, spec.place, spec.section(RemoteSettings))
