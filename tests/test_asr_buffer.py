"""The ASR's mic buffer (``actors/asr.py`` ``MicBuffer``): a fixed array used as a ring.

Its contract is the plain version it replaced, kept here as the model: append every piece
at its absolute position (a gap is silence, a piece that overlaps what is kept loses its
overlap), keep only the last ``keep`` samples, and ``span`` is what is kept of a range.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from voxmesh.actors.asr import MicBuffer


class PlainBuffer:
    """The model: one growing array, trimmed from the front."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.start = 0
        self.data = np.zeros(0, np.int16)

    @property
    def end(self) -> int:
        return self.start + self.data.size

    def append(self, at: int, pcm: np.ndarray) -> None:
        if at > self.end:
            pcm = np.concatenate([np.zeros(at - self.end, np.int16), pcm])
        elif at < self.end:
            pcm = pcm[self.end - at :]
        self.data = np.concatenate([self.data, pcm])
        if self.data.size > self.keep:
            drop = self.data.size - self.keep
            self.data = self.data[drop:]
            self.start += drop

    def span(self, start: int, end: int) -> np.ndarray:
        lo, hi = max(start, self.start) - self.start, min(end, self.end) - self.start
        return self.data[lo:hi] if hi > lo else np.zeros(0, np.int16)


# (gap before the piece: negative overlaps what came before, length of the piece)
pieces = st.lists(st.tuples(st.integers(-40, 60), st.integers(0, 50)), max_size=30)
# (start, length) of the spans asked for afterwards
spans = st.lists(st.tuples(st.integers(-20, 400), st.integers(0, 120)), max_size=8)


@settings(max_examples=200, deadline=None)
@given(keep=st.integers(1, 64), ops=pieces, spans=spans)
def test_the_ring_buffer_keeps_what_the_plain_one_keeps(
    keep: int, ops: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> None:
    ring, plain = MicBuffer(keep), PlainBuffer(keep)
    rng = np.random.default_rng(keep)
    for gap, n in ops:
        at = max(0, plain.end + gap)
        pcm = rng.integers(-32768, 32767, n, dtype=np.int16)
        ring.append(at, pcm)
        plain.append(at, pcm)
        assert (ring.start, ring.end) == (plain.start, plain.end)
    for start, length in spans:
        assert np.array_equal(ring.span(start, start + length), plain.span(start, start + length))
    assert np.array_equal(ring.span(0, ring.end), plain.data)


def test_a_span_is_a_copy_that_later_appends_do_not_change() -> None:
    buf = MicBuffer(keep=8)
    buf.append(0, np.arange(1, 7, dtype=np.int16))
    span = buf.span(2, 6)
    buf.append(6, np.full(8, -1, np.int16))  # overwrites every slot of the array
    assert span.tolist() == [3, 4, 5, 6]
    assert buf.span(0, 100).tolist() == [-1] * 8 and buf.start == 6
