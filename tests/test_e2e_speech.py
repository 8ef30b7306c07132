"""Real speech through a real ``voxmesh up``: what a user hears and sees.

Speech is made at test time with Piper and streamed over the WebSocket the way a microphone
would (20 ms packets in real time, silence between utterances). One mesh with Piper TTS
serves the tests whose reply must be real speech; one with the mock TTS serves the test
that counts samples. The echo responder repeats what it heard, so a reply's words are known.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soxr
from meshproc import MeshProc, mesh_up
from speechgen import piper_wav, speech_bounds

from voxmesh.actors.tts.adapters import mock_pcm, mock_samples
from voxmesh.client import MicStream, WsClient
from voxmesh.speech.asr import WhisperAsr
from voxmesh.speech.wer import word_error_rate

pytestmark = pytest.mark.timeout(180)

RATE = 16000
MAX_WER = 0.25
TURN_S = 20.0  # generous deadline for one turn (speech, ASR, TTS) on a busy 2-core box
SENTENCE = "Please send me the report by Friday."
OTHER_SENTENCE = "My brother plays the guitar every evening."
LONG_REPLY = (
    "Once upon a time there was a lighthouse keeper who counted the ships every night, "
    "and he wrote each one down in a little blue book that he kept beside his bed."
)
BARGE_IN = "Please wait a moment."  # no comma: a pause there may end the turn
MAX_BARGE_IN_S = 1.5
# One mock chunk (a single sentence of six words): the reply is mock_pcm(mock_samples(...)).
MOCK_REPLY = "Seventeen extraordinary hippopotamuses wandered through Massachusetts."
# The first 180 ms of a Piper "ah", synthesized without Piper's random noise: the VAD fires
# on it and Whisper hears no word in it (checked for every 32 ms chunk alignment and window).
BURST = ("Ah.", 0.18)


@pytest.fixture(scope="module")
def piper_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    # Steady Piper: the replies these tests transcribe are the same audio every run (with
    # its sampling noise tiny.en once heard "the guitar" as "but get to our").
    config = {"tts": {"steady": True}}
    with mesh_up(tmp_path_factory.mktemp("piper"), tts="piper", config=config) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def mock_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("mock"), tts="mock") as mesh:
        yield mesh


@pytest.fixture(scope="module")
def whisper() -> WhisperAsr:
    return WhisperAsr(cpu_threads=1)


def final_transcripts(client: WsClient) -> list[str]:
    return [str(e["text"]) for e in client.events_of("transcript") if e.get("final")]


def to_16k(pcm48: bytes) -> np.ndarray:
    x = np.frombuffer(pcm48, "<i2").astype(np.float32) / 32768.0
    return np.asarray(soxr.resample(x, 48000, RATE), np.float32)


def event_time(client: WsClient, pred: Any, since: int = 0) -> float:
    """Receive time of the first event at index >= since matching pred."""
    return next(e.t for e in client.events[since:] if pred(e.data))


async def speak_turn(client: WsClient, mic: MicStream, text: str) -> dict[str, Any]:
    """Say ``text`` into the mic; returns the reply's ``audio_end`` once it has played."""
    since = client.mark()
    pcm, _ = piper_wav(text)
    mic.queue(pcm)
    await client.wait_for(
        lambda e: e.get("type") == "transcript" and bool(e.get("final")), TURN_S, since=since
    )
    return await client.wait_event("audio_end", TURN_S, since=since)


