"""The per-session sending loop: the only task that writes to a session's client.

Each turn of the loop: send queued events, serve control messages (so a HOLD that has
arrived is honoured before the next frame), read the out ring, then send the next frame at
its deadline or sleep until something can change: a deadline, a control message (which
wakes us), or new frames in the ring (the TTS's write rings the doorbell that
``RingWatcher`` waits on for every idle session, mesh/doorbell.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from voxmesh.mesh.doorbell import SAFETY_S, Doorbell
from voxmesh.mesh.protocol import Message
from voxmesh.mesh.ring import OUT_READER, Slot
from voxmesh.mesh.settings import ServerSettings

from .links import ClientLink, DetailedClear
from .metrics import TransportStats
from .playback import Playback

log = logging.getLogger("voxmesh.transport")

SLOW_READER_S: Final = ServerSettings.slow_reader_s
# epoll's timeout is whole milliseconds, rounded up (selectors.EpollSelector), so a timer
# set for a frame's deadline fires 0-1 ms after it: waking 1 ms early and sending a frame
# due within that ms centres the error on the grid (the client's lead absorbs 1 ms early).
EARLY_S: Final = 0.001

# A slow reader is a client whose write has been held back for ``slow_reader_s``. This is
# the cleanest signal we have: a write blocks only on the connection's own flow control
# (once the kernel's buffers are full, the transport's user-space buffer grows; past its 64
# KiB high-water mark aiohttp waits for it to drain, checking every 256 KiB written, so at
# most ~300 KiB, 3 s of audio, are queued), so it fires exactly when the client has not
# taken our bytes for that long, counts frames and events alike (they queue behind the
# blocked write), needs no private aiohttp state, and works for every ClientLink. Each
# write only notes when it began; one timer per pacer looks every STALL_CHECKS-th of
# ``slow_reader_s`` (an ``asyncio.timeout`` around every write was 16 % of the transport's
# samples at 16 sessions: a timer armed and cancelled 50 times a second per session), so a
# stuck write is found after 1 to 1 + 1/STALL_CHECKS times ``slow_reader_s``.
STALL_CHECKS: Final = 4


class Wakeup:
    """A one-waiter event with a deadline, cheaper than Event + wait_for per frame."""

    def __init__(self) -> None:
        self._set = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait_until(self, deadline: float | None) -> None:
        """Return at ``deadline`` (time.monotonic) or at the next set(), whichever first."""
        if self._set:
            self._set = False
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._fut = fut
        timer = None
        if deadline is not None:
            timer = loop.call_at(loop.time() + (deadline - time.monotonic()), _resolve, fut)
        try:
            await fut
        finally:
            self._fut = None
            self._set = False
            if timer is not None:
                timer.cancel()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Pacer:
    """Drives one session's ``Playback`` and owns every write to its client link."""

    def __init__(
        self,
        link: ClientLink,
        slot: Slot,
        stats: TransportStats,
        *,
        session: str,
        lead_s: float,
        send_router: Callable[[Message], bool],
        poll_control: Callable[[], None],
        slow_reader_s: float = SLOW_READER_S,
    ) -> None:
        self.link = link
        self.slow_reader_s = slow_reader_s
        self.slow_reader = False  # run() ended because the client stopped taking writes
        self.playback = Playback(slot, self, stats, session=session, lead_s=lead_s)
        self.wakeup = Wakeup()
        self.waiting_for_ring = False
        self.watcher: RingWatcher | None = None  # who wakes us for ring frames (add())
        self._outbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._send_router = send_router
        self._poll_control = poll_control
        self._writing_since: float | None = None  # the write in progress began then
        self._stalled = False  # run()'s task was cancelled by _check_stall
        self._task: asyncio.Task[None] | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    # --- PlaybackSink (and the session's own events) ----------------------------------------

    def client_event(self, event: dict[str, Any]) -> None:
        self._outbox.append(("event", event))
        self.wakeup.set()

    def client_clear(self, detail: dict[str, Any]) -> None:
        self._outbox.append(("clear", detail))
        self.wakeup.set()

    def router(self, msg: Message) -> None:
        self._send_router(msg)

    # --- the loop ---------------------------------------------------------------------------

    async def _write(self, write: Awaitable[None]) -> None:
        """One write to the client, watched by _check_stall."""
        self._writing_since = time.monotonic()
        try:
            await write
        finally:
            self._writing_since = None

    def _check_stall(self) -> None:
        since, task = self._writing_since, self._task
        stuck = since is not None and time.monotonic() - since >= self.slow_reader_s
        if stuck and task is not None:
            self._stalled = True
            task.cancel()  # run() ends with slow_reader set
            return
        loop = asyncio.get_running_loop()
        self._stall_timer = loop.call_later(self.slow_reader_s / STALL_CHECKS, self._check_stall)

    @property
    def backlog(self) -> int:
        """Client messages queued and not sent yet."""
        return len(self._outbox)

    async def _flush(self) -> None:
        while self._outbox:
            kind, payload = self._outbox.popleft()
            if kind == "event":
                await self._write(self.link.send_event(payload))
                continue
            if isinstance(self.link, DetailedClear):
                await self._write(self.link.clear_with(payload))
            else:
                await self._write(self.link.clear())
            self.playback.clear_sent_at = time.monotonic()

    async def run(self) -> None:
        """Serve until cancelled; returns (after logging) if the client cannot be written."""
        pb = self.playback
        self._task = asyncio.current_task()
        self._stalled = False
        self._check_stall()  # arms the watch
        try:
            while True:
                self.wakeup.clear()
                await self._flush()
                self._poll_control()  # control before data
                now = time.monotonic()
                pb.try_finish_release(now)
                seen = pb.ring.head
                pb.fill(now)
                if self._outbox:
                    continue
                deadline: float | None
                if pb.chunk_ready():
                    deadline = pb.due(now) - EARLY_S
                    if deadline <= now:
                        chunk = pb.take(now)
                        await self._flush()  # audio_start goes before its first frame
                        await self._write(self.link.send_audio(chunk.data))
                        pb.committed(chunk, time.monotonic())
                        continue
                else:
                    pb.check_starved(now)
                    deadline = _earliest(pb.starving_at(), pb.release_wait_until())
                self.waiting_for_ring = pb.wants_ring()
                watcher = self.watcher
                if self.waiting_for_ring and watcher is not None and watcher.arm(self, seen):
                    self.waiting_for_ring = False
                    continue  # a frame came while we looked: take it
                try:
                    await self.wakeup.wait_until(deadline)
                finally:
                    self.waiting_for_ring = False
        except asyncio.CancelledError:
            task = self._task
            # Ours alone (not the session's own cancel as well): the client stopped reading.
            if not (self._stalled and task is not None and task.uncancel() == 0):
                raise
            self.slow_reader = True
            log.info(
                "transport %s: slow reader: a write waited %.1f s", pb.session, self.slow_reader_s
            )
        except Exception as exc:  # the client is gone or stuck: the session owner cleans up
            log.info("transport %s: client write failed: %r", pb.session, exc)
        finally:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
            self._task = None


