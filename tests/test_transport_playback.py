"""The transport's playback state machine, driven synchronously with a fake clock."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from voxmesh.actors.transport.metrics import TransportStats
from voxmesh.actors.transport.playback import Chunk, Playback
from voxmesh.mesh.protocol import Message, PlaybackEnded, PlaybackStarted
from voxmesh.mesh.ring import (
    FLAG_FIRST,
    FLAG_LAST,
    OUT_FRAME_BYTES,
    OUT_FRAME_SAMPLES,
    Geometry,
    RingSegment,
    Slot,
    segment_name,
)

LEAD_S = 0.06


class Sink:
    def __init__(self) -> None:
        self.client: list[dict[str, Any]] = []
        self.routed: list[Message] = []

    def client_event(self, event: dict[str, Any]) -> None:
        self.client.append(event)

    def client_clear(self, detail: dict[str, Any]) -> None:
        self.client.append({"type": "clear", **detail})

    def router(self, msg: Message) -> None:
        self.routed.append(msg)

    def types(self) -> list[str]:
        return [e["type"] for e in self.client]


@pytest.fixture
def slot() -> Iterator[Slot]:
    seg = RingSegment.create(
        segment_name(os.getpid(), "p" + secrets.token_hex(4)), Geometry(1, 8, 32)
    )
    try:
        s = seg.slots[0]
        s.claim()
        yield s
    finally:
        seg.close()
        seg.unlink()


def frame(value: int) -> bytes:
    return value.to_bytes(2, "little", signed=True) * OUT_FRAME_SAMPLES


def write(
    slot: Slot, values: list[int], *, utt: int = 1, epoch: int = 0, last: bool = True
) -> None:
    for k, v in enumerate(values):
        flags = (FLAG_FIRST if k == 0 else 0) | (FLAG_LAST if last and k == len(values) - 1 else 0)
        slot.out.write(frame(v), epoch=epoch, utterance=utt, flags=flags)


def drain(pb: Playback, now: float) -> list[Chunk]:
    """Send every chunk that is due at ``now``."""
    out = []
    pb.fill(now)
    while pb.chunk_ready() and pb.due(now) <= now:
        chunk = pb.take(now)
        pb.committed(chunk, now)
        out.append(chunk)
        pb.fill(now)
    return out


def make(slot: Slot) -> tuple[Playback, Sink, TransportStats]:
    sink, stats = Sink(), TransportStats()
    return Playback(slot, sink, stats, session="s", lead_s=LEAD_S), sink, stats


def test_frames_go_out_on_an_absolute_grid_with_a_lead(slot: Slot) -> None:
    pb, sink, stats = make(slot)
    write(slot, list(range(10)))
    assert len(drain(pb, 100.0)) == 4  # frame 0 now, frames 1..3 inside the 60 ms lead
    assert pb.due(100.0) == pytest.approx(100.02)
    assert len(drain(pb, 100.0199)) == 0
    assert len(drain(pb, 100.05)) == 2  # late wake-ups catch up without drifting the grid
    assert pb.due(100.05) == pytest.approx(100.06)
    assert len(drain(pb, 101.0)) == 4
    assert sink.types() == ["audio_start", "audio_end"]
    assert [type(m) for m in sink.routed] == [PlaybackStarted, PlaybackEnded]
    assert stats.frames_sent == 10 and stats.late_frames == 4  # those sent at 101.0


def test_each_utterance_is_paced_from_its_own_first_frame(slot: Slot) -> None:
    pb, _, stats = make(slot)
    write(slot, [1, 2], utt=1)
    assert len(drain(pb, 10.0)) == 2
    write(slot, list(range(10)), utt=2)  # the next reply, seconds later
    assert len(drain(pb, 15.0)) == 4  # paced again, not all at once to catch up a stale grid
    assert pb.due(15.0) == pytest.approx(15.02)
    assert stats.late_frames == 0


def test_underrun_is_counted_once_and_reanchors(slot: Slot) -> None:
    pb, sink, stats = make(slot)
    write(slot, [1, 2], last=False)
    assert len(drain(pb, 0.0)) == 2
    assert pb.starving_at() == pytest.approx(0.04)
    pb.check_starved(0.03)
    assert stats.underruns == 0
    pb.check_starved(0.05)
    pb.check_starved(0.06)
    assert stats.underruns == 1
    slot.out.write(frame(3), epoch=0, utterance=1, flags=FLAG_LAST)
    assert len(drain(pb, 0.5)) == 1  # re-anchored: goes out at once, not "late"
    assert stats.late_frames == 0 and sink.types()[-1] == "audio_end"


def test_a_new_utterance_ends_one_that_never_got_its_last_frame(slot: Slot) -> None:
    pb, sink, _ = make(slot)
    write(slot, [1, 2], utt=1, last=False)
    write(slot, [3], utt=2)
    chunks = drain(pb, 0.0)
    assert [c.utterance for c in chunks] == [1, 1, 2]
    assert [(e["type"], e["utterance_id"]) for e in sink.client] == [
        ("audio_start", 1),
        ("audio_end", 1),
        ("audio_start", 2),
        ("audio_end", 2),
    ]


def test_frames_of_a_newer_epoch_mean_a_missed_stop(slot: Slot) -> None:
    pb, sink, stats = make(slot)
    write(slot, [1, 2], utt=1, last=False)
    drain(pb, 0.0)
    write(slot, [5], utt=2, epoch=3)
    drain(pb, 0.01)
    assert pb.epoch == 3 and slot.epoch == 3
    assert sink.types() == ["audio_start", "clear", "audio_end", "audio_start", "audio_end"]
    assert sink.client[2]["reason"] == "interrupted"
    pb.stop(3, 0.02)  # the STOP that arrives late changes nothing
    assert stats.stale_control == 1 and sink.types()[-1] == "audio_end"


def test_stop_keeps_frames_of_the_new_epoch_already_in_the_ring(slot: Slot) -> None:
    pb, _, stats = make(slot)
    write(slot, [1, 2, 3, 4, 5, 6], utt=1)
    drain(pb, 0.0)
    write(slot, [9], utt=2, epoch=1)  # the TTS started the next turn before we saw STOP
    pb.stop(1, 0.001)
    assert stats.stale_frames == 1  # frame 6 of the cut utterance (5 was read already)
    chunks = drain(pb, 0.002)
    assert [c.data for c in chunks] == [frame(9)]


def test_hold_then_stop_reports_heard_from_acks(slot: Slot) -> None:
    pb, sink, _ = make(slot)
    write(slot, list(range(8)), utt=1)
    pb.on_ack(0, 0.0)
    drain(pb, 0.0)
    drain(pb, 0.041)  # frames 0..5 sent
    pb.on_ack(1500, 0.041)
    pb.hold(0, 0.041, 0.041)
    pb.hold(0, 0.042, 0.042)  # a duplicate HOLD changes nothing
    assert sink.types() == ["audio_start", "clear"]
    assert sink.client[1]["t_issued"] == 0.041 and sink.client[1]["t_last_frame"] == 0.041
    pb.stop(1, 0.1)
    assert sink.types() == ["audio_start", "clear", "audio_end"]  # no second clear
    ended = sink.routed[-1]
    assert isinstance(ended, PlaybackEnded)
    assert ended.reason == "interrupted"
    assert ended.sent_samples == 6 * OUT_FRAME_SAMPLES and ended.heard_samples == 1500


def test_release_rewinds_to_the_acked_sample_and_reframes(slot: Slot) -> None:
    pb, _, stats = make(slot)
    write(slot, list(range(1, 7)), utt=1)
    pb.on_ack(0, 0.0)
    sent = drain(pb, 0.0)  # 4 frames
    pb.hold(0, 0.0, 0.001)
    pb.clear_sent_at = 0.002
    pb.release(0, 0.003)
    assert not pb.try_finish_release(0.004)  # waits for the client's post-clear ack
    pb.on_ack(1000, 0.005)
    assert pb.try_finish_release(0.006)
    rest = drain(pb, 1.0) + drain(pb, 1.02)
    stream = b"".join(c.data for c in sent)[: 1000 * 2] + b"".join(c.data for c in rest)
    original = b"".join(frame(v) for v in range(1, 7))
    assert stream[: len(original)] == original
    assert len(stream) - len(original) == (1000 % OUT_FRAME_SAMPLES) * 2  # padding
    assert stats.resent_samples == 4 * OUT_FRAME_SAMPLES - 1000
    assert all(len(c.data) == OUT_FRAME_BYTES for c in rest)


def test_frames_that_beat_their_hold_are_announced_again_at_the_release(slot: Slot) -> None:
    """A fast TTS's first frames of a reply pre-generated under HOLD went out before the
    HOLD came: it cuts them, and the router hears PLAYBACK_STARTED again when the reply
    really plays (it had been told while the user was still talking)."""
    pb, sink, _ = make(slot)
    write(slot, list(range(1, 7)), utt=1)
    pb.on_ack(0, 0.0)
    assert len(drain(pb, 0.0)) == 4
    pb.hold(0, 0.0, 0.001)
    assert sink.types() == ["audio_start", "clear"]
    pb.clear_sent_at = 0.002
    pb.release(0, 0.5)
    pb.on_ack(0, 0.501)  # the client dropped all it had
    assert pb.try_finish_release(0.502)
    drain(pb, 0.51)
    started = [m for m in sink.routed if isinstance(m, PlaybackStarted)]
    assert [(m.utterance, m.t) for m in started] == [(1, 0.0), (1, 0.51)]
    assert sink.types() == ["audio_start", "clear"]  # the client's audio_start: once


def test_release_gives_up_waiting_for_an_ack(slot: Slot) -> None:
    pb, _, _ = make(slot)
    write(slot, list(range(8)), utt=1)
    pb.on_ack(0, 0.0)
    drain(pb, 0.0)
    pb.hold(0, 0.0, 0.0)
    pb.clear_sent_at = 0.001
    pb.release(0, 0.01)
    assert not pb.try_finish_release(0.2)
    assert pb.try_finish_release(0.3)


def test_old_epoch_control_is_ignored(slot: Slot) -> None:
    pb, sink, stats = make(slot)
    pb.stop(2, 0.0)
    pb.hold(1, 0.0, 0.0)
    pb.release(1, 0.0)
    assert not pb.held and stats.stale_control == 2
    assert sink.client == []  # nothing was ever sent, so nothing to clear
