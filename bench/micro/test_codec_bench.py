"""Micro-benchmarks of the control protocol codec (``make bench-micro``)."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import Pause, Speak

PAUSE = Pause(session="s-0123456789", epoch=7)
SPEAK = Speak(
    session="s-0123456789",
    slot=3,
    epoch=7,
    utterance=2,
    text="What is the weather like in Paris today?",
    first=True,
    last=False,
)


def test_encode_pause(benchmark: BenchmarkFixture) -> None:
    frames = benchmark(protocol.encode, PAUSE)
    assert protocol.decode(frames) == PAUSE
    assert sum(len(f) for f in frames) < 64  # "a PAUSE is a ~30-byte message"


def test_decode_pause(benchmark: BenchmarkFixture) -> None:
    frames = protocol.encode(PAUSE)
    assert benchmark(protocol.decode, frames) == PAUSE


def test_encode_speak(benchmark: BenchmarkFixture) -> None:
    assert protocol.decode(benchmark(protocol.encode, SPEAK)) == SPEAK


def test_decode_speak(benchmark: BenchmarkFixture) -> None:
    frames = protocol.encode(SPEAK)
    assert benchmark(protocol.decode, frames) == SPEAK
