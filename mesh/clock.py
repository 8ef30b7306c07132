"""Time as a dependency: code that reads the time or sets a timer takes a ``Clock``.

``LoopClock`` is the real one: ``time.monotonic()`` (the timebase the actors' ``every``
ticks and heartbeats already use) and timers on the running asyncio loop. Tests pass a
fake that advances only when told to, so a 300 ms timeout costs them no wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, TypeVarTuple, Unpack

_Ts = TypeVarTuple("_Ts")


class Timer(Protocol):
    """A pending ``call_later``: ``cancel()`` it and the callback never runs."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic timebase (only differences mean anything)."""
        ...

    def call_later(
        self, delay: float, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts
    ) -> Timer:
        """Run ``callback(*args)`` once ``delay`` seconds have passed on this clock."""
        ...


class LoopClock:
    """The real clock: ``time.monotonic()``, timers on the loop running at the call."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(
        self, delay: float, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts
    ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)