def _earliest(*times: float | None) -> float | None:
    real = [t for t in times if t is not None]
    return min(real) if real else None


class RingWatcher:
    """Wakes idle pacers whose out ring got frames: a pacer that waits for frames arms its
    ring with our doorbell (``arm``), the TTS's next write rings it, and this one task wakes
    every waiting pacer that has input. The doorbell's safety timer runs only while there
    are sessions."""

    def __init__(self) -> None:
        self.bell: Doorbell | None = None  # set by run()
        self.pacers: set[Pacer] = set()

    def add(self, pacer: Pacer) -> None:
        self.pacers.add(pacer)
        pacer.watcher = self
        if self.bell is not None:
            self.bell.wake()  # from no timer to the safety timer

    def discard(self, pacer: Pacer) -> None:
        self.pacers.discard(pacer)

    def arm(self, pacer: Pacer, seen: int) -> bool:
        """Have our bell rung when the pacer's ring gets a frame past ``seen`` (its head when
        the pacer last read it); True if it has one already."""
        ring = pacer.playback.ring
        if self.bell is None:  # not running yet: nobody can ring
            return ring.head > seen
        return ring.arm(OUT_READER, self.bell, seen + 1)

    async def run(self, bell: Doorbell) -> None:
        self.bell = bell
        while True:
            await bell.wait(SAFETY_S if self.pacers else None)
            for pacer in self.pacers:
                if pacer.waiting_for_ring and pacer.playback.has_input():
                    pacer.wakeup.set()
