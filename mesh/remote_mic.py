"""Mic rings fed from another host: what a VAD or ASR actor on a worker host reads.

Rings stay host-local (docs/protocol.md section 5). A VAD or ASR on a worker host reads a
ring segment of its own, private to its process (``voxmesh-<pid>-mic`` in the worker's
/dev/shm), which ``MicFeed`` fills: for each session the router opens here it takes a local
slot, asks the session host's bridge for that session's mic frames (MIC_SUBSCRIBE on the
data socket) and writes every MIC it gets into the local slot's mic ring, each frame at
the sequence it has on the session host. So absolute sample positions (``seq * 320``) are
the same on both hosts and the actors, which read the ring as they would on one host, send
VAD events and answer ASR requests in the session host's positions. The session's slot and
generation in the SESSION_OPEN the actor sees are the local ones (``subscribe``).

When the network loses or delays audio:
- frames that never came are a gap: the ring's head jumps over them (``skip_to``), the
  readers count them lost; the ASR's MicBuffer keeps them as silence, the VAD resets its
  model state (speech/vad.py ``StreamingVad``);
- a *live* stream (the VAD's) drops frames that arrive more than ``LIVE_LATE_S`` later than
  the quickest MIC of that stream did (sent time on the session host's clock against
  arrival here: no shared clock is needed, only the difference to the quickest one), so
  audio that sat in a stalled connection is not judged as if it were speech now; an ASR's
  stream keeps them (a transcript asks for positions, however late);
- after the data socket is replaced (mesh/datasock.py) the VAD's streams start again from
  the session host's newest frame, the ASR's from the frame after the last one it has.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import zmq

from . import curve
from .datasock import DataSocket
from .protocol import Message, Mic, MicSubscribe, MicUnsubscribe, SessionOpen
from .ring import MIC_FRAME_BYTES, MIC_FRAME_SAMPLES, Geometry, RingSegment, Slot, segment_name
from .sockets import Counters, log, log_drop

LIVE_LATE_S = 0.5  # a live stream's frame this much later than its quickest: dropped
IDLE_SLOT_S = 5.0  # a slot whose stream sent nothing this long may be given to a new session
_NAMES = itertools.count()  # one segment per feed (an embedder may run several in a process)


@dataclass(eq=False)
class _Stream:
    session: str
    slot: int  # the session host's slot and generation
    generation: int
    local: Slot  # ours
    fed_at: float
    quickest: float = math.inf  # least (arrival - sent) seen: the transit without queueing
    started: bool = False  # a frame has come (the first one sets the ring's head)


class MicFeed:
    """A worker-private ring segment fed from the bridge; call ``open()`` in the loop."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        keys: curve.ClientKeys | None,
        counters: Counters,
        *,
        kind: Literal["vad", "asr"],
        geometry: Geometry,
        on_frames: Callable[[str], None] = lambda session: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind: Literal["vad", "asr"] = kind
        self.live = kind == "vad"  # the VAD judges the present; the ASR transcribes spans
        self.counters = counters
        self._on_frames = on_frames
        self._clock = clock
        tag = f"mic{next(_NAMES)}"
        self.segment = RingSegment.create(segment_name(os.getpid(), tag), geometry)
        self._streams: dict[str, _Stream] = {}  # by session
        self._by_host: dict[tuple[int, int], _Stream] = {}  # by (slot, generation) there
        self._free = list(reversed(self.segment.slots))
        self._data = DataSocket(context, endpoint, keys, counters, self.receive, self._restart)

    def open(self) -> None:
        self._data.open()

    @property
    def sent_bytes(self) -> int:
        return self._data.sent_bytes

    def subscribe(self, msg: SessionOpen) -> SessionOpen | None:
        """Start feeding ``msg``'s session; the SESSION_OPEN for our own ring (None: no slot
        free here, logged and counted)."""
        stream = self._streams.get(msg.session)
        if stream is None or (stream.slot, stream.generation) != (msg.slot, msg.generation):
            if stream is not None:
                self._drop(stream)  # the session is on another slot there now
            local = self._take_slot()
            if local is None:
                log_drop(self.counters, "no_local_slot", f"{msg.session}: every mic slot in use")
                return None
            local.claim()
            stream = _Stream(msg.session, msg.slot, msg.generation, local, self._clock())
            self._streams[msg.session] = stream
            self._by_host[(msg.slot, msg.generation)] = stream
            self._ask(stream, -1 if self.live and msg.resume else 0)
        return dataclasses.replace(msg, slot=stream.local.index, generation=stream.local.generation)

    def unsubscribe(self, session: str) -> None:
        stream = self._streams.get(session)
        if stream is not None:
            self._data.send(MicUnsubscribe(stream.slot, stream.generation))
            self._drop(stream)

    def covered(self, session: str) -> int:
        """The session-host sample position up to which our ring has the session's audio."""
        stream = self._streams.get(session)
        return stream.local.mic.head * MIC_FRAME_SAMPLES if stream is not None else 0

    def info(self) -> dict[str, int]:
        return {"mic_streams": len(self._streams), "mic_bytes_sent": self._data.sent_bytes}

    def close(self) -> None:
        self._data.close()
        self._streams.clear()
        self._by_host.clear()
        self._free.clear()
        self.segment.close()
        self.segment.unlink()

    # --- streams ----------------------------------------------------------------------------

    def _ask(self, stream: _Stream, start: int) -> None:
        self._data.send(
            MicSubscribe(stream.session, stream.slot, stream.generation, self.kind, start)
        )

    def _take_slot(self) -> Slot | None:
        if self._free:
            return self._free.pop()
        now = self._clock()
        idle = min(self._streams.values(), key=lambda s: s.fed_at, default=None)
        if idle is None or now - idle.fed_at < IDLE_SLOT_S:
            return None
        log.warning(
            "mic feed: %s sent nothing for %.0f s: its slot goes", idle.session, now - idle.fed_at
        )
        self._drop(idle)
        return self._free.pop()

    def _drop(self, stream: _Stream) -> None:
        self._streams.pop(stream.session, None)
        self._by_host.pop((stream.slot, stream.generation), None)
        stream.local.release()
        self._free.append(stream.local)

    def _restart(self) -> None:
        """A fresh data socket: the bridge knows none of our streams any more."""
        for stream in self._streams.values():
            if self.live:
                self._ask(stream, -1)
            else:  # what we lack of the ring there, all of it if we had nothing yet
                self._ask(stream, stream.local.mic.head if stream.started else 0)

    def receive(self, msg: Message) -> None:
        """A message from the bridge (what the data socket hands us)."""
        if not isinstance(msg, Mic):
            self.counters.bump("unhandled")
            return
        stream = self._by_host.get((msg.slot, msg.generation))
        if stream is None:
            self.counters.bump("mic_unknown")  # a session we no longer read
            return
        frames, rest = divmod(len(msg.pcm), MIC_FRAME_BYTES)
        if frames == 0 or rest:
            log_drop(self.counters, "malformed", f"MIC of {len(msg.pcm)} bytes")
            return
        now = self._clock()
        stream.fed_at = now
        if self.live:
            transit = now - msg.t
            stream.quickest = min(stream.quickest, transit)
            if transit - stream.quickest > LIVE_LATE_S:
                self.counters.bump("mic_late", frames)  # sat in a stalled connection
                return
        ring = stream.local.mic
        for i in range(frames):
            seq = msg.seq + i
            if seq < ring.head:
                self.counters.bump("mic_duplicate")
                continue
            if seq > ring.head:
                if stream.started:
                    self.counters.bump("mic_gap", seq - ring.head)
                ring.skip_to(seq)
            stream.started = True
            ring.write(msg.pcm[i * MIC_FRAME_BYTES : (i + 1) * MIC_FRAME_BYTES])
        self._on_frames(stream.session)
