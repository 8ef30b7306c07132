"""Silero VAD stream + turn segmenter: events a router would see on real and silent audio."""

from __future__ import annotations

import numpy as np
import pytest
from speechgen import pad_silence, piper_wav, speech_bounds

from voxmesh.actors.vad import segmenter
from voxmesh.mesh.settings import VadSettings
from voxmesh.speech.vad import (
    CHUNK,
    QuietCue,
    SileroVad,
    SpeechSegmenter,
    StreamingVad,
    VadEvent,
)

RATE = 16000
FRAME = 320  # 20 ms, what the VAD actor reads from the mic ring
TOL = int(0.150 * RATE)


# --- segmenter: pure logic, probabilities made up ----------------------------------------


def run(seg: SpeechSegmenter, probs: list[float]) -> list[tuple[int, VadEvent]]:
    """(index of the chunk whose feed returned it, event) for every event."""
    out = []
    for i, p in enumerate(probs):
        out += [(i, ev) for ev in seg.feed(p, i * CHUNK)]
    return out


def seg(**kw: int | float) -> SpeechSegmenter:
    args: dict[str, int | float] = dict(min_speech_ms=64, min_silence_ms=200, speech_pad_ms=30)
    args.update(kw)
    return SpeechSegmenter(**args)


def test_segment_start_pause_end_samples_and_timing() -> None:
    probs = [0.0] * 10 + [0.9] * 20 + [0.0] * 20
    events = run(seg(), probs)
    pad = 30 * RATE // 1000
    assert [(i, e.kind) for i, e in events] == [
        (11, "speech_start"),  # confirmed after min_speech (2 chunks)
        (30, "speech_pause"),  # at once on the first silent chunk
        (36, "speech_end"),  # 7 silent chunks = 224 ms >= 200 ms
    ]
    assert events[0][1].sample == 10 * CHUNK - pad
    assert events[1][1].sample == events[2][1].sample == 30 * CHUNK + pad


def test_one_chunk_blip_is_not_speech() -> None:
    assert run(seg(), [0.0, 0.95, 0.0, 0.0, 0.95, 0.1] + [0.0] * 20) == []


def test_min_speech_zero_starts_on_first_chunk() -> None:
    events = run(seg(min_speech_ms=0), [0.0, 0.9, 0.9])
    assert [(i, e.kind) for i, e in events] == [(1, "speech_start")]


def test_the_mesh_pauses_on_one_chunk_over_the_threshold() -> None:
    # The default [vad]: a barge-in pauses the bot on Silero's first chunk over the
    # threshold, 32 ms earlier than a second chunk would (README, echo section).
    events = run(segmenter(VadSettings()), [0.0, 0.9, 0.1] + [0.0] * 40)
    assert [(i, e.kind) for i, e in events][:2] == [(1, "speech_start"), (2, "speech_pause")]


def test_hysteresis_between_thresholds() -> None:
    s = seg(min_speech_ms=0)
    # 0.4 is below threshold 0.5 (no start) but above neg_threshold 0.35 (keeps speech on).
    assert run(s, [0.4] * 5) == []
    events = run(s, [0.9, 0.4, 0.4, 0.4, 0.3])
    assert [e.kind for _, e in events] == ["speech_start", "speech_pause"]
    assert events[1][0] == 4


def test_short_gap_pauses_then_resumes_and_ends_once() -> None:
    probs = [0.9] * 10 + [0.0] * 3 + [0.9] * 10 + [0.0] * 10
    events = run(seg(min_speech_ms=0), probs)
    kinds = [e.kind for _, e in events]
    assert kinds == ["speech_start", "speech_pause", "speech_resume", "speech_pause", "speech_end"]
    assert events[2][1].sample == 13 * CHUNK  # resume at the chunk where speech came back


def test_start_pad_never_reaches_into_previous_segment() -> None:
    s = seg(min_speech_ms=0, min_silence_ms=32, speech_pad_ms=200)
    events = run(s, [0.9, 0.0, 0.0, 0.9, 0.0, 0.0])
    starts = [e.sample for _, e in events if e.kind == "speech_start"]
    ends = [e.sample for _, e in events if e.kind == "speech_end"]
    assert starts[1] >= ends[0]


