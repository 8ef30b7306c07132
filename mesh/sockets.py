"""Plumbing shared by links and hubs: asyncio readiness for plain zmq sockets, counters.

Sockets stay synchronous (non-blocking sends and receives) and are driven from the asyncio
loop through the socket's edge-triggered FD. That lets a data loop drain control messages
synchronously between two frames: control is always served before data.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

import zmq

from .protocol import MAX_BODY_BYTES

log = logging.getLogger("voxmesh.mesh")

# Bounded queues: a dead peer must never make a sender block or hoard memory.
SNDHWM = 10_000
RCVHWM = 10_000
# The largest frame a peer may send: a bigger one makes ZeroMQ drop that connection before
# the message is ever buffered (a 16 MiB frame must not cost us 16 MiB).
MAX_FRAME_BYTES = MAX_BODY_BYTES + 1024
RECV_BATCH = 1000  # messages handled per wake-up before other work gets the loop
# A DEALER retries a lost connection this often (ZeroMQ's default is 100 ms): a restarted
# router is bound within ~0.3 s, and every peer should be back on it at once.
RECONNECT_IVL_MS = 10


def configure(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)


class Readable:
    """Calls ``drain`` whenever ``sock`` may have input, from the running asyncio loop.

    The zmq FD is edge-triggered and a send can consume its edge, so after every send
    the owner calls ``kick()`` to schedule one more drain.
    """

    def __init__(self, sock: zmq.Socket[bytes], drain: Callable[[], None]) -> None:
        self._sock = sock
        self._drain = drain
        self.loop = asyncio.get_running_loop()
        self._fd = int(sock.getsockopt(zmq.FD))
        self._kicked = False
        self._closed = False
        self.loop.add_reader(self._fd, self._on_ready)
        self.kick()

    def _on_ready(self) -> None:
        self._kicked = False
        if not self._closed:  # a kick scheduled before close() may still come
            self._drain()

    def kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            self.loop.call_soon(self._on_ready)

    def close(self) -> None:
        self._closed = True
        self.loop.remove_reader(self._fd)


def close_monitored(sock: zmq.Socket[bytes] | None, monitor: zmq.Socket[bytes] | None) -> None:
    """Close a socket and the PAIR its monitor writes to, neither waiting (linger 0)."""
    if sock is not None:
        sock.disable_monitor()
        sock.close(linger=0)
    if monitor is not None:
        monitor.close(linger=0)


def has_input(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message waits on ``sock`` now (ZMQ_EVENTS: no poll, no blocking)."""
    return bool(int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def recv_all(sock: zmq.Socket[bytes], limit: int = RECV_BATCH) -> list[list[bytes]]:
    """Every multipart message waiting on ``sock`` (at most ``limit``), without blocking."""
    out: list[list[bytes]] = []
    try:  # EAGAIN ends it: asking ZMQ_EVENTS before each message cost a third more per message
        while len(out) < limit:
            out.append(sock.recv_multipart(zmq.NOBLOCK))
    except zmq.Again:
        pass
    return out


class Counters(Counter[str]):
    """Named event counts (malformed, dropped, reconnects...), reported in heartbeats."""

    def bump(self, name: str, n: int = 1) -> None:
        self[name] += n


def log_drop(counters: Counters, what: str, detail: object) -> None:
    counters.bump(what)
    # Rate-limit by powers of two so a flood of garbage cannot flood the log.
    n = counters[what]
    if n & (n - 1) == 0:
        log.warning("%s (#%d): %s", what, n, detail)
