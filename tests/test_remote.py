"""TTS on another host (docs/protocol.md section 5), seen from outside.

The session host is a real ``voxmesh up --listen`` with no TTS of its own
(``tts.devices = "none"``); the worker host is ``voxmesh worker tts`` in a mount namespace
with its own /dev/shm (tests/remotehost.py), joined over loopback tcp with CURVE. Checked:
a ``say`` is spoken by the worker, sample for sample, and `voxmesh status` and
`voxmesh models list` show it with its host; an interruption stops the audio at the
transport within a frame whatever is in flight; a worker killed mid-reply has the reply
re-routed to another worker (never silence); a worker whose key is not allowed is refused
and the refusal logged, and a ``say`` with no TTS anywhere gets an error, not silence.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from meshproc import MeshProc, free_port, mesh_up, wait_for
from remotehost import MeshKeys, RemoteWorker, remote_config, remote_row, status, wait_remote

from voxmesh.actors.tts.adapters import mock_pcm, mock_samples
from voxmesh.client import FRAME_BYTES, WsClient
from voxmesh.speech.chunking import split_for_speech

TEXT = "Hello from the other host. This reply crossed the network."
# Three sentences, about 9 s of mock audio: longer than the small out ring below, so the
# worker is still sending (on credit) when it is killed.
LONG = (
    "This reply is long enough to be cut in the middle by a fault. It goes on for a while, "
    "sentence after sentence. And then, at last, it comes to its end."
)


def expected_reply(text: str) -> np.ndarray:
    """The exact samples the mock voice sends for a reply (chunked as the router does)."""
    return mock_pcm(sum(mock_samples(chunk) for chunk in split_for_speech(text)))


@pytest.fixture(scope="module")
def remote_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshProc, str]]:
    """A session host and one allowed worker, ``w1``; yields (mesh, the worker's log)."""
    tmp = tmp_path_factory.mktemp("remote")
    keys = MeshKeys.make(tmp)
    port = free_port(2)  # and the bridge's, the next one
    with (
        mesh_up(tmp, config=remote_config(keys, port)) as mesh,
        RemoteWorker(tmp, mesh, keys, keys.worker("w1"), "w1", port) as worker,
    ):
        wait_remote(mesh, worker)
        mesh.keys = keys  # type: ignore[attr-defined]  # for the refused-key test
        mesh.remote_port = port  # type: ignore[attr-defined]
        yield mesh, worker.log_path.name


async def test_say_is_spoken_by_the_remote_worker(remote_mesh: tuple[MeshProc, str]) -> None:
    mesh, _ = remote_mesh
    async with await WsClient.connect(mesh.ws_url) as client:
        await client.say(TEXT)
        start = await client.wait_event("audio_start", 10)
        end = await client.wait_event("audio_end", 20)
        assert end["reason"] == "done" and end["utterance_id"] == start["utterance_id"]
        want = expected_reply(TEXT)
        got = np.frombuffer(client.audio(), np.int16)
        assert np.array_equal(got[: want.size], want), "the audio changed on its way"
        assert {len(f.data) for f in client.frames} == {FRAME_BYTES}
    row = remote_row(mesh, "w1")
    assert row is not None and row["state"] == "remote", row
    assert row["host"] and row["kind"] == "tts" and row["info"].get("remote") is True, row
    bridge = next(a for a in status(mesh)["actors"] if a["name"] == "bridge")
    frames = bridge["info"]["counters"].get("frames", 0)
    assert frames >= math.ceil(want.size / 960), f"the bridge wrote {frames} frames"
    table = mesh.cli("status", "--port", str(mesh.port))
    assert "w1" in table.stdout and "remote" in table.stdout, table.stdout
    listed = mesh.cli("models", "list", "--json", "--port", str(mesh.port))
    assert listed.returncode == 0, listed.stderr
    assert any(r["name"] == "w1" for r in json.loads(listed.stdout)), listed.stdout
    # a voice loaded on the remote worker: the command reaches it through the router
    port = ("--port", str(mesh.port))
    loaded = mesh.cli("models", "load", "mock:mock2", "--actor", "w1", "--json", *port)
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    assert "mock:mock2" in json.loads(loaded.stdout)["resident"], loaded.stdout


async def test_interrupt_across_the_hop_stops_within_a_frame(
    remote_mesh: tuple[MeshProc, str],
) -> None:
    mesh, _ = remote_mesh
    async with await WsClient.connect(mesh.ws_url) as client:
        await client.say(LONG)
        await client.wait_event("audio_start", 10)
        await client.wait_until(lambda: len(client.frames) >= 25, 10, "25 frames")
        since = client.mark()
        await client.interrupt()
        clear = await client.wait_event("clear", 3, since=since)
        end = await client.wait_event("audio_end", 3, since=since)
        assert end["reason"] == "interrupted", end
        # the transport's own account: no frame left it after the HOLD was issued
        assert clear["t_last_frame"] - clear["t_issued"] < 0.020, clear
        n = len(client.frames)
        await client.wait_event("state", 3, since=since, state="listening")
        quiet = await client.wait_quiet(0.3, 3.0)
        assert quiet and len(client.frames) == n, "frames kept coming after the interruption"
        since = client.mark()
        await client.say("Again.")
        assert (await client.wait_event("audio_end", 10, since=since))["reason"] == "done"


async def test_a_say_with_no_allowed_worker_is_refused_loudly(
    remote_mesh: tuple[MeshProc, str], tmp_path: Path
) -> None:
    mesh, _ = remote_mesh
    keys: MeshKeys = mesh.keys  # type: ignore[attr-defined]
    port: int = mesh.remote_port  # type: ignore[attr-defined]
    with RemoteWorker(
        tmp_path, mesh, keys, keys.worker("intruder", allow=False), "intruder", port
    ) as intruder:
        wait_for(
            lambda: "curve_refused" in mesh.log_text() and "not allowed" in mesh.log_text(),
            20.0,
            "the refusal in the mesh log",
        )
        assert intruder.proc.poll() is None, intruder.log_text()
        assert remote_row(mesh, "intruder") is None, "a worker with an unknown key got in"


async def test_worker_killed_mid_reply_is_rerouted(tmp_path: Path) -> None:
    keys = MeshKeys.make(tmp_path)
    port = free_port(2)  # and the bridge's, the next one
    config = remote_config(keys, port, mesh={"out_ring_frames": 64})  # 1.28 s of ring
    with (
        mesh_up(tmp_path, config=config) as mesh,
        RemoteWorker(tmp_path, mesh, keys, keys.worker("w1"), "w1", port) as w1,
        RemoteWorker(tmp_path, mesh, keys, keys.worker("w2"), "w2", port) as w2,
    ):
        wait_remote(mesh, w1)
        wait_remote(mesh, w2)
        async with await WsClient.connect(mesh.ws_url) as client:
            mark, first = client.mark(), len(client.frames)
            await client.say(LONG)
            start = await client.wait_event("audio_start", 10, since=mark)
            await client.wait_until(lambda: len(client.frames) - first >= 25, 10, "25 frames")

            def serving() -> RemoteWorker | None:
                rows = {r["name"]: r for r in status(mesh)["actors"]}
                busy = [w for w in (w1, w2) if rows[w.name]["info"].get("sessions")]
                return busy[0] if len(busy) == 1 else None

            victim = await asyncio.to_thread(wait_for, serving, 5.0, "the serving worker")
            victim.kill()
            end = await client.wait_event(
                "audio_end", 30, since=mark, utterance_id=start["utterance_id"]
            )
            got = len(client.frames) - first
            want = math.ceil(expected_reply(LONG).size / 960)
            assert end["reason"] == "done", f"{victim.name} killed, another was up: {end}"
            assert f"lost {victim.name}" in mesh.log_text(), "the router never saw it go"
            assert got >= want - 3, f"'done' after {got} of the reply's {want} frames: lost"
            since = client.mark()
            await client.say("Still here.")
            assert (await client.wait_event("audio_end", 10, since=since))["reason"] == "done"
