"""One scrape for the whole mesh: a real ``voxmesh up`` (mock TTS) and a WebSocket client.

After a spoken turn and a typed one, ``GET /metrics`` holds the router's turn metrics, the
ASR's and the TTS actor's timings (each written by its own process into the supervisor's
multiprocess dir) and the router's INFO line for each turn is in the log. A router killed
with SIGKILL is counted as a restart, and what the dead process counted stays counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from meshproc import MeshProc, mesh_up, wait_for
from promtext import sample, scrape
from speechgen import piper_wav, speech_bounds
from test_faults import kill, wait_back

from voxmesh.client import MicStream, WsClient

pytestmark = pytest.mark.timeout(180)

RATE = 16000
TURN_S = 20.0  # one spoken turn on a busy 2-core box (VAD, ASR, the mock TTS)
SENTENCE = "Please send me the report by Friday."
ACTORS = ("router", "transport", "vad", "asr", "tts0")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("metrics"), tts="mock") as running:
        yield running


def turn_line(mesh: MeshProc, session: str, source: str) -> str:
    """The router's INFO line of the session's turn (waits for it: logs are written late)."""
    pattern = re.compile(rf"INFO voxmesh\.router\.turns: turn session={session} source={source} .*")

    def found() -> str | None:
        match = pattern.search(mesh.log_text())
        return match.group(0) if match else None

    line: str = wait_for(found, 5.0, f"the {source} turn's log line")
    return line


async def test_turns_show_in_metrics_and_in_the_log(mesh: MeshProc) -> None:
    pcm, _ = piper_wav(SENTENCE)
    last_voiced = speech_bounds(pcm)[1] - 1
    async with (
        await WsClient.connect(mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        since, first_frame = client.mark(), len(client.frames)
        at = mic.queue(pcm) - pcm.size
        end = await client.wait_event("audio_end", TURN_S, since=since)
        assert end["reason"] == "done", client.types(since)
        t_last = mic.sent_time(at + last_voiced)
        assert t_last is not None
        client_v2v = client.frames[first_frame].t - t_last

        since = client.mark()
        await client.text("Hello there.")  # answered by the echo responder
        assert (await client.wait_event("audio_end", TURN_S, since=since))["reason"] == "done"
        session = client.session_id

    # A turn is counted on PLAYBACK_ENDED, a moment after the client's audio_end.
    def counted() -> str | None:
        got = scrape(mesh.url)
        done = sample(got, "voxmesh_turns_total", source="text", outcome="done")
        return got if done == 1 else None

    text = wait_for(counted, 5.0, "the text turn counted")
    assert sample(text, "voxmesh_turns_total", source="voice", outcome="done") == 1
    assert sample(text, "voxmesh_turns_total", source="text", outcome="done") == 1
    server_v2v = sample(text, "voxmesh_voice_to_voice_seconds_sum", source="voice")
    assert server_v2v is not None
    # The server's figure includes the VAD's end-of-turn wait (Smart Turn's, speech/vad.py)
    # and not the socket's delivery: close to what the client saw, never much more.
    assert 0.1 <= server_v2v <= client_v2v + 0.2, (server_v2v, client_v2v)
    assert sample(text, "voxmesh_voice_to_voice_seconds_count", source="text") == 1
    assert (sample(text, "voxmesh_asr_seconds_count", kind="final") or 0) >= 1
    assert sample(text, "voxmesh_responder_first_token_seconds_count") == 2
    assert (sample(text, "voxmesh_tts_first_audio_seconds_count") or 0) >= 2  # the TTS process
    assert sample(text, "voxmesh_transport_sessions_opened_total") == 1  # the transport's own

    voice = turn_line(mesh, session, "voice")
    timings = r" outcome=done v2v_ms=\d+\.\d eot_ms=\d+\.\d asr_ms=\d+\.\d first_token_ms=\S+"
    assert re.search(timings, voice)
    assert 'reply="' in voice and "pauses=0 stops=0" in voice
    assert "outcome=done" in turn_line(mesh, session, "text")
    assert f"session open session={session} client=ws" in mesh.log_text()
    close = re.compile(rf"session close session={session} reason=\S+ seconds=\d+\.\d replies=2")
    wait_for(lambda: close.search(mesh.log_text()), 5.0, "the session's close line")


async def test_a_killed_router_is_counted_and_what_it_counted_stays(mesh: MeshProc) -> None:
    async with await WsClient.connect(mesh.ws_url, sample_rate=RATE) as client:
        await client.say("Before the fault.")
        assert (await client.wait_event("audio_end", TURN_S))["reason"] == "done"

    # The router counts the turn when the transport tells it the playback ended, which can
    # come a moment after the client's audio_end: wait (bounded) for the count to show.
    def counted() -> str | None:
        got = scrape(mesh.url)
        done = sample(got, "voxmesh_turns_total", source="say", outcome="done")
        return got if done is not None and done >= 1 else None

    before = wait_for(counted, 5.0, "the say counted as a turn")
    said = sample(before, "voxmesh_turns_total", source="say", outcome="done")
    for name in ACTORS:
        assert sample(before, "voxmesh_actor_restarts_total", actor=name) == 0, name

    pid, _ = kill(mesh, "router")
    wait_back(mesh, "router", pid)

    after = scrape(mesh.url)
    assert sample(after, "voxmesh_actor_restarts_total", actor="router") == 1
    assert sample(after, "voxmesh_actor_restarts_total", actor="vad") == 0
    # the dead router's count is still in the sum, next to its successor's (none yet)
    assert sample(after, "voxmesh_turns_total", source="say", outcome="done") == said
