"""Streaming resampler: lengths, frequency preserved, pieces identical to one-shot."""

from __future__ import annotations

import numpy as np
import pytest

from voxmesh.speech.resample import StreamResampler


def sine(freq: float, rate: int, seconds: float, amp: float = 10000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def run_pieces(rs: StreamResampler, x: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, at = [], 0
    while at < x.size:
        n = int(rng.integers(1, 2000))
        out.append(rs.push(x[at : at + n]))
        at += n
    out.append(rs.flush())
    return np.concatenate(out)


@pytest.mark.parametrize(
    ("src", "dst"), [(8000, 16000), (22050, 16000), (44100, 16000), (48000, 16000), (22050, 48000)]
)
def test_length_ratio(src: int, dst: int) -> None:
    x = sine(440.0, src, 1.3)
    y = run_pieces(StreamResampler(src, dst), x)
    assert y.dtype == np.int16
    assert abs(y.size - x.size * dst / src) <= 2


@pytest.mark.parametrize(("src", "dst", "freq"), [(44100, 16000, 1000.0), (22050, 48000, 3000.0)])
def test_sine_stays_a_sine_at_its_frequency(src: int, dst: int, freq: float) -> None:
    y = run_pieces(StreamResampler(src, dst), sine(freq, src, 1.0)).astype(np.float64)
    mid = y[dst // 10 : -dst // 10]  # skip filter edges
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(mid.size)))
    peak_hz = np.argmax(spectrum) * dst / mid.size
    assert abs(peak_hz - freq) < 2.0
    # Nearly all energy at that one frequency: no clicks or aliasing from piecewise pushes.
    band = spectrum[max(0, np.argmax(spectrum) - 5) : np.argmax(spectrum) + 6]
    assert (band**2).sum() / (spectrum**2).sum() > 0.999
    assert abs(np.abs(mid).max() - 10000) < 300


def test_pieces_equal_one_shot() -> None:
    x = sine(700.0, 44100, 0.5)
    one = StreamResampler(44100, 16000)
    whole = np.concatenate([one.push(x), one.flush()])
    assert np.array_equal(run_pieces(StreamResampler(44100, 16000), x, seed=3), whole)


def test_same_rate_passes_through_and_flush_resets() -> None:
    rs = StreamResampler(16000, 16000)
    x = sine(440.0, 16000, 0.1)
    assert rs.passthrough and np.array_equal(rs.push(x), x) and rs.flush().size == 0
    rs2 = StreamResampler(48000, 16000)
    a = run_pieces(rs2, x)
    assert np.array_equal(run_pieces(rs2, x), a)  # reusable after flush


def test_rejects_float_input() -> None:
    with pytest.raises(TypeError):
        StreamResampler(48000, 16000).push(np.zeros(10, np.float32))
