"""A ``voxmesh.mesh.clock.Clock`` for tests: time moves only when the test says so."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class FakeTimer:
    def __init__(self, due: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.due = due
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """``now()`` stands still; ``advance(dt)`` moves it, firing each timer that falls due
    on the way, in due order (ties in the order they were set), with ``now()`` reading the
    timer's due time while its callback runs. Callbacks run synchronously, as the loop would
    run a timer's; a task they wake needs the test to yield (``await asyncio.sleep(0)``)."""

    def __init__(self, start: float = 1000.0) -> None:
        # Not 0: the engine reads a timestamp of 0.0 as "never" (partial_inflight_since).
        self._now = start
        self._queue: list[tuple[float, int, FakeTimer]] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    def call_later(
        self, delay: float, callback: Callable[[Unpack[Ts]], object], *args: *Ts
    ) -> FakeTimer:
        timer = FakeTimer(self._now + max(0.0, delay), callback, args)
        heapq.heappush(self._queue, (timer.due, self._seq, timer))
        self._seq += 1
        return timer

    def pending(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return sum(not t.cancelled for _, _, t in self._queue)

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not go back"
        target = self._now + seconds
        while self._queue and self._queue[0][0] <= target:
            _, _, timer = heapq.heappop(self._queue)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.due)
            timer.cancelled = True  # fired: a late cancel() is a no-op, as on the loop
            timer.callback(*timer.args)
        self._now = target

    async def wait_for(self, aw: Awaitable[T], timeout: float) -> T:
        """``asyncio.wait_for`` with the timeout on this clock: TimeoutError once the test
        has advanced ``timeout`` seconds with ``aw`` still pending."""
        task = asyncio.ensure_future(aw)
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def expire() -> None:
            if not expired.done():
                expired.set_result(None)

        timer = self.call_later(timeout, expire)
        either: set[asyncio.Future[Any]] = {task, expired}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            timer.cancel()
            expired.cancel()
        if task.done():
            return task.result()
        task.cancel()  # it unwinds on the loop's next turn, as under asyncio.wait_for
        raise TimeoutError
