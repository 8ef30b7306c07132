"""The per-session sending loop: the only task that writes to a session's client.

Each turn of the loop: send queued events, serve control messages (so a HOLD that has
arrived is honoured before the next frame), read the out ring, then send the next frame at
its deadline or sleep until something can change: a deadline, a control message (which
wakes us), or new frames in the ring (which nobody signals: ``RingWatcher`` polls every
idle session's ring from one task).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from voxmesh.mesh.protocol import Message
from voxmesh.mesh.ring import Slot

from .links import ClientLink, DetailedClear
from .metrics import TransportStats
from .playback import Playback

log = logging.getLogger("voxmesh.transport")

SEND_TIMEOUT_S: Final = 5.0  # a client that cannot take a frame for this long is gone


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
    ) -> None:
        self.link = link
        self.playback = Playback(slot, self, stats, session=session, lead_s=lead_s)
        self.wakeup = Wakeup()
        self.waiting_for_ring = False
        self._outbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._send_router = send_router
        self._poll_control = poll_control

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

    @property
    def backlog(self) -> int:
        """Client messages queued and not sent yet."""
        return len(self._outbox)

    async def _flush(self) -> None:
        while self._outbox:
            kind, payload = self._outbox.popleft()
            async with asyncio.timeout(SEND_TIMEOUT_S):
                if kind == "event":
                    await self.link.send_event(payload)
                    continue
                if isinstance(self.link, DetailedClear):
                    await self.link.clear_with(payload)
                else:
                    await self.link.clear()
            self.playback.clear_sent_at = time.monotonic()

    async def run(self) -> None:
        """Serve until cancelled; returns (after logging) if the client cannot be written."""
        pb = self.playback
        try:
            while True:
                self.wakeup.clear()
                await self._flush()
                self._poll_control()  # control before data
                now = time.monotonic()
                pb.try_finish_release(now)
                pb.fill(now)
                if self._outbox:
                    continue
                deadline: float | None
                if pb.chunk_ready():
                    deadline = pb.due(now)
                    if deadline <= now:
                        chunk = pb.take(now)
                        await self._flush()  # audio_start goes before its first frame
                        async with asyncio.timeout(SEND_TIMEOUT_S):
                            await self.link.send_audio(chunk.data)
                        pb.committed(chunk, time.monotonic())
                        continue
                else:
                    pb.check_starved(now)
                    deadline = _earliest(pb.starving_at(), pb.release_wait_until())
                self.waiting_for_ring = pb.wants_ring()
                try:
                    await self.wakeup.wait_until(deadline)
                finally:
                    self.waiting_for_ring = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client is gone or stuck: the session owner cleans up
            log.info("transport %s: client write failed: %r", pb.session, exc)


def _earliest(*times: float | None) -> float | None:
    real = [t for t in times if t is not None]
    return min(real) if real else None


class RingWatcher:
    """Wakes idle pacers whose out ring got frames (a TTS writes without telling us)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.pacers: set[Pacer] = set()
        self._some = asyncio.Event()

    def add(self, pacer: Pacer) -> None:
        self.pacers.add(pacer)
        self._some.set()

    def discard(self, pacer: Pacer) -> None:
        self.pacers.discard(pacer)

    async def run(self) -> None:
        while True:
            if not self.pacers:
                self._some.clear()
                await self._some.wait()
            await asyncio.sleep(self.interval_s)
            for pacer in self.pacers:
                if pacer.waiting_for_ring and pacer.playback.has_input():
                    pacer.wakeup.set()
