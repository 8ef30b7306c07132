"""The bridge's mic side: each session's mic frames to the remote VAD and ASR that read it.

A VAD or ASR on another host asks for a session's mic with MIC_SUBSCRIBE on the data socket
(docs/protocol.md section 5); from then on every frame the transport writes into that
session's mic ring goes to it in a MIC, with its sequence (so its absolute position). The
bridge reads the ring as the reader it stands for would: the router gives each session one
VAD and one ASR, so the ring's waiter entry of that kind (mesh/ring.py ``MIC_VAD``,
``MIC_ASR``) is free for the bridge to wait in, woken by the transport's write. No credit:
mic audio is real time (50 frames a second a session), and what bounds it is this:
- a MIC carries at most ``MAX_BATCH`` frames (a backlog goes in a few large messages);
- the socket queues at most ``QUEUE`` messages per peer; when a peer's queue is full (a
  stalled network) its reader is put back to the first frame not sent and tried again at
  the ring's next frame, so nothing is lost until the ring itself laps it (10 s): then the
  reader skips ahead and the receiver sees a gap;
- a subscription ends when the session does (its slot released or taken by another
  generation), when the subscriber unsubscribes, when another subscriber of the same kind
  takes the session, or when its connection is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import zmq

from voxmesh.mesh import protocol
from voxmesh.mesh.doorbell import Doorbell
from voxmesh.mesh.protocol import Mic, MicSubscribe, MicUnsubscribe
from voxmesh.mesh.ring import MIC_ASR, MIC_VAD, Frame, MicReader, RingSegment
from voxmesh.mesh.sockets import Counters, log_drop

MAX_BATCH = 50  # frames per MIC: 1 s, 32 KB (a body may be 64 KiB)
QUEUE = 1000  # MICs queued per peer before the bridge holds back (SNDHWM)
ENTRY = {"vad": MIC_VAD, "asr": MIC_ASR}


@dataclass(eq=False)
class _Sub:
    identity: bytes
    slot: int
    generation: int
    kind: str
    reader: MicReader
    held_back: bool = False  # its queue was full: wait for the ring's next frame


class MicStreams:
    """Subscriptions by (identity, slot, kind); ``pump()`` sends what each has not had."""

    def __init__(
        self,
        segment: RingSegment,
        bell: Doorbell,
        send: Callable[[bytes, list[bytes]], None],
        counters: Counters,
    ) -> None:
        self.segment = segment
        self.bell = bell
        self._send = send  # raises zmq.ZMQError (EAGAIN: that peer's queue is full)
        self.counters = counters
        self.subs: dict[tuple[bytes, int, str], _Sub] = {}
        self.bytes_out = 0
        self.max_subs = 4 * len(segment.slots) * len(ENTRY)

    def subscribe(self, identity: bytes, msg: MicSubscribe) -> None:
        slots = self.segment.slots
        if not 0 <= msg.slot < len(slots) or msg.kind not in ENTRY:
            log_drop(self.counters, "bad_subscribe", f"slot {msg.slot}, kind {msg.kind!r}")
            return
        slot = slots[msg.slot]
        if slot.generation != msg.generation or not slot.in_use:
            self.counters.bump("stale_generation")  # that session is over
            return
        # One reader of each kind per session: the newest subscriber is the router's choice.
        for key in [k for k, s in self.subs.items() if (s.slot, s.kind) == (msg.slot, msg.kind)]:
            del self.subs[key]
        if len(self.subs) >= self.max_subs:
            log_drop(self.counters, "subscribe_refused", f"{len(self.subs)} mic streams")
            return
        ring = slot.mic
        reader = MicReader(ring)  # at the head
        if msg.start >= 0:
            reader.cursor = min(max(msg.start, ring.head - ring.capacity), ring.head)
        self.subs[(identity, msg.slot, msg.kind)] = _Sub(
            identity, msg.slot, msg.generation, msg.kind, reader
        )
        self.counters.bump("mic_subscribed")

    def unsubscribe(self, identity: bytes, msg: MicUnsubscribe) -> None:
        for kind in ENTRY:
            sub = self.subs.get((identity, msg.slot, kind))
            if sub is not None and sub.generation == msg.generation:
                del self.subs[(identity, msg.slot, kind)]

    def forget(self, identity: bytes) -> None:
        for key in [k for k in self.subs if k[0] == identity]:
            del self.subs[key]

    def pump(self) -> None:
        """Send every subscriber its new frames, then wait in each ring for the next."""
        targets: dict[tuple[int, int], int] = {}
        for key, sub in list(self.subs.items()):
            if self.subs.get(key) is not sub:
                continue  # forgotten on the way (its peer is gone)
            slot = self.segment.slots[sub.slot]
            if slot.generation != sub.generation or not slot.in_use:
                del self.subs[key]  # the session ended
                continue
            sub.held_back = False
            if not self._send_new(sub):
                continue
            want = slot.mic.head + 1 if sub.held_back else sub.reader.cursor + 1
            at = (sub.slot, ENTRY[sub.kind])
            targets[at] = min(targets.get(at, want), want)
        for (index, entry), target in targets.items():
            if self.segment.slots[index].mic.arm(entry, self.bell, target):
                self.bell.wake()  # written meanwhile: look again from the loop

    def _send_new(self, sub: _Sub) -> bool:
        """Send ``sub``'s unsent frames; False once its peer is gone (then forgotten)."""
        while True:
            frames: list[Frame] = []
            while len(frames) < MAX_BATCH and (frame := sub.reader.read()) is not None:
                if frames and frame.seq != frames[-1].seq + 1:  # the reader was lapped
                    sub.reader.cursor = frame.seq  # that one starts the next MIC
                    break
                frames.append(frame)
            if not frames:
                return True
            msg = Mic(
                sub.slot,
                sub.generation,
                frames[0].seq,
                frames[-1].t,
                b"".join(f.data for f in frames),
            )
            wire = protocol.encode(msg)
            try:
                self._send(sub.identity, wire)
            except zmq.Again:
                sub.reader.cursor = frames[0].seq  # again at the next frame
                sub.held_back = True
                self.counters.bump("mic_held_back")
                return True
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the subscriber's connection is gone
                log_drop(self.counters, "mic_peer_gone", exc)
                self.forget(sub.identity)
                return False
            self.bytes_out += sum(len(f) for f in wire)
            self.counters.bump("mic_frames", len(frames))
