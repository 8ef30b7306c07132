"""The actor base: links to the router and the supervisor, one asyncio loop, clean stop.

An actor is embeddable: it takes an optional ``zmq.Context`` and its place in the mesh
(``MeshPlace``: explicit endpoints) and never reads configuration itself. ``handle()``
runs synchronously for each control message; data loops call ``poll_control()`` between
frames so that a PAUSE is served before the next frame is written, whatever is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import zmq

from . import auth
from .link import Link
from .protocol import Goodbye, Hello, Message, Ready, Shutdown
from .sockets import Counters, log
from .spec import MeshPlace

TICK_MAX_S = 0.5  # the bookkeeping loop sleeps until the next timer or heartbeat, this at most


@dataclass
class _Timer:
    interval_s: float
    fn: Callable[[float], None]
    next_fire: float = 0.0  # due at once


class Actor:
    kind: ClassVar[str] = "actor"

    def __init__(
        self,
        name: str,
        place: MeshPlace,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.name = name
        self.place = place
        self.secret = place.secret  # mesh/auth.py: proves to the hubs that we belong here
        self.router_endpoint = place.router
        self.supervisor_endpoint = place.supervisor
        self.heartbeat_s = place.heartbeat_s
        self.liveness = place.liveness
        self._own_context = context is None
        self.context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self.counters = Counters()
        self.links: dict[str, Link] = {}
        self.started = False
        self._stop: asyncio.Event | None = None
        self._timers: list[_Timer] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- hooks for subclasses ---------------------------------------------------------------

    async def prepare(self) -> None:
        """Load what takes long (models) without claiming anything shared (no socket bound,
        no ring attached): a warm standby runs this long before it is promoted."""

    async def on_start(self) -> None:
        """Bind servers, attach rings... Ready is announced after this returns."""

    async def on_stop(self) -> None:
        """Release what on_start took."""

    def handle(self, msg: Message) -> None:
        """Serve one control message from the router (synchronous: schedule long work)."""
        self.counters.bump("unhandled")

    def handle_supervisor(self, msg: Message) -> None:
        """Serve a message from the supervisor other than SHUTDOWN and HELLO."""
        self.counters.bump("unhandled")

    def on_router_connect(self) -> None:
        """The router (re)learned about us: re-send whatever state it needs."""

    def on_router_down(self) -> None:
        """The router went away (its process died, or it stopped answering)."""

    def on_router_welcome(self) -> None:
        """The router acknowledged our READY: it knows us (again)."""

    def info(self) -> dict[str, Any]:
        """Heartbeat payload (load, sessions, models...)."""
        return {}

    # --- services ---------------------------------------------------------------------------

    def send(self, msg: Message) -> bool:
        """Send to the router."""
        link = self.links.get("router")
        if link is None:
            self.counters.bump("no_router")
            return False
        return link.send(msg)

    def poll_control(self) -> None:
        """Serve every control message that has arrived (call between frames)."""
        for link in self.links.values():
            link.drain()

    def every(self, interval_s: float, fn: Callable[[float], None]) -> None:
        """Call ``fn(now)`` about every ``interval_s``."""
        self._timers.append(_Timer(interval_s, fn))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a task owned by the actor: kept referenced, cancelled at stop, errors logged."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters.bump("task_errors")
            log.error("%s: task failed", self.name, exc_info=task.exception())

    def stop(self) -> None:
        """Ask the loop to finish (safe from signal handlers via loop.call_soon_threadsafe)."""
        if self._stop is not None:
            self._stop.set()

    # --- the loop ---------------------------------------------------------------------------

    def _ready(self) -> Ready:
        token = auth.token_for(self.secret, self.name) if self.secret else ""
        return Ready(name=self.name, kind=self.kind, pid=os.getpid(), info=self.info(), token=token)

    def _link(self, which: str, endpoint: str, on_connect: Callable[[], None]) -> Link:
        return Link(
            self.context,
            endpoint,
            self.name,
            lambda msg: self._dispatch(which, msg),
            on_connect,
            heartbeat_s=self.heartbeat_s,
            liveness=self.liveness,
            counters=self.counters,
            heartbeat_info=self.info,
            on_down=self.on_router_down if which == "router" else lambda: None,
            on_welcome=self.on_router_welcome if which == "router" else lambda: None,
            keys=self.place.curve() if which == "router" else None,
        )

    def _announce(self, which: str) -> None:
        link = self.links[which]
        link.send(self._ready())
        if which == "router":
            self.on_router_connect()

    def _dispatch(self, which: str, msg: Message) -> None:
        if isinstance(msg, Shutdown):
            log.info("%s: shutdown requested", self.name)
            self.stop()
        elif isinstance(msg, Hello):
            self._announce(which)
        else:
            handler = self.handle if which == "router" else self.handle_supervisor
            try:
                handler(msg)
            except Exception:  # one bad message must never kill the actor
                self.counters.bump("handler_errors")
                log.exception("%s: error handling %s", self.name, type(msg).__name__)

    async def run(self, wait_to_join: Awaitable[bool] | None = None) -> None:
        """Start, announce, serve until stop(), then shut down cleanly.

        A warm standby passes ``wait_to_join``: it loads its models (``prepare``) and then
        waits for it before it starts; False means it will not be needed: stop."""
        self._stop = asyncio.Event()
        try:
            await self.prepare()
            if wait_to_join is not None and not await wait_to_join:
                return
            await self.on_start()
            self.started = True
            for which, endpoint in (
                ("router", self.router_endpoint),
                ("supervisor", self.supervisor_endpoint),
            ):
                if endpoint:
                    self.links[which] = self._link(
                        which, endpoint, functools.partial(self._announce, which)
                    )
                    self.links[which].open()
            while not self._stop.is_set():
                now = time.monotonic()
                for link in self.links.values():
                    link.tick(now)
                for timer in list(self._timers):  # a callback may add timers
                    if now >= timer.next_fire:
                        timer.next_fire = now + timer.interval_s
                        timer.fn(now)
                # Sleep until something is due (a wake-up, not a fixed-rate poll).
                due = min(
                    [t.next_fire for t in self._timers]
                    + [link.next_due() for link in self.links.values()],
                    default=now + TICK_MAX_S,
                )
                timeout = min(max(due - time.monotonic(), 0.0), TICK_MAX_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for link in self.links.values():
            link.send(Goodbye(reason="stopping"))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            if self.started:
                await self.on_stop()
        finally:
            for link in self.links.values():
                link.close()
            self.links.clear()
            if self._own_context:
                self.context.term()