def test_flush_closes_open_segment() -> None:
    s = seg(min_speech_ms=0)
    run(s, [0.9] * 5)
    assert s.in_speech
    assert s.flush(5 * CHUNK) == [
        VadEvent("speech_pause", 5 * CHUNK),
        VadEvent("speech_end", 5 * CHUNK),
    ]
    assert not s.in_speech and s.flush(6 * CHUNK) == []


# --- quiet cue: pure logic over made-up audio --------------------------------------------


def cues(cue: QuietCue, levels: list[int]) -> list[int]:
    """Where the cue fires, over 20 ms frames of a constant level each (int16)."""
    out = []
    for i, level in enumerate(levels):
        at = cue.push(np.full(FRAME, level, np.int16), i * FRAME)
        if at is not None:
            out.append(at)
    return out


def test_quiet_after_speech_cues_once_when_the_quiet_is_long_enough() -> None:
    # 40 ms wanted: two quiet 20 ms frames make it, and the cue comes at the second's end
    assert cues(QuietCue(640), [10000] * 5 + [0] * 10) == [7 * FRAME]


def test_a_closure_shorter_than_the_quiet_is_not_a_cue_and_speech_again_rearms_it() -> None:
    levels = [10000] * 5 + [0] + [10000] * 5 + [0] * 4 + [-9000] * 2 + [0] * 4
    assert cues(QuietCue(640), levels) == [13 * FRAME, 19 * FRAME]


def test_quiet_is_relative_to_the_loudest_so_far() -> None:
    # the ASR's anchoring: 2 % of the peak (speech/asr.py ANCHOR_REL)
    assert cues(QuietCue(640), [10000] * 5 + [300] * 5) == []
    assert cues(QuietCue(640), [10000] * 5 + [150] * 5) == [7 * FRAME]


def test_no_cue_when_off_or_before_any_sound() -> None:
    assert cues(QuietCue(0), [10000] * 5 + [0] * 10) == []
    assert cues(QuietCue(640), [0] * 10) == []


def test_the_cue_says_how_much_quiet_audio_it_still_needs() -> None:
    cue = QuietCue(640)
    assert cue.wanted(0) is None  # nothing loud yet: no cue to wait for
    cue.push(np.full(FRAME, 10000, np.int16), 0)  # loud up to sample 319
    assert cue.wanted(FRAME) == 640 + 1 - 1  # 40 ms after the last loud sample, exclusive
    assert cue.push(np.zeros(639, np.int16), FRAME) is None
    assert cue.wanted(FRAME + 639) == 1
    assert cue.push(np.zeros(1, np.int16), FRAME + 639) == FRAME + 640
    assert cue.wanted(FRAME + 640) is None  # told: no second cue for the same quiet
    assert QuietCue(0).wanted(0) is None


# --- the model on real audio ------------------------------------------------------------


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def feed_frames(vad: SileroVad, pcm: np.ndarray, **seg_kw: int) -> list[VadEvent]:
    stream = StreamingVad(vad, SpeechSegmenter(**seg_kw))
    events: list[VadEvent] = []
    for at in range(0, pcm.size, FRAME):
        events += stream.push(pcm[at : at + FRAME], at)
    tail: list[VadEvent] = stream.flush()
    return events + tail


@pytest.mark.parametrize(
    "text", ["The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow."]
)
def test_finds_speech_in_piper_speech(vad: SileroVad, text: str) -> None:
    speech, _ = piper_wav(text)
    audio = pad_silence(speech, 1.0, 1.0, noise=20.0)
    first, last = speech_bounds(speech, rel=0.01)
    first, last = first + RATE, last + RATE
    events = feed_frames(vad, audio)
    kinds = [e.kind for e in events]
    assert kinds[0] == "speech_start" and kinds[-1] == "speech_end", kinds
    assert kinds.count("speech_end") == 1  # one turn, not chopped up
    assert abs(events[0].sample - first) <= TOL, (events[0].sample - first) / RATE
    assert abs(events[-1].sample - last) <= TOL, (events[-1].sample - last) / RATE


