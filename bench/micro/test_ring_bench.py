"""Micro-benchmarks of the shared-memory rings (``make bench-micro``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from voxmesh.mesh.ring import (
    MIC_FRAME_BYTES,
    OUT_FRAME_BYTES,
    Geometry,
    MicReader,
    RingSegment,
    segment_name,
)


@pytest.fixture
def segment() -> Iterator[RingSegment]:
    seg = RingSegment.create(segment_name(os.getpid(), "micro"), Geometry(slots=1))
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


def test_out_ring_write_then_read_one_frame(
    benchmark: BenchmarkFixture, segment: RingSegment
) -> None:
    out = segment.slots[0].out
    payload = bytes(range(256)) * (OUT_FRAME_BYTES // 256) + bytes(OUT_FRAME_BYTES % 256)

    def cycle() -> bytes | None:
        out.write(payload, epoch=3, flags=1)
        frame = out.read()
        return None if frame is None else frame.data

    assert benchmark(cycle) == payload
    assert out.queued() == 0


def test_mic_ring_write_then_read_one_frame(
    benchmark: BenchmarkFixture, segment: RingSegment
) -> None:
    mic = segment.slots[0].mic
    reader = MicReader(mic)
    payload = bytes(MIC_FRAME_BYTES)

    def cycle() -> int:
        mic.write(payload)
        frame = reader.read()
        return -1 if frame is None else len(frame.data)

    assert benchmark(cycle) == MIC_FRAME_BYTES
    assert reader.lost == 0
