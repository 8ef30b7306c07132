"""What a client has received from the mesh: JSON events stamped on arrival, and waiting.

``EventLog`` is the part every client shares, whatever carries the events (a WebSocket,
LiveKit's data channel): ``record`` appends an event with its ``time.monotonic()``
receive time and wakes every waiter; ``wait_for``/``wait_event`` return the first matching
event at or after a ``mark()``, so a caller marks, sends, then waits, and never misses an
answer that came quickly. Nothing polls: a waiter wakes on every ``wake()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EventPredicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class Event:
    t: float  # receive time, time.monotonic()
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        """The event's ``type`` field."""
        return str(self.data.get("type", ""))


def event_is(kind: str, **fields: Any) -> EventPredicate:
    """A predicate: an event of type ``kind`` with the given field values."""
    return lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in fields.items())


class EventLog:
    """Every event received, in order, and waiting for the ones to come."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = asyncio.Event()  # set by the owner when nothing more can arrive
        self._changed = asyncio.Event()

    def record(self, data: dict[str, Any], t: float | None = None) -> Event:
        event = Event(time.monotonic() if t is None else t, data)
        self.events.append(event)
        self.wake()
        return event

    def wake(self) -> None:
        """Something arrived (or the source closed): every waiter looks again."""
        self._changed.set()

    async def _next_change(self) -> None:
        # Clearing and starting to wait happen in one step of the loop, so a wake() after
        # this waiter looked always reaches it (the caller bounds the wait).
        self._changed.clear()
        await self._changed.wait()

    # --- looking at what came ---------------------------------------------------------------

    def mark(self) -> int:
        """The current event count: pass as ``since`` to consider only newer events."""
        return len(self.events)

    def types(self, since: int = 0) -> list[str]:
        return [e.kind for e in self.events[since:]]

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == kind]

    def received(self, kind: str, since: int = 0) -> list[Event]:
        """The events of type ``kind`` at index >= ``since``, with their receive times."""
        return [e for e in self.events[since:] if e.kind == kind]

    def user_turns(self, since: int = 0) -> list[str]:
        """The user's turns as final transcripts at index >= ``since``: one that
        ``continues`` replaces the last (docs/client-protocol.md), so a turn the user went
        on with after the bot began its reply is one turn, its whole text."""
        turns: list[str] = []
        for e in self.received("transcript", since):
            if not e.data.get("final"):
                continue
            if e.data.get("continues") and turns:
                turns[-1] = str(e.data["text"])
            else:
                turns.append(str(e.data["text"]))
        return turns

    def find(self, pred: EventPredicate, since: int = 0) -> Event | None:
        """The first event at index >= ``since`` matching ``pred``, if one came."""
        return next((e for e in self.events[since:] if pred(e.data)), None)

    # --- waiting ------------------------------------------------------------------------------

    async def next_event(self, pred: EventPredicate, timeout: float, *, since: int = 0) -> Event:
        """The first event at index >= ``since`` matching ``pred``, waiting up to ``timeout``;
        ConnectionError if the source closes first."""
        checked = since
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = self.find(pred, checked)
                    if found is not None:
                        return found
                    checked = len(self.events)
                    if self.closed.is_set():
                        raise ConnectionError("socket closed while waiting")
                    await self._next_change()
        except TimeoutError:
            raise TimeoutError(
                f"no matching event within {timeout} s; got {self.types(since)}"
            ) from None

    async def wait_for(
        self, pred: EventPredicate, timeout: float, *, since: int = 0
    ) -> dict[str, Any]:
        """``next_event``'s JSON object."""
        return (await self.next_event(pred, timeout, since=since)).data

    async def wait_event(
        self, kind: str, timeout: float = 5.0, *, since: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """The first event of type ``kind`` (with the given field values) at >= ``since``."""
        return await self.wait_for(event_is(kind, **fields), timeout, since=since)

    async def wait_until(
        self, cond: Callable[[], bool], timeout: float, what: str = "", *, poll_s: float = 0.01
    ) -> None:
        """Wait until ``cond()`` holds: re-checked on every arrival and every ``poll_s`` (for
        conditions on time, such as a player model having played everything)."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, poll_s)):
                    await self._next_change()