@pytest.mark.parametrize("noise", [0.0, 30.0, 300.0])
def test_no_speech_in_silence_or_low_noise(vad: SileroVad, noise: float) -> None:
    audio = pad_silence(np.zeros(0, np.int16), 0.0, 4.0, noise=noise)  # ~-60 dBFS at most
    assert feed_frames(vad, audio) == []


def test_frame_size_does_not_change_result(vad: SileroVad) -> None:
    speech, _ = piper_wav("The quick brown fox jumps over the lazy dog.")
    audio = pad_silence(speech, 0.5, 0.5)
    whole = StreamingVad(vad)
    events = whole.push(audio, 0) + whole.flush()
    assert events and events == feed_frames(vad, audio)


def test_probability_is_high_in_speech_low_in_silence(vad: SileroVad) -> None:
    speech, _ = piper_wav("The quick brown fox jumps over the lazy dog.")
    stream = vad.new_stream()
    x = speech.astype(np.float32) / 32768.0
    probs = [stream.probability(x[i : i + CHUNK]) for i in range(0, x.size - CHUNK, CHUNK)]
    assert max(probs) > 0.9
    stream.reset()
    assert stream.probability(np.zeros(CHUNK, np.float32)) < 0.1
    with pytest.raises(ValueError):
        stream.probability(np.zeros(320, np.float32))


def test_streams_are_independent(vad: SileroVad) -> None:
    speech, _ = piper_wav("The quick brown fox jumps over the lazy dog.")
    x = speech.astype(np.float32) / 32768.0
    a, b = vad.new_stream(), vad.new_stream()
    chunk = x[RATE : RATE + CHUNK]
    for _ in range(5):
        a.probability(chunk)  # a hears speech, b hears nothing
    assert b.probability(np.zeros(CHUNK, np.float32)) < 0.1


def test_gap_and_overlap_in_pushed_audio(vad: SileroVad) -> None:
    stream = StreamingVad(vad)
    silence = np.zeros(2 * FRAME, np.int16)
    stream.push(silence, 0)
    assert stream.chunks == 1  # 640 samples: one 512-sample chunk, 128 buffered
    stream.push(silence[:FRAME], FRAME)  # already seen: skipped, not counted twice
    assert stream.chunks == 1
    stream.push(silence, 2 * FRAME)  # contiguous: 128 + 640 samples complete chunk two
    assert stream.chunks == 2
    stream.push(silence, 100 * FRAME)  # gap (ring overrun): chunking restarts there
    assert stream.chunks == 3
    assert stream.push(silence[:1], 102 * FRAME) == [] and stream.chunks == 3


def test_a_reader_woken_when_the_vad_wants_it_sends_the_quiet_cue_on_time(vad: SileroVad) -> None:
    # The VAD actor sleeps until ceil(wanted / FRAME) new frames are in the ring, then pushes
    # them all. Woken at the chunk cadence alone, it sent the cue up to a frame after the
    # frame that made it; now it sends it when a reader that looks at every frame does.
    for text in ("Please call me back tomorrow.", "The quick brown fox jumps over the lazy dog."):
        speech, _ = piper_wav(text)
        audio = pad_silence(speech, 0.5, 1.0, noise=20.0)
        frames = [audio[at : at + FRAME] for at in range(0, audio.size - FRAME + 1, FRAME)]
        woken, wakes = sent_cues(vad, frames, every_frame=False)
        assert woken and woken == sent_cues(vad, frames, every_frame=True)[0], text
        assert wakes < 0.75 * len(frames)  # it still sleeps between chunks


def sent_cues(
    vad: SileroVad, frames: list[np.ndarray], *, every_frame: bool
) -> tuple[list[tuple[int, int]], int]:
    """(the cue's sample, how many frames had arrived when it was sent) for each cue, and
    how many times the reader woke, frames arriving one at a time."""
    stream = StreamingVad(vad, SpeechSegmenter(), quiet_ms=40)
    sent, taken, wakes = [], 0, 0
    for arrived in range(1, len(frames) + 1):
        if not every_frame and arrived - taken < -(-stream.wanted // FRAME):
            continue  # asleep: too few frames for any event
        wakes += 1
        for i in range(taken, arrived):
            events = stream.push(frames[i], i * FRAME)
            sent += [(ev.sample, arrived) for ev in events if ev.kind == "speech_quiet"]
        taken = arrived
    return sent, wakes
