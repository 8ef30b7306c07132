"""A worker's data socket: one DEALER to the session host's bridge, fresh after each loss.

Audio crosses hosts on a ZeroMQ socket of its own (docs/protocol.md section 5), never the
control link. Both ends of it keep per-stream state, a TTS writer its credit and a mic
reader its subscriptions, which a bridge that restarts has forgotten. So once a connection
that had completed its handshake is lost, the socket is replaced by a fresh one (a new
routing identity at the bridge, nothing stale queued in it) and ``on_reopen`` runs: the
owner starts its streams again from scratch there. A peer whose handshake never succeeds
(a key the mesh does not allow) keeps its one socket and ZeroMQ's own reconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import curve, protocol
from .protocol import Message, ProtocolError
from .sockets import Counters, Readable, close_monitored, configure, log, log_drop, recv_all

_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class DataSocket:
    """Call ``open()`` from the loop's thread; ``on_message`` gets every decoded message."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        keys: curve.ClientKeys | None,
        counters: Counters,
        on_message: Callable[[Message], None],
        on_reopen: Callable[[], None] = lambda: None,
    ) -> None:
        self.endpoint = endpoint
        self.counters = counters
        self.sent_bytes = 0  # bytes handed to the socket (the bench's bytes/s)
        self._ctx = context
        self._keys = keys
        self._on_message = on_message
        self._on_reopen = on_reopen
        self._sock: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._readables: list[Readable] = []
        self._up = False  # this socket's connection completed its handshake
        self._closed = False

    def open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        configure(sock)
        if self._keys is not None:
            curve.as_client(sock, self._keys)
        monitor = sock.get_monitor_socket(_EVENTS)
        sock.connect(self.endpoint)
        self._sock, self._monitor, self._up = sock, monitor, False
        self._readables = [Readable(sock, self._drain), Readable(monitor, self._drain_monitor)]

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` without blocking; False (counted) when it cannot go now."""
        if self._sock is None:
            self.counters.bump("data_closed")
            return False
        frames = protocol.encode(msg)
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the bridge is unreachable and the queue full
            log_drop(
                self.counters, "data_dropped", f"{type(msg).__name__} to {self.endpoint}: {exc}"
            )
            return False
        finally:
            self._readables[0].kick()  # a send can consume the FD's edge
        self.sent_bytes += sum(len(f) for f in frames)
        return True

    def _drain(self) -> None:
        if self._sock is None:
            return
        for frames in recv_all(self._sock):
            try:
                msg = protocol.decode(frames)
            except ProtocolError as exc:
                log_drop(self.counters, "malformed", f"from the bridge: {exc}")
                continue
            self._on_message(msg)

    def _drain_monitor(self) -> None:
        if self._monitor is None:
            return
        for frames in recv_all(self._monitor):
            event = parse_monitor_message(frames)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._up = True
            elif event == zmq.EVENT_DISCONNECTED and self._up:
                self._up = False
                # Not from inside this socket's own callback: the loop replaces it next.
                asyncio.get_running_loop().call_soon(self._reopen)

    def _reopen(self) -> None:
        if self._closed:
            return
        log.warning("data socket to %s lost: a fresh one, streams start again", self.endpoint)
        self.counters.bump("data_reopened")
        self._close_socket()
        self.open()
        self._on_reopen()

    def _close_socket(self) -> None:
        for readable in self._readables:
            readable.close()
        self._readables = []
        close_monitored(self._sock, self._monitor)
        self._sock = self._monitor = None

    def close(self) -> None:
        self._closed = True
        self._close_socket()
