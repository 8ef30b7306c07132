"""The ROUTER side of the mesh: peers by identity, liveness, heartbeats out.

Used by the router actor (control hub for every actor) and the supervisor (readiness and
health of every process). ROUTER_HANDOVER lets a restarted actor take its name back at
once; ROUTER_MANDATORY turns a send to a vanished peer into a counted drop, not silence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import protocol
from .protocol import Goodbye, Heartbeat, Hello, Message, ProtocolError, Ready
from .sockets import Counters, Readable, configure, log, log_drop, recv_all


@dataclass
class Peer:
    name: str
    kind: str
    pid: int
    info: dict[str, Any] = field(default_factory=dict)
    last_seen: float = 0.0
    liveness: int = 3
    ready_at: float = 0.0


class Hub:
    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        on_message: Callable[[Peer, Message], None],
        *,
        on_ready: Callable[[Peer], None] = lambda peer: None,
        on_lost: Callable[[Peer], None] = lambda peer: None,
        heartbeat_s: float = 0.5,
        liveness: int = 3,
        counters: Counters | None = None,
        heartbeat_info: Callable[[], dict[str, object]] = dict,
    ) -> None:
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self.liveness_max = liveness
        self.counters = counters if counters is not None else Counters()
        self.peers: dict[str, Peer] = {}
        self._on_message = on_message
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._heartbeat_info = heartbeat_info
        sock = context.socket(zmq.ROUTER)
        configure(sock)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(endpoint)
        self._sock: zmq.Socket[bytes] = sock
        self._readable = Readable(sock, self.drain)
        self._next_heartbeat = time.monotonic() + heartbeat_s

    def close(self) -> None:
        self._readable.close()
        self._sock.close(linger=0)

    def send(self, name: str, msg: Message) -> bool:
        return self.send_frames(name, protocol.encode(msg), type(msg).__name__)

    def send_frames(self, name: str, frames: list[bytes], what: str = "message") -> bool:
        try:
            self._sock.send_multipart([name.encode(), *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (full): drop, count
            log_drop(self.counters, "send_failed", f"{what} to {name}: {exc}")
            return False
        finally:
            self._readable.kick()
        return True

    def broadcast(self, msg: Message, kind: str | None = None) -> None:
        frames = protocol.encode(msg)
        for peer in list(self.peers.values()):
            if kind is None or peer.kind == kind:
                self.send_frames(peer.name, frames, type(msg).__name__)

    def drain(self) -> None:
        now = time.monotonic()
        for frames in recv_all(self._sock):
            if len(frames) < 2:
                log_drop(self.counters, "malformed", "message without identity")
                continue
            name = frames[0].decode("utf-8", "replace")
            try:
                msg = protocol.decode(frames[1:])
            except ProtocolError as exc:
                log_drop(self.counters, "malformed", f"from {name}: {exc}")
                continue
            if isinstance(msg, Ready):
                peer = Peer(
                    msg.name, msg.kind, msg.pid, dict(msg.info), now, self.liveness_max, now
                )
                if name != msg.name:
                    log_drop(self.counters, "malformed", f"Ready for {msg.name!r} from {name!r}")
                    continue
                self.peers[name] = peer
                self._on_ready(peer)
                continue
            known = self.peers.get(name)
            if known is None:
                # We restarted (or it did, silently): ask it to introduce itself again.
                self.counters.bump("unknown_peer")
                self.send(name, Hello())
                continue
            known.last_seen = now
            known.liveness = self.liveness_max
            if isinstance(msg, Heartbeat):
                known.info = dict(msg.info)
                continue
            if isinstance(msg, Goodbye):
                del self.peers[name]
                self._on_lost(known)
                continue
            self._on_message(known, msg)

    def tick(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.heartbeat_s
        beat = protocol.encode(Heartbeat(info=self._heartbeat_info()))
        for peer in list(self.peers.values()):
            peer.liveness -= 1
            if peer.liveness <= 0:
                log.warning(
                    "peer %s (pid %d) silent for %d heartbeats: presumed dead",
                    peer.name,
                    peer.pid,
                    self.liveness_max,
                )
                del self.peers[peer.name]
                self._on_lost(peer)
                continue
            self.send_frames(peer.name, beat, "Heartbeat")
