"""LiveKit through the real mesh: ``voxmesh up --livekit`` starts livekit-server on loopback,
and a Python rtc client does what the browser does (``POST /session``, join, mic track).

Real VAD, Whisper and Piper (echo responder); user speech is Piper's. The server is the one
``make livekit`` builds (the tests fail with that hint when it is missing).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from livekit import api
from lkclient import AGENT, TOPIC, LkClient
from lkserver import TEST_SECRET
from meshproc import MeshProc, free_port, mesh_up, toml_text, wait_for
from promtext import sample, scrape
from speechgen import pad_silence, piper_wav, speech_bounds

from voxmesh.actors.transport.livekit_bridge import receive_stats
from voxmesh.client import event_is
from voxmesh.mesh.settings import Settings
from voxmesh.speech.wer import word_error_rate
from voxmesh.supervisor.livekit import LiveKitService
from voxmesh.supervisor.services import ServiceUnavailable

QUESTION = "What is the weather like in Paris today?"
INTERRUPTION = "Please stop talking for a moment."
MAX_TAIL_S = 0.8  # agent audio still arriving after `clear` (the WebSocket stops in a frame)
LONG_SAY = (
    "Here is a fairly long answer, so that audio keeps streaming for a good while: the quick "
    "brown fox jumps over the lazy dog, again and again, until somebody interrupts it."
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    # A known secret, so the test can ask the server which rooms exist.
    config = {"livekit": {"api_secret": TEST_SECRET}}
    with mesh_up(
        tmp_path_factory.mktemp("lk-e2e"), tts="piper", config=config, args=["--livekit"]
    ) as running:
        yield running


def speech(text: str) -> tuple[np.ndarray, int, int]:
    """16 kHz speech with a little silence around it, and its first and last voiced sample."""
    pcm, _ = piper_wav(text)
    audio = pad_silence(pcm, 0.1, 0.1)
    first, last = speech_bounds(audio)
    return audio, first, last


def sessions(mesh: MeshProc) -> int:
    found = sample(scrape(mesh.url), "voxmesh_transport_sessions")
    assert found is not None, "voxmesh_transport_sessions missing from /metrics"
    return int(found)


def status_sessions(mesh: MeshProc) -> int:
    out = mesh.cli("status", "--json", "--port", str(mesh.port))
    assert out.returncode == 0, out.stderr
    actors = {a["name"]: a for a in json.loads(out.stdout)["actors"]}
    return int((actors["transport"].get("info") or {}).get("sessions", -1))


async def rooms(session: dict[str, str]) -> set[str]:
    async with api.LiveKitAPI(session["url"], "devkey", TEST_SECRET, failover=False) as lkapi:
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest())
    return {r.name for r in listed.rooms}


async def wait_rooms_gone(session: dict[str, str], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while left := await rooms(session):
        assert asyncio.get_running_loop().time() < deadline, f"rooms left behind: {left}"
        await asyncio.sleep(0.1)


def test_talk_over_livekit(mesh: MeshProc) -> None:
    """Speech on the mic track -> final transcript (data channel) -> spoken reply (track)."""

    async def main() -> None:
        audio, _, last = speech(QUESTION)
        async with await LkClient.join(mesh.url) as c:
            await c.wait_event("state", 10, state="listening")  # the core session is open
            start = c.mic.queue(audio) - audio.size
            final = await c.wait_event("transcript", 20, final=True)
            assert word_error_rate(QUESTION, final["text"]) <= 0.25, final
            reply = await c.wait_event("reply", 5)
            assert word_error_rate(QUESTION, reply["text"]) <= 0.25  # the echo responder
            begun = await c.next_event(event_is("audio_start"), 10)
            ended = await c.next_event(event_is("audio_end"), 20, since=c.events.index(begun))
            assert ended.data["reason"] == "done"
            assert ended.data["utterance_id"] == begun.data["utterance_id"]
            # The reply is heard on the agent's `voxmesh` track: a couple of seconds of voice.
            assert c.agent_track == (AGENT, TOPIC)
            spoken_at = c.mic.sent_time(start + last - 1)
            assert spoken_at is not None
            first = await c.wait_loud(spoken_at, 5, frames=100)  # 1 s of audible frames
            assert begun.t - 0.05 <= first < ended.t + 1.0
            assert first - spoken_at < 5.0, "the spoken reply came far too late"

    asyncio.run(main())


def test_barge_in_over_livekit(mesh: MeshProc) -> None:
    """Speech while the agent says something long: its audio stops, clear + interrupted."""

    async def main() -> None:
        audio, first_voiced, _ = speech(INTERRUPTION)
        async with await LkClient.join(mesh.url) as c:
            await c.wait_event("state", 10, state="listening")
            t_say = await c.send({"type": "say", "text": LONG_SAY})
            begun = await c.wait_event("audio_start", 10)
            await c.wait_loud(t_say, 5, frames=50)  # half a second of it has been heard
            since = c.mark()
            start = c.mic.queue(audio) - audio.size
            ended = await c.next_event(event_is("audio_end"), 10, since=since)
            assert ended.data == {
                "type": "audio_end",
                "utterance_id": begun["utterance_id"],
                "reason": "interrupted",
            }
            # The clear that came with the stop (an earlier one may have been followed by a
            # RESUME, had the VAD heard a short blip first).
            clears = [e for e in c.received("clear", since) if e.t <= ended.t]
            assert clears, f"no `clear` before the interrupted audio_end: {c.types(since)}"
            clear = clears[-1]
            # Watch a while past the clear: the long reply's audio must have stopped. (The
            # echo of the interruption comes only after the user's turn ends, ~2 s later.)
            await asyncio.sleep(0.8)
            echo = c.received("audio_start", since)
            window_end = echo[0].t if echo else clear.t + 0.8
            tail = [t for t in c.loud_since(clear.t) if t < window_end]
            late = (tail[-1] - clear.t) if tail else 0.0
            # What is left to hear is what WebRTC's jitter buffer holds (55-80 ms on average
            # here, but it grows when this 2-core box is busy): the bound is generous.
            assert c.agent_audio is not None
            jb = await receive_stats(c.agent_audio)
            assert late < MAX_TAIL_S, f"audio went on {late * 1000:.0f} ms after `clear` ({jb})"
            voiced_at = c.mic.sent_time(start + first_voiced)
            assert voiced_at is not None
            stopped = max([t for t in c.loud_since(t_say) if t < window_end])
            assert stopped - voiced_at < 1.5, "barge-in took far too long"

    asyncio.run(main())


@pytest.mark.parametrize("how", ["disconnect", "bye"])
def test_leaving_leaves_no_session_and_no_room(mesh: MeshProc, how: str) -> None:
    async def main() -> None:
        async with await LkClient.join(mesh.url) as c:
            await c.wait_event("state", 10, state="listening")
            await until(lambda: sessions(mesh) == 1, 5, "only this session")  # earlier ones ended
            if how == "bye":  # the agent ends the room: the client is dropped
                await c.send({"type": "bye"})
                await until(lambda: not c.room.isconnected(), 10, "the client to be dropped")
        await wait_rooms_gone(c.session)

    asyncio.run(main())
    wait_for(lambda: sessions(mesh) == 0, 10, "/metrics sessions back to 0")
    # `voxmesh status` shows the transport's last heartbeat (every 0.5 s): give it one.
    wait_for(lambda: status_sessions(mesh) == 0, 5, "`voxmesh status` sessions back to 0")


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- the service alone (no mesh) -------------------------------------------------------------


def test_service_starts_a_server_with_a_strong_secret(tmp_path: Path) -> None:
    """The built-in secret is too short for livekit-server: a fresh one is made per run."""
    settings = Settings()
    assert settings.livekit.api_secret == "secret" and not settings.livekit.url
    svc = LiveKitService(settings)
    try:
        lk = svc.start(settings, tmp_path).livekit
        assert lk.url.startswith("ws://127.0.0.1:")
        assert len(lk.api_secret) >= 32 and lk.api_secret != "secret"
        assert svc.alive()

        async def listed() -> int:
            url, secret = lk.url, lk.api_secret
            async with api.LiveKitAPI(url, "devkey", secret, failover=False) as lkapi:
                return len((await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms)

        assert asyncio.run(listed()) == 0  # the server took the new secret
        assert svc.server is not None
        proc = svc.server.proc
    finally:
        svc.stop()
    assert proc is not None and proc.poll() is not None, "livekit-server was left running"
    assert not svc.alive()


def test_service_with_a_url_starts_nothing(tmp_path: Path) -> None:
    settings = Settings().replace(livekit={"url": "ws://example.invalid:7880"})
    svc = LiveKitService(settings)
    assert svc.start(settings, tmp_path) == settings
    assert svc.server is None and svc.alive()
    svc.stop()


def test_missing_binary_says_to_run_make_livekit(tmp_path: Path) -> None:
    """Found missing when the service is made, before the supervisor starts anything."""
    settings = Settings().replace(livekit={"binary": str(tmp_path / "nope")})
    with pytest.raises(ServiceUnavailable, match="make livekit"):
        LiveKitService(settings)


def test_up_with_missing_binary_fails_clearly(tmp_path: Path) -> None:
    """What a user sees: ``voxmesh up --livekit`` without the server exits 1 and says why."""
    cfg = tmp_path / "mesh.toml"
    cfg.write_text(toml_text({"livekit": {"binary": str(tmp_path / "nope")}}))
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    cmd = [sys.executable, "-m", "voxmesh", "up", "--livekit", "--tts", "mock"]
    out = subprocess.run(
        [*cmd, "--port", str(free_port()), "--config", str(cfg)],
        cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": str(xdg)},
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        check=False,
    )
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxmesh: error: --livekit: "), out.stderr
    assert "livekit-server binary not found" in out.stderr and "make livekit" in out.stderr
