"""The first voice path end to end: `voxmesh up` (mock TTS) and a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import statistics
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from meshproc import MeshProc, mesh_up

from voxmesh.actors.tts.adapters import mock_pcm, mock_samples
from voxmesh.client import WsClient
from voxmesh.speech.chunking import split_for_speech

FRAME_BYTES = 1920
TEXT = "Hello there, this is the first voice path of the mesh speaking to you."


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("e2e"), tts="mock") as running:
        yield running


def expected_reply(text: str) -> np.ndarray:
    """The exact samples the mock voice sends for a reply (chunked as the router does)."""
    return mock_pcm(sum(mock_samples(chunk) for chunk in split_for_speech(text)))


async def test_say_streams_paced_frames(mesh: MeshProc) -> None:
    async with await WsClient.connect(mesh.ws_url) as client:
        assert client.ready is not None and client.ready["sample_rate"] == 48000
        await client.say(TEXT)
        start = await client.wait_event("audio_start", 5)
        end = await client.wait_event("audio_end", 15)
        assert end["reason"] == "done" and end["utterance_id"] == start["utterance_id"]
        assert {len(f.data) for f in client.frames} == {FRAME_BYTES}
        want = expected_reply(TEXT)
        got = np.frombuffer(client.audio(), np.int16)
        assert np.array_equal(got[: want.size], want)
        assert not got[want.size :].any(), "only silence pads the last frame"
        times = client.frame_times()
        intervals = np.diff(times) * 1000
        assert 15 <= statistics.median(intervals) <= 25
        # real time with a small lead: the whole reply takes about its own duration
        duration = want.size / 48000
        assert duration - 0.3 <= times[-1] - times[0] <= duration + 1.0
        reply = client.events_of("reply")
        assert reply and reply[-1]["text"] == TEXT


async def test_interrupt_stops_frames_within_a_frame(mesh: MeshProc) -> None:
    async with await WsClient.connect(mesh.ws_url) as client:
        await client.say(TEXT * 3)
        await client.wait_event("audio_start", 5)
        await client.wait_until(lambda: len(client.frames) >= 25, 5, "25 frames")
        since = client.mark()
        await client.interrupt()
        clear = await client.wait_event("clear", 2, since=since)
        end = await client.wait_event("audio_end", 2, since=since)
        assert end["reason"] == "interrupted"
        # pause latency as the server saw it: no frame after the HOLD was issued
        assert clear["t_last_frame"] - clear["t_issued"] < 0.020
        n = len(client.frames)
        await client.wait_event("state", 2, since=since, state="listening")
        await asyncio.sleep(0.3)  # absence can only be shown by waiting a while
        assert len(client.frames) == n, "frames kept coming after the interruption"
        # and the session still works
        since = client.mark()
        await client.say("Again.")
        assert (await client.wait_event("audio_end", 5, since=since))["reason"] == "done"


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (b"\x00\x01" * 100, "hello_required"),
        ('{"type": "hello", "sample_rate": 1234}', "bad_rate"),
        ("this is not json", "bad_json"),
    ],
)
async def test_bad_input_before_hello_gets_an_error(
    mesh: MeshProc, send: str | bytes, code: str
) -> None:
    async with await WsClient.connect(mesh.ws_url, sample_rate=None) as client:
        if isinstance(send, bytes):
            await client.send_bytes(send)
        else:
            await client.send_str(send)
        err = await client.wait_event("error", 3)
        assert err["code"] == code and err["message"]
        await client.hello(16000)  # the session lives on
        await client.say("Fine.")
        assert (await client.wait_event("audio_end", 5))["reason"] == "done"


async def test_bad_input_after_hello_gets_errors_and_the_session_lives(mesh: MeshProc) -> None:
    async with await WsClient.connect(mesh.ws_url) as client:
        cases = [
            ('{"type": "dance"}', "unknown_type"),
            ("{not json", "bad_json"),
            ('{"type": "say"}', "missing_field"),
            ('{"type": "say", "text": 5}', "bad_field"),
            ("[1, 2]", "bad_message"),
            ('{"type": "hello", "sample_rate": 16000}', "already_hello"),
        ]
        for text, code in cases:
            since = client.mark()
            await client.send_str(text)
            err = await client.wait_event("error", 3, since=since)
            assert err["code"] == code, (text, err)
        since = client.mark()
        await client.send_bytes(b"\x00" * (1048576 + 2))
        assert (await client.wait_event("error", 3, since=since))["code"] == "too_large"
        since = client.mark()
        await client.say("Still here.")
        assert (await client.wait_event("audio_end", 5, since=since))["reason"] == "done"


def test_health_and_metrics(mesh: MeshProc) -> None:
    with urllib.request.urlopen(mesh.url + "health", timeout=5) as resp:
        assert resp.status == 200
        health = json.loads(resp.read())
    assert health["mesh_ready"] is True
    assert set(health["actors"]) >= {"transport", "vad", "asr", "tts0"}
    with urllib.request.urlopen(mesh.url + "metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "voxmesh_transport_sessions" in text
