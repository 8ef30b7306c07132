"""The ROUTER side of the mesh: peers by name, liveness, heartbeats out.

Used by the router actor (control hub for every actor) and the supervisor (readiness and
health of every process). A peer is known by the name in its READY; messages to it go to
the socket identity that READY came from. Links use a fresh random identity per socket
(mesh/link.py), so nobody can take over a peer's route by connecting with its name, and a
restarted actor's new READY simply replaces the old route. ROUTER_MANDATORY turns a send to
a vanished peer into a counted drop, not silence.

Strangers. With a ``secret`` (mesh/auth.py) a READY must carry the token for its name, or
it is refused and counted (``open_kinds`` names kinds that need none: the supervisor lets
``voxmesh status`` in as a ``client`` and only ever answers it STATUS). A peer that has not
sent a good READY is a stranger: it is told HELLO at most once per heartbeat interval, and
what it sends is held (a few messages, a few seconds, a bounded number of strangers) rather
than served. When it then proves itself the held messages are served in order: that is how
a request the transport sent while this hub was restarting is not lost. A flood from a
stranger costs it its own messages.

Remote peers (docs/protocol.md section 5). With ``remote`` the same ROUTER socket also binds
a tcp endpoint as a CURVE server, behind pyzmq's ZAP authenticator and an allow-list of
client keys (mesh/curve.py). A peer that came in that way carries the key it authenticated
with (ZeroMQ's ``User-Id`` property) and READYs without a token: the key is its credential.
It may only be of the kinds ``remote.kinds`` names and may not take a local peer's name.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import auth, curve, protocol
from .protocol import Goodbye, Heartbeat, Hello, Message, ProtocolError, Ready
from .sockets import (
    RECV_BATCH,
    Counters,
    Readable,
    configure,
    has_input,
    log,
    log_drop,
    recv_all,
)

MAX_STRANGERS = 16  # identities whose messages are held until they READY
MAX_HELD_BYTES = 256 * 1024  # message bodies held per stranger (16 strangers: 4 MiB at most)
HOLD_S = 3.0  # how long a stranger's messages are held
STRANGER_BUDGET = 64  # messages a stranger may send per heartbeat interval; the rest: dropped


@dataclass
class Peer:
    name: str
    kind: str
    pid: int
    info: dict[str, Any] = field(default_factory=dict)
    last_seen: float = 0.0
    liveness: int = 3
    ready_at: float = 0.0
    identity: bytes = b""  # the socket identity it READYed on: where messages to it go
    key: str = ""  # a remote peer: the CURVE public key it authenticated with (z85)


@dataclass(frozen=True)
class RemoteBind:
    """A tcp endpoint for peers on other hosts, CURVE with an allow-list (mesh/curve.py)."""

    endpoint: str
    key_file: str  # the mesh's secret key file (server side)
    allowed_dir: str  # the directory of allowed client public keys
    # what a remote peer may READY as: what speaks through the bridge or reads from it
    kinds: frozenset[str] = frozenset({"tts", "asr", "vad"})
    local_names: frozenset[str] = frozenset()  # names a remote peer may never take


@dataclass
class _Stranger:
    hello_at: float = float("-inf")  # when it was last told HELLO
    held: deque[tuple[float, list[bytes]]] = field(default_factory=deque)  # raw, undecoded
    held_bytes: int = 0
    window_at: float = float("-inf")  # start of its current budget window
    in_window: int = 0  # messages it sent in that window


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
        secret: str | None = None,
        open_kinds: frozenset[str] = frozenset(),
        hold_s: float = HOLD_S,
        remote: RemoteBind | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.remote = remote
        self.secret = secret
        self.open_kinds = open_kinds  # kinds that may READY without a token (read-only clients)
        self.hold_s = hold_s
        self._strangers: OrderedDict[bytes, _Stranger] = OrderedDict()
        self._names: dict[bytes, str] = {}  # socket identity -> peer name
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
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(endpoint)
        self._auth = None
        if remote is not None:
            try:
                self._auth = curve.bind_server(
                    context,
                    sock,
                    remote.endpoint,
                    remote.key_file,
                    remote.allowed_dir,
                    self.counters,
                )
            except BaseException:
                sock.close(linger=0)
                raise
        self._sock: zmq.Socket[bytes] = sock
        self._readable = Readable(sock, self.drain)
        self._next_heartbeat = time.monotonic() + heartbeat_s

    def close(self) -> None:
        self._readable.close()
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()

    def send(self, name: str, msg: Message) -> bool:
        return self.send_frames(name, protocol.encode(msg), type(msg).__name__)

    def send_frames(self, name: str, frames: list[bytes], what: str = "message") -> bool:
        """Send to the peer called ``name`` (through whatever socket identity it READYed on)."""
        peer = self.peers.get(name)
        if peer is None:
            log_drop(self.counters, "send_failed", f"{what} to {name}: not connected")
            return False
        return self._send_to(peer.identity, frames, what)

    def _send_to(self, identity: bytes, frames: list[bytes], what: str) -> bool:
        try:
            self._sock.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH (gone) or EAGAIN (full): drop, count
            log_drop(self.counters, "send_failed", f"{what} to {identity!r}: {exc}")
            if exc.errno == zmq.EHOSTUNREACH:
                # No connection under that identity any more: the peer is gone, now rather
                # than after missed heartbeats. Told from the loop, not inside a send.
                self._readable.loop.call_soon(self._unreachable, identity)
            return False
        finally:
            self._readable.kick()
        return True

    def broadcast(self, msg: Message, kind: str | None = None) -> None:
        frames = protocol.encode(msg)
        for peer in list(self.peers.values()):
            if kind is None or peer.kind == kind:
                self.send_frames(peer.name, frames, type(msg).__name__)

    def _unreachable(self, identity: bytes) -> None:
        name = self._names.get(identity)
        peer = self.peers.get(name) if name is not None else None
        if peer is not None and peer.identity == identity:
            log.warning("peer %s (pid %d) disconnected", peer.name, peer.pid)
            self.forget(peer.name)
            self._on_lost(peer)

    def forget(self, name: str) -> Peer | None:
        """Drop the peer called ``name`` (it is gone); its socket identity becomes a stranger."""
        peer = self.peers.pop(name, None)
        if peer is not None:
            self._names.pop(peer.identity, None)
        return peer

    def drain(self) -> None:
        now = time.monotonic()
        batch = self._recv()
        for frames, key in batch:
            if len(frames) < 2:
                log_drop(self.counters, "malformed", "message without identity")
                continue
            identity = frames[0]
            name = self._names.get(identity)
            known = self.peers.get(name) if name is not None else None
            if known is None:  # checked before any decoding: a flood costs next to nothing
                self._stranger(identity, frames[1:], now, key)
                continue
            try:
                msg = protocol.decode(frames[1:])
            except ProtocolError as exc:
                log_drop(self.counters, "malformed", f"from {name}: {exc}")
                continue
            if isinstance(msg, Ready):
                self._ready(identity, msg, now, key)
                continue
            known.last_seen = now
            known.liveness = self.liveness_max
            self._serve(known, msg)
        if len(batch) == RECV_BATCH:
            self._readable.kick()  # more is waiting: come back after the loop's other work

    def _recv(self) -> list[tuple[list[bytes], str]]:
        """Waiting messages, each with the CURVE key its peer authenticated with ("": a
        local peer). Only a hub with a remote endpoint pays for the frame objects."""
        if self.remote is None:
            return [(frames, "") for frames in recv_all(self._sock)]
        out: list[tuple[list[bytes], str]] = []
        try:
            while len(out) < RECV_BATCH:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                out.append(([p.bytes for p in parts], _user_id(parts[-1])))
        except zmq.Again:
            pass
        return out

    def _serve(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            peer.info = dict(msg.info)
        elif isinstance(msg, Goodbye):
            self.forget(peer.name)
            self._on_lost(peer)
        else:
            self._on_message(peer, msg)

    def _ready(self, identity: bytes, msg: Ready, now: float, key: str = "") -> None:
        if key and not self._remote_ok(msg, key):
            self._refused(identity)
            return
        if (
            not key  # a remote peer's CURVE key is its credential
            and self.secret is not None
            and msg.kind not in self.open_kinds
            and not auth.verify(self.secret, msg.name, msg.token)
        ):
            log_drop(self.counters, "refused", f"Ready as {msg.name!r} without a valid token")
            self._refused(identity)
            return
        if msg.kind in self.open_kinds and msg.name in self.peers:
            old_kind = self.peers[msg.name].kind
            if old_kind not in self.open_kinds:  # a client may not take an actor's name
                log_drop(self.counters, "refused", f"client Ready as actor {msg.name!r}")
                return
        old = self.forget(msg.name)
        if old is not None and old.identity != identity:
            log.info("hub: %s (pid %d) replaces pid %d", msg.name, msg.pid, old.pid)
        peer = Peer(
            msg.name, msg.kind, msg.pid, dict(msg.info), now, self.liveness_max, now, identity, key
        )
        if key:
            log.info("hub: remote %s %s (pid %d) joined, key %s", msg.kind, msg.name, msg.pid, key)
        self.peers[msg.name] = peer
        self._names[identity] = msg.name
        self._send_to(identity, protocol.encode(Heartbeat(info=self._heartbeat_info())), "ack")
        self._on_ready(peer)
        stranger = self._strangers.pop(identity, None)
        if stranger is not None:
            for at, held in stranger.held:
                if now - at > self.hold_s or self.peers.get(msg.name) is not peer:
                    continue
                try:
                    early = protocol.decode(held)
                except ProtocolError as exc:
                    log_drop(self.counters, "malformed", f"held from {msg.name}: {exc}")
                    continue
                if not isinstance(early, (Ready, Heartbeat)):
                    self.counters.bump("held_served")
                    self._serve(peer, early)

    def _refused(self, identity: bytes) -> None:
        """A stranger's READY was refused: what it sent before is not to be served, but it
        stays a stranger with its budget and HELLO timing spent (forgetting it would give
        every refused READY a fresh budget, and a flood of them all our time)."""
        stranger = self._strangers.get(identity)
        if stranger is not None:
            stranger.held.clear()
            stranger.held_bytes = 0

    def _remote_ok(self, msg: Ready, key: str) -> bool:
        """May a CURVE-authenticated peer READY as this kind and name?"""
        assert self.remote is not None
        old = self.peers.get(msg.name)
        if msg.kind not in self.remote.kinds:
            why = f"kind {msg.kind!r} (remote peers may be {', '.join(sorted(self.remote.kinds))})"
        elif msg.name in self.remote.local_names or (old is not None and not old.key):
            why = f"the name of local actor {msg.name!r}"
        elif old is not None and old.key != key:
            why = f"the name of {msg.name!r}, which joined with another key"
        else:
            return True
        log_drop(self.counters, "refused", f"remote Ready as {msg.name!r}: {why}")
        return False

    def _stranger(self, identity: bytes, frames: list[bytes], now: float, key: str) -> None:
        """A message from a peer we do not know (we restarted, or it is not of the mesh):
        a READY is looked at (within the stranger's budget), anything else is held as it
        came, undecoded, until the stranger proves itself."""
        self.counters.bump("unknown_peer")
        stranger = self._strangers.get(identity)
        if stranger is None:
            if len(self._strangers) >= MAX_STRANGERS:
                self._strangers.popitem(last=False)
                self.counters.bump("strangers_evicted")
            stranger = self._strangers[identity] = _Stranger()
        else:
            self._strangers.move_to_end(identity)
        if now - stranger.window_at >= self.heartbeat_s:
            stranger.window_at, stranger.in_window = now, 0
        stranger.in_window += 1
        if stranger.in_window > STRANGER_BUDGET:
            self.counters.bump("stranger_dropped")  # a flood: not even looked at
            return
        if len(frames) == 3 and frames[1] == bytes((Ready.ID,)):
            try:
                msg = protocol.decode(frames)
            except ProtocolError as exc:
                log_drop(self.counters, "malformed", f"from {identity[:40]!r}: {exc}")
                return
            assert isinstance(msg, Ready)
            self._ready(identity, msg, now, key)
            return
        while stranger.held and now - stranger.held[0][0] > self.hold_s:
            stranger.held_bytes -= sum(len(f) for f in stranger.held.popleft()[1])
            self.counters.bump("held_expired")
        size = sum(len(f) for f in frames)
        if stranger.held_bytes + size <= MAX_HELD_BYTES:
            stranger.held.append((now, frames))
            stranger.held_bytes += size
        else:
            self.counters.bump("held_dropped")
        if now - stranger.hello_at >= self.heartbeat_s:
            stranger.hello_at = now
            self._send_to(identity, protocol.encode(Hello()), "Hello")

    def backlogged(self) -> bool:
        """Messages wait unread: whoever is silent now may only be queued behind them."""
        if not has_input(self._sock):
            return False
        self._readable.kick()  # reading ZMQ_EVENTS can take the FD's edge, as a send can
        return True

    def tick(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.heartbeat_s
        beat = protocol.encode(Heartbeat(info=self._heartbeat_info()))
        # Behind on reading (a flood, a starved loop), we cannot tell a silent peer from one
        # whose heartbeats wait in the queue: an interval counts only once we have caught up
        # (a peer that died meanwhile is counted silent from then on).
        behind = self.backlogged()
        for peer in list(self.peers.values()):
            if not behind:
                peer.liveness -= 1
            if peer.liveness <= 0:
                log.warning(
                    "peer %s (pid %d) silent for %d heartbeats: presumed dead",
                    peer.name,
                    peer.pid,
                    self.liveness_max,
                )
                self.forget(peer.name)
                self._on_lost(peer)
                continue
            self.send_frames(peer.name, beat, "Heartbeat")


def _user_id(frame: zmq.Frame) -> str:
    """The ZAP User-Id of a message's connection ("" on a NULL-mechanism endpoint)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:  # EINVAL: no such property (ipc, no ZAP)
        return ""
