"""Micro-benchmarks of cross-process wake-ups, to pick the rings' doorbell (``make bench-micro``).

``test_round_trips`` pings one echo child per mechanism: the child waits in an asyncio loop
(``loop.add_reader``) as a mesh actor does and rings back at once; this side waits in an
asyncio loop too. A round is one round trip, so one wake-up costs about half of one. The
kinds take turns in shuffled blocks (the machine's load drifts), and the medians, p95s and
CPU per round (both processes) land in ``extra_info`` and on stdout (``-s``). The eventfd
case inherits its fds through fork; in the mesh they would have to be passed between
unrelated processes. The last tests time what a writer pays per frame when nobody waits
(no syscall: a fence and two loads) and the fence itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import random
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import psutil
import pytest
import zmq
from pytest_benchmark.fixture import BenchmarkFixture

from voxmesh.mesh.doorbell import Bells, Doorbell, fence
from voxmesh.mesh.ring import MIC_FRAME_BYTES, Geometry, RingSegment, segment_name

ROUNDS = 2000  # per kind
BLOCK = 20  # round trips of one kind in a row
TIMEOUT_S = 10.0


class Receiver:
    """Waits for a raw mechanism's fd the way ``Doorbell.wait`` does: one future per wait,
    resolved from the loop's reader callback."""

    def __init__(self, fd: int, drain: Callable[[], None], close: Callable[[], None]) -> None:
        self.fd = fd
        self._drain = drain
        self.close = close
        self._fut: asyncio.Future[None] | None = None
        self._watched = False

    async def wait(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        if not self._watched:
            loop.add_reader(self.fd, self._on_readable)
            self._watched = True
        fut = self._fut = loop.create_future()
        timer = loop.call_later(timeout_s, fut.cancel)
        try:
            await fut
        finally:
            timer.cancel()

    def _on_readable(self) -> None:
        self._drain()
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)


class Waiter(Protocol):
    async def wait(self, timeout_s: float) -> object: ...  # Doorbell's says whether it rang
    def close(self) -> None: ...


@dataclass
class Side:
    """One process's end: ``ring()`` wakes the peer's ``rx.wait()``."""

    rx: Waiter
    ring: Callable[[], None]
    close_tx: Callable[[], None]

    def close(self) -> None:
        self.close_tx()
        self.rx.close()


def _drain_fd(fd: int) -> Callable[[], None]:
    def drain() -> None:  # as Doorbell does: one read takes every ring so far
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)

    return drain


def _write_byte(fd: int) -> None:
    os.write(fd, b"\0")


def _eventfd_drain(fd: int) -> None:
    os.eventfd_read(fd)


def _send_byte(sock: socket.socket, path: str) -> None:
    sock.sendto(b"\0", path)


def _fifo(where: str, rx: str, tx: str) -> Side:
    fd = os.open(os.path.join(where, rx), os.O_RDWR | os.O_NONBLOCK)
    out = os.open(os.path.join(where, tx), os.O_RDWR | os.O_NONBLOCK)
    return Side(
        Receiver(fd, _drain_fd(fd), lambda: os.close(fd)),
        functools.partial(_write_byte, out),
        lambda: os.close(out),
    )


def _eventfd(fds: dict[str, int], rx: str, tx: str) -> Side:
    fd, out = fds[rx], fds[tx]
    return Side(
        Receiver(fd, functools.partial(_eventfd_drain, fd), lambda: None),
        lambda: os.eventfd_write(out, 1),
        lambda: None,
    )


def _dgram(where: str, rx: str, tx: str) -> Side:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(os.path.join(where, rx))
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(where, tx)

    def drain() -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.recv(64)

    return Side(
        Receiver(sock.fileno(), drain, sock.close),
        functools.partial(_send_byte, out, path),
        out.close,
    )


