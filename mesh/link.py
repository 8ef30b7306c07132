"""A DEALER link to one ROUTER (the router actor or the supervisor), Paranoid Pirate style.

Heartbeats go out every interval; any inbound message counts as one from the peer. After
``liveness`` silent intervals the peer is presumed dead: the socket is closed (linger 0) and
a fresh one opened after a backoff that doubles up to a cap, and ``on_connect`` runs again
so the actor re-introduces itself.

A socket monitor makes the common failure fast: when the peer process dies, ZeroMQ reports
the disconnect at once (``welcomed`` turns False, so callers hold work rather than sending
it into the void), and when a restarted peer accepts the connection again ``on_connect``
runs at once instead of after the next heartbeat and its HELLO. ``welcomed`` turns True
again with the first message from the peer after our announcement (a hub acknowledges a
READY at once).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import curve, protocol
from .protocol import Heartbeat, Hello, Message, ProtocolError
from .sockets import (
    RECV_BATCH,
    Counters,
    Readable,
    close_monitored,
    configure,
    log,
    log_drop,
    recv_all,
)

BACKOFF_MAX_S = 4.0


class Link:
    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        identity: str,
        on_message: Callable[[Message], None],
        on_connect: Callable[[], None],
        *,
        heartbeat_s: float = 0.5,
        liveness: int = 3,
        counters: Counters | None = None,
        heartbeat_info: Callable[[], dict[str, object]] = dict,
        on_down: Callable[[], None] = lambda: None,
        on_welcome: Callable[[], None] = lambda: None,
        keys: curve.ClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._keys = keys  # CURVE client keys (a tcp link to another host)
        self._on_down = on_down  # the peer is gone (disconnected, or silent too long)
        self._on_welcome = on_welcome  # the peer answered our announcement
        self.identity = identity
        self.heartbeat_s = heartbeat_s
        self.liveness_max = liveness
        self.counters = counters if counters is not None else Counters()
        self._ctx = context
        self._on_message = on_message
        self._on_connect = on_connect
        self._heartbeat_info = heartbeat_info
        self._sock: zmq.Socket[bytes] | None = None
        self._readable: Readable | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._monitor_readable: Readable | None = None
        self._announced = False  # on_connect ran since the last disconnect
        self.welcomed = False  # the peer has answered since our last announcement
        self.liveness = liveness
        self._backoff = heartbeat_s
        self._next_heartbeat = 0.0
        self._reconnect_at = 0.0
        self.last_inbound = 0.0

    def open(self) -> None:
        """Create, connect and announce (call from the loop's thread)."""
        sock = self._ctx.socket(zmq.DEALER)
        configure(sock)
        if self._keys is not None:
            curve.as_client(sock, self._keys)
        # A fresh, unguessable routing identity per socket: the hub knows us by the name in
        # our READY, and nobody else can claim our route by connecting with that name.
        sock.setsockopt(zmq.IDENTITY, f"{self.identity}.{secrets.token_hex(8)}".encode())
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        self._sock = sock
        self._monitor = monitor
        self._readable = Readable(sock, self.drain)
        self._monitor_readable = Readable(monitor, self._drain_monitor)
        self.liveness = self.liveness_max
        self._next_heartbeat = time.monotonic() + self.heartbeat_s
        self._announce()

    def _announce(self) -> None:
        self._announced = True
        self.welcomed = False
        self._on_connect()

    def close(self) -> None:
        self.welcomed = False
        for readable in (self._readable, self._monitor_readable):
            if readable is not None:
                readable.close()
        self._readable = self._monitor_readable = None
        close_monitored(self._sock, self._monitor)
        self._sock = self._monitor = None

    def _drain_monitor(self) -> None:
        if self._monitor is None:
            return
        for frames in recv_all(self._monitor):
            event = parse_monitor_message(frames)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self.welcomed = False
                self._announced = False
                self.counters.bump("disconnects")
                self._on_down()
            elif event == zmq.EVENT_CONNECTED and not self._announced and self._sock:
                self._announce()  # a restarted peer: introduce ourselves now

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` without blocking; False (and counted) if it cannot go now."""
        if self._sock is None:
            self.counters.bump("send_while_disconnected")
            return False
        try:
            self._sock.send_multipart(protocol.encode(msg), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log_drop(
                self.counters, "send_failed", f"{type(msg).__name__} to {self.endpoint}: {exc}"
            )
            return False
        finally:
            if self._readable is not None:
                self._readable.kick()
        return True

    def drain(self) -> None:
        """Handle every message waiting now (never blocks)."""
        if self._sock is None:
            return
        batch = recv_all(self._sock)
        for frames in batch:
            self.liveness = self.liveness_max
            self._backoff = self.heartbeat_s
            self.last_inbound = time.monotonic()
            try:
                msg = protocol.decode(frames)
            except ProtocolError as exc:
                log_drop(self.counters, "malformed", exc)
                continue
            if self._announced and not self.welcomed and not isinstance(msg, Hello):
                self.welcomed = True  # (a HELLO says the opposite: it does not know us)
                self._on_welcome()
            if isinstance(msg, Heartbeat):
                continue
            self._on_message(msg)
            if self._sock is None:  # the handler closed us
                return
        if len(batch) == RECV_BATCH and self._readable is not None:
            self._readable.kick()

    def next_due(self) -> float:
        """When ``tick`` next has something to do (a heartbeat, or a reconnect)."""
        return self._reconnect_at if self._sock is None else self._next_heartbeat

    def tick(self, now: float) -> None:
        """Heartbeat, liveness and reconnect bookkeeping; call when ``next_due`` comes."""
        if self._sock is None:
            if now >= self._reconnect_at:
                self.counters.bump("reconnects")
                self.open()
            return
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.heartbeat_s
        self.liveness -= 1
        if self.liveness <= 0:
            log.warning(
                "%s: peer at %s silent, reconnecting in %.1fs",
                self.identity,
                self.endpoint,
                self._backoff,
            )
            self.close()
            self._on_down()
            self._reconnect_at = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            return
        self.send(Heartbeat(info=self._heartbeat_info()))
