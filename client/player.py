"""A model of the page's audio player, so a client hears what a user would.

Received samples play out in real time: a buffer that drains at ``rate`` samples per second
and pauses when empty; ``clear`` drops what has not been played yet. ``played_samples`` is
what a ``played`` ack reports.
"""

from __future__ import annotations

from .audio import OUT_RATE


class Player:
    """A real-time playout model: a buffer drained at ``rate`` samples per second."""

    def __init__(self, rate: int = OUT_RATE) -> None:
        self.rate = rate
        self.buffer = bytearray()  # received, not yet played
        self.played = bytearray()  # everything played, in order
        self.played_samples = 0
        self.dropped_samples = 0
        self._t: float | None = None
        self._frac = 0.0

    def advance(self, now: float) -> None:
        if self._t is None or not self.buffer:
            self._t, self._frac = now, 0.0  # idle: the clock restarts with the next sample
            return
        exact = (now - self._t) * self.rate + self._frac
        n = int(exact)
        self._frac = exact - n
        self._t = now
        n = min(n, len(self.buffer) // 2)
        self.played += self.buffer[: 2 * n]
        del self.buffer[: 2 * n]
        self.played_samples += n

    def feed(self, now: float, pcm: bytes) -> None:
        self.advance(now)
        self.buffer += pcm

    def clear(self, now: float) -> int:
        """Drop what has not been played; returns how many samples were dropped."""
        self.advance(now)
        n = len(self.buffer) // 2
        self.buffer.clear()
        self.dropped_samples += n
        return n

    def drained(self) -> bool:
        return not self.buffer