def _zmq(where: str, rx: str, tx: str) -> Side:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for sock in (pull, push):
        sock.setsockopt(zmq.LINGER, 0)
    pull.bind(f"ipc://{os.path.join(where, rx)}")
    push.connect(f"ipc://{os.path.join(where, tx)}")

    def drain() -> None:  # the FD is edge-triggered: take everything EVENTS says is there
        while int(pull.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            pull.recv()

    def close() -> None:
        push.close()
        pull.close()
        ctx.term()

    return Side(
        Receiver(int(pull.getsockopt(zmq.FD)), drain, close),
        lambda: push.send(b"\0") and None,
        lambda: None,
    )


def _doorbell(where: str, peer: Any) -> Side:
    """What the mesh uses: this side's ``Doorbell``, and ``Bells`` to ring the peer's
    (``peer`` is a pipe: bell ids are swapped over it)."""
    seg = os.path.join(where, "seg")
    bell = Doorbell(seg)
    peer.send(bell.id)
    theirs = int(peer.recv())
    bells = Bells(seg)
    return Side(bell, lambda: bells.ring(theirs), bells.close)


KINDS = ("fifo", "eventfd", "dgram", "zmq", "doorbell")


def _side(kind: str, where: str, fds: dict[str, int], peer: Any, child: bool) -> Side:
    """The child waits on "ping" and rings "pong"; this side the other way round."""
    rx, tx = ("ping", "pong") if child else ("pong", "ping")
    if kind == "fifo":
        return _fifo(where, rx, tx)
    if kind == "eventfd":
        return _eventfd(fds, rx, tx)
    if kind == "dgram":
        return _dgram(where, rx, tx)
    if kind == "zmq":
        return _zmq(where, rx, tx)
    return _doorbell(where, peer)


def _echo(kind: str, where: str, fds: dict[str, int], peer: Any) -> None:
    """The child: wait, ring back, forever (the parent kills it)."""

    async def serve() -> None:
        side = _side(kind, where, fds, peer, child=True)
        peer.send("listening")
        while True:
            await side.rx.wait(3600)
            side.ring()

    asyncio.run(serve())


@contextlib.contextmanager
def echo_pair(kind: str) -> Iterator[tuple[Side, psutil.Process]]:
    """This side's end and the echo child, always torn down."""
    with tempfile.TemporaryDirectory(prefix="vxbell-") as where:
        fds: dict[str, int] = {}
        if kind == "fifo":
            for name in ("ping", "pong"):
                os.mkfifo(os.path.join(where, name))
        if kind == "eventfd":
            fds = {n: os.eventfd(0, os.EFD_NONBLOCK) for n in ("ping", "pong")}
        mp = multiprocessing.get_context("fork")
        mine, theirs = mp.Pipe()
        child = mp.Process(target=_echo, args=(kind, where, fds, theirs), daemon=True)
        side: Side | None = None
        child.start()
        try:
            side = _side(kind, where, fds, mine, child=False)
            assert mine.poll(TIMEOUT_S), "the echo child is not listening"
            mine.recv()
            yield side, psutil.Process(child.pid)
        finally:
            if side is not None:
                side.close()
            child.kill()
            child.join(TIMEOUT_S)
            for fd in fds.values():
                os.close(fd)


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _interleaved(pairs: dict[str, tuple[Side, psutil.Process]]) -> dict[str, dict[str, float]]:
    """Round trips of every kind in shuffled blocks (the machine's load drifts; each kind
    gets its share of every moment): per kind the median and p95 of one round trip and
    the CPU both processes spent per round, in µs."""
    rng = random.Random(7)
    times: dict[str, list[float]] = {kind: [] for kind in pairs}
    cpu = dict.fromkeys(pairs, 0.0)
    loop = asyncio.new_event_loop()
    try:
        for block in range(-1, ROUNDS // BLOCK):  # block -1 warms every pair up
            kinds = list(pairs)
            rng.shuffle(kinds)
            for kind in kinds:
                side, child = pairs[kind]
                cpu0 = _cpu(child) + time.process_time()
                for _ in range(BLOCK):
                    t0 = time.perf_counter()
                    side.ring()
                    loop.run_until_complete(side.rx.wait(TIMEOUT_S))
                    if block >= 0:
                        times[kind].append(time.perf_counter() - t0)
                if block >= 0:
                    cpu[kind] += _cpu(child) + time.process_time() - cpu0
    finally:
        loop.close()
    return {
        kind: {
            "median_us": round(1e6 * statistics.median(ts), 1),
            "p95_us": round(1e6 * statistics.quantiles(ts, n=20)[-1], 1),
            "cpu_us_per_round": round(1e6 * cpu[kind] / len(ts), 1),
        }
        for kind, ts in times.items()
    }


def test_round_trips(benchmark: BenchmarkFixture) -> None:
    with contextlib.ExitStack() as stack:
        pairs = {kind: stack.enter_context(echo_pair(kind)) for kind in KINDS}
        # pytest-benchmark has no type hints
        results = benchmark.pedantic(  # type: ignore[no-untyped-call]
            _interleaved, args=(pairs,), rounds=1, iterations=1
        )
    benchmark.extra_info.update(results)
    for kind, r in results.items():
        print(f"{kind:9s} round trip median {r['median_us']:7.1f} µs  p95 {r['p95_us']:7.1f} µs"
              f"  cpu/round {r['cpu_us_per_round']:7.1f} µs")  # fmt: skip


@pytest.fixture
def segment() -> Iterator[RingSegment]:
    seg = RingSegment.create(segment_name(os.getpid(), "bellmicro"), Geometry(slots=1))
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


def test_mic_write_with_nobody_waiting(benchmark: BenchmarkFixture, segment: RingSegment) -> None:
    mic = segment.slots[0].mic
    payload = bytes(MIC_FRAME_BYTES)
    benchmark(mic.write, payload)


def test_fence(benchmark: BenchmarkFixture) -> None:
    benchmark(fence)