async def test_spoken_turns_are_transcribed_and_answered_in_intelligible_speech(
    piper_mesh: MeshProc, whisper: WhisperAsr
) -> None:
    async with (
        await WsClient.connect(piper_mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        for turn, text in enumerate([SENTENCE, OTHER_SENTENCE]):
            since, first_frame = client.mark(), len(client.frames)
            end = await speak_turn(client, mic, text)

            heard = [str(e.data["text"]) for e in client.events[since:] if e.data.get("final")]
            assert len(heard) == 1 and word_error_rate(text, heard[0]) <= MAX_WER, heard
            replies = [e.data["text"] for e in client.events[since:] if e.data["type"] == "reply"]
            assert replies == heard  # the echo responder
            assert end["reason"] == "done"
            assert len(client.events_of("audio_start")) == turn + 1
            frames = client.frames[first_frame:]
            seconds = len(frames) * 0.02
            assert seconds >= 0.5, "less than half a second of reply audio"
            # Played out in real time (a small lead), not dumped in a burst.
            assert frames[-1].t - frames[0].t >= 0.8 * seconds - 0.1
            audio = b"".join(f.data for f in frames)
            said = await asyncio.to_thread(whisper.transcribe, to_16k(audio))
            assert word_error_rate(text, said) <= MAX_WER, f"the reply says {said!r}"


async def test_barge_in_stops_the_reply_and_hands_the_turn_to_the_user(
    piper_mesh: MeshProc,
) -> None:
    speech, _ = piper_wav(BARGE_IN)
    onset = speech_bounds(speech)[0]
    async with (
        await WsClient.connect(piper_mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        await client.say(LONG_REPLY)
        start = await client.wait_event("audio_start", TURN_S)
        await client.wait_until(lambda: len(client.frames) >= 40, TURN_S, "0.8 s of the reply")
        since, frames_before = client.mark(), len(client.frames)
        at = mic.queue(speech) - speech.size  # mic position where the speech file begins

        end = await client.wait_event("audio_end", TURN_S, since=since)
        assert end == {**end, "utterance_id": start["utterance_id"], "reason": "interrupted"}
        types = client.types(since)
        assert "clear" in types[: types.index("audio_end")], types
        await client.wait_event("state", TURN_S, since=since, state="user_speaking")

        t_onset = mic.sent_time(at + onset)
        assert t_onset is not None
        t_end = event_time(client, lambda e: e.get("type") == "audio_end", since)
        reply_frames = [f.t for f in client.frames[frames_before:] if f.t <= t_end]
        t_last = reply_frames[-1] if reply_frames else client.frames[frames_before - 1].t
        assert t_last - t_onset <= MAX_BARGE_IN_S, f"barge-in took {t_last - t_onset:.3f} s"

        # The user's words are answered next; no frame of the old reply comes in between.
        n_end = len(client.frames)
        nxt = await client.wait_event("audio_start", TURN_S, since=since)
        assert nxt["utterance_id"] != start["utterance_id"]
        t_next = event_time(client, lambda e: e.get("type") == "audio_start", since)
        assert all(f.t >= t_next for f in client.frames[n_end:])
        assert not [f for f in client.frames[frames_before:] if t_end < f.t < t_next]
        heard = final_transcripts(client)
        assert heard and word_error_rate(BARGE_IN, heard[-1]) <= MAX_WER, heard


async def test_short_noise_pauses_then_resumes_without_losing_a_sample(
    mock_mesh: MeshProc,
) -> None:
    text, seconds = BURST
    pcm = piper_wav(text)[0]
    first = speech_bounds(pcm)[0]
    burst = pcm[first : first + int(seconds * RATE)]
    total = mock_samples(MOCK_REPLY)
    async with (
        await WsClient.connect(mock_mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        await client.say(MOCK_REPLY)
        await client.wait_event("audio_start", TURN_S)
        assert client.player is not None
        await client.wait_until(lambda: client.player.played_samples >= 48000 // 2, TURN_S)
        since = client.mark()
        mic.queue(burst)

        end = await client.wait_event("audio_end", TURN_S, since=since)
        assert end["reason"] == "done", [e.data for e in client.events[since:]]
        await client.wait_event("state", TURN_S, since=since, state="listening")
        events = [e.data for e in client.events[since:]]
        assert "clear" in client.types(since), f"the burst did not pause the reply: {events}"
        states = [e["state"] for e in events if e["type"] == "state"]
        assert states == ["paused", "speaking", "listening"], events
        await client.wait_until(client.player.drained, 5, "the player to play everything")
        played = np.frombuffer(client.played_audio(), "<i2")
        assert client.player.dropped_samples > 0  # the clear did drop buffered audio

    assert played.size >= total
    np.testing.assert_array_equal(played[:total], mock_pcm(total))
    tail = played[total:]
    assert tail.size < 2 * 960 and not tail.any(), "more than the last frame's padding"


async def test_two_sessions_do_not_hear_each_other(piper_mesh: MeshProc) -> None:
    async def converse(text: str) -> tuple[list[str], list[str], int]:
        async with (
            await WsClient.connect(piper_mesh.ws_url, sample_rate=RATE) as client,
            MicStream(client, RATE) as mic,
        ):
            end = await speak_turn(client, mic, text)
            assert end["reason"] == "done"
            replies = [str(e["text"]) for e in client.events_of("reply")]
            return final_transcripts(client), replies, len(client.frames)

    (heard_a, reply_a, frames_a), (heard_b, reply_b, frames_b) = await asyncio.gather(
        converse(SENTENCE), converse(OTHER_SENTENCE)
    )
    assert len(heard_a) == 1 and word_error_rate(SENTENCE, heard_a[0]) <= MAX_WER, heard_a
    assert len(heard_b) == 1 and word_error_rate(OTHER_SENTENCE, heard_b[0]) <= MAX_WER, heard_b
    assert reply_a == heard_a and reply_b == heard_b
    assert frames_a > 25 and frames_b > 25  # each got its own spoken reply
