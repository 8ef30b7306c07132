"""The people-over-the-echo bench (bench/echo_human.py): which segments it takes, and what it
counts, on a conversation track made of two Piper utterances (the real recordings are the
bench's; tiny.en and the canceller are the real ones)."""

from __future__ import annotations

import numpy as np
import pytest
from speechgen import piper_wav

from voxmesh.bench import echo_human, human_speech
from voxmesh.bench.human_speech import Track
from voxmesh.bench.registry import BenchContext, Outcome

RATE = 16000


def conversation() -> Track:
    """0.5 s in, "Okay." (a backchannel); 2.5 s in, a 2 s+ interruption (a turn start)."""
    okay = piper_wav("Okay.")[0]
    stop = piper_wav("Wait, stop, that is not what I asked for at all.")[0]
    pcm = np.zeros(RATE * 8, np.float32)
    a, b = RATE // 2, RATE * 5 // 2
    pcm[a : a + okay.size] = okay / 32768
    pcm[b : b + stop.size] = stop / 32768
    mine = [(a / RATE, (a + okay.size) / RATE), (b / RATE, (b + stop.size) / RATE)]
    assert mine[0][1] - mine[0][0] <= echo_human.SHORT_S < echo_human.LONG_S <= stop.size / RATE
    return Track("call:A", "conversation", pcm, [], mine)


def test_a_backchannel_and_a_turn_start_are_counted_over_the_echo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(human_speech, "tracks_or_skip", lambda: [conversation()])
    found = echo_human.segments()
    assert [g.kind for g in found] == ["backchannel", "turn start"]
    assert found[1].clip.size == int(echo_human.START_S * RATE)  # its first 0.8 s only
    out = Outcome()
    echo_human.echo_human_scenario(BenchContext(quick=True), out)
    [fig] = out.figures
    took = {
        r.label.split(": ", 1)[1] + " " + r.params["aec"]: r.extra["took_floor"] for r in fig.rows
    }
    n = len(echo_human.AT_S)
    assert all(r.extra["windows"] == n for r in fig.rows)
    # With the canceller, "Okay." over the echo never takes the floor, and the interruption
    # always does; what the raw mic makes of them is the bench's to report.
    assert took["backchannels server"] == 0
    assert took["turn starts server"] == n
