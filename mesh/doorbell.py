"""Doorbells: a ring reader (or a writer waiting for space) sleeps until it has work.

Each waiting process owns a ``Doorbell``: a named FIFO beside the ring segment,
``/dev/shm/<segment>.bell-<pid>-<n>``, that its asyncio loop watches (``add_reader``). To
sleep, it *arms* a ring (``FrameRing.arm`` in mesh/ring.py writes its bell id and a target
count into the ring's header), checks the ring once more and awaits ``Doorbell.wait()``. The
other side, after each frame it publishes (or frees), reads that header and, when the target
is reached, writes one byte to the bell through ``Bells``: once per arming, so a burst of
frames costs one wake-up, and a ring nobody waits on costs a fence and two loads (no
syscall).

Why a FIFO. bench/micro/test_doorbell_bench.py times a round trip between two processes,
each woken in an asyncio loop by ``add_reader`` (medians of three runs on a busy 2-core
VM; one wake-up is half a round trip): eventfd 66-91 µs, FIFO 78-105 µs (these doorbells:
89-101), unix datagram socket 145-152 µs, ZeroMQ PUSH/PULL over ipc 221-234 µs; CPU of both
processes per round trip 86-106, 97-119 (112), 170 and 262-274 µs. An eventfd is 5-15 µs
cheaper per wake-up, but it has no name: every writer process would have to be handed each
waiter's fd (SCM_RIGHTS from a server in every waiter, a handshake in the writer's hot
path), and a writer could not tell a dead waiter from a live one (a write to an orphaned
eventfd succeeds; to a FIFO nobody reads it fails). A FIFO is found by its path, so any
process that attaches the segment can ring any bell. The datagram socket costs more per
ring, and ZeroMQ's I/O thread adds a thread hop at each end.

No lost wake-up: the waiter stores its arming and then loads the ring's count; the ringer
stores the count and then loads the arming. x86 lets a load pass the same CPU's earlier
store, so both sides put ``fence()`` between the two, and at least one of them sees the
other's store. A wake-up can still be missed when a ringer dies between its frame and its
ring, or a writer that does not know bells (docs/protocol.md §2) wrote the frame, so every
wait also ends after ``SAFETY_S``: a fallback, not a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import itertools
import os
import threading
from typing import Final

SAFETY_S: Final = 0.5  # a waiter looks at its rings at least this often, rung or not
MAX_OPEN: Final = 64  # bells a ringer keeps open; past that it forgets them all and reopens

_fence_lock = threading.Lock()
_serial = itertools.count(1)


def fence() -> None:
    """A full memory barrier: acquiring a lock is an atomic read-modify-write, which x86
    orders after every earlier store and before every later load (CPython has no fence)."""
    _fence_lock.acquire()
    _fence_lock.release()


def bell_path(segment_path: str, bell: int) -> str:
    """Where bell ``bell`` (pid << 16 | n) of the segment at ``segment_path`` lives."""
    return f"{segment_path}.bell-{bell >> 16}-{bell & 0xFFFF}"


def remove_bells(segment_path: str) -> None:
    """Unlink every bell of a segment (its waiters may have died without closing them)."""
    for path in glob.glob(glob.escape(segment_path) + ".bell-*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Bell:
    """An in-process wake-up: ``wait()`` returns when ``wake()`` is called or after
    ``timeout_s``. Every task waiting at that moment wakes (each checks its own condition).
    A ``wake()`` that finds nobody waiting is kept for the next ``wait()``, so checking and
    waiting need no lock. (A remote ring's writer waits on one for its credit.)"""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[bool]] = set()
        self._pending = False

    def wake(self) -> None:
        """Wake every task in ``wait()`` now (or the next one): a change in this process."""
        if not self._waiters:
            self._pending = True
            return
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            _settle(fut, True)

    def _first_wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hook: the first wait, in the loop that will wait (a Doorbell watches its FIFO)."""

    async def wait(self, timeout_s: float | None = SAFETY_S) -> bool:
        """Sleep until rung or woken (True) or until ``timeout_s`` (False; None: no timer,
        for a waiter with nothing armed); arm the rings (and check them) first."""
        if self._pending:
            self._pending = False
            return True
        loop = asyncio.get_running_loop()
        self._first_wait(loop)
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.add(fut)
        timer = None if timeout_s is None else loop.call_later(timeout_s, _settle, fut, False)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.discard(fut)


class Doorbell(Bell):
    """This process's bell for its rings: a ``Bell`` that other processes ring through its
    FIFO (``Bells``), or that ``SAFETY_S`` passing wakes. A process has one for all its
    rings."""

    def __init__(self, segment_path: str) -> None:
        super().__init__()
        self.id = (os.getpid() << 16) | (next(_serial) & 0xFFFF)
        self.path = bell_path(segment_path, self.id)
        self.rings = 0  # wake-ups that came through the FIFO
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a dead process that had our pid
        os.mkfifo(self.path, 0o600)
        try:
            # O_RDWR: the FIFO never reads as closed while no ringer has it open.
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            os.unlink(self.path)
            raise
        self._loop: asyncio.AbstractEventLoop | None = None

    def fileno(self) -> int:
        """The FIFO's read end: readable while a ring is not taken yet."""
        return self._fd

    def _first_wait(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            loop.add_reader(self._fd, self._on_readable)
            self._loop = loop

    def _on_readable(self) -> None:
        # One read takes every ring so far; a ring after it leaves the FIFO readable, and
        # the loop calls us again.
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 4096)
        self.rings += 1
        self.wake()

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.wake()  # nobody must sleep on a closed bell until the safety timer


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class Bells:
    """The ringing side: writes one byte to a bell, keeping each bell it rang open."""

    def __init__(self, segment_path: str) -> None:
        self.segment_path = segment_path
        self._fds: dict[int, int] = {}

    def ring(self, bell: int) -> None:
        fd = self._fds.get(bell)
        if fd is None:
            if len(self._fds) >= MAX_OPEN:  # bells of waiters long gone: start afresh
                self.close()
            try:
                fd = os.open(
                    bell_path(self.segment_path, bell), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                )
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENXIO):
                    return  # no such bell, or nobody has it open: its waiter is gone
                raise
            self._fds[bell] = fd
        try:
            os.write(fd, b"\0")
        except BlockingIOError:
            pass  # the FIFO is full of rings not drained yet: one more would change nothing
        except BrokenPipeError:  # its waiter closed it (or died): forget it
            del self._fds[bell]
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
