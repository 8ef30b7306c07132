"""TTS actors per device (``[[tts.actors]]``), a voice per session, ``voxmesh models``.

One mesh with two TTS actors of different engines (mock as tts0, espeak as tts1) serves two
sessions in two voices at once; a session switches voice mid-conversation; an unknown voice
is refused and changes nothing; ``voxmesh models`` lists both actors and changes what is
resident. The mock voice's exact sawtooth tells which engine spoke a reply.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from meshproc import MeshProc, mesh_up

from voxmesh.actors.tts.adapters import mock_pcm, mock_samples
from voxmesh.client import WsClient
from voxmesh.mesh.settings import Settings, SettingsError
from voxmesh.speech.chunking import split_for_speech
from voxmesh.supervisor import config, topology

TWO_ACTORS = """\
[[tts.actors]]
name = "tts0"
engine = "mock"

[[tts.actors]]
name = "tts1"
engine = "espeak"
"""
TEXT = "Hello there, two voices at once."


def spoke_mock(audio: bytes, text: str) -> bool:
    """True when ``audio`` is the mock voice saying ``text`` (its exact samples)."""
    want = mock_pcm(sum(mock_samples(chunk) for chunk in split_for_speech(text)))
    got = np.frombuffer(audio, np.int16)
    return got.size >= want.size and bool(np.array_equal(got[: want.size], want))


def loud(audio: bytes) -> bool:
    pcm = np.frombuffer(audio, np.int16).astype(np.float64)
    return pcm.size > 48000 // 4 and float(np.sqrt(np.mean(pcm**2))) > 100


async def say(client: WsClient, text: str) -> bytes:
    since_event, since_frame = client.mark(), len(client.frames)
    await client.say(text)
    end = await client.wait_event("audio_end", 30, since=since_event)
    assert end["reason"] == "done", end
    return client.audio(since_frame)


async def set_voice(client: WsClient, voice: str) -> dict[str, Any]:
    since = client.mark()
    await client.send_json({"type": "voice", "voice": voice})
    return await client.wait_for(lambda e: e["type"] in ("voice", "error"), 10, since=since)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    tmp = tmp_path_factory.mktemp("tts-actors")
    path = tmp / "two-actors.toml"
    path.write_text(TWO_ACTORS)
    with mesh_up(tmp, args=["--config", str(path)]) as running:
        yield running


def models(mesh: MeshProc, *args: str) -> Any:
    out = mesh.cli("models", *args, "--json", "--port", str(mesh.port))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_two_engines_two_voices_at_once(mesh: MeshProc) -> None:
    async with (
        await WsClient.connect(mesh.ws_url) as a,
        await WsClient.connect(mesh.ws_url, sample_rate=None) as b,
    ):
        # b names its voice in hello; a keeps the mesh's default (the first actor's voice)
        since = b.mark()
        await b.send_json({"type": "hello", "sample_rate": 16000, "voice": "espeak:en-us"})
        assert (await b.wait_event("voice", 10, since=since))["voice"] == "espeak:en-us"
        audio_a, audio_b = await asyncio.gather(say(a, TEXT), say(b, TEXT))
        assert spoke_mock(audio_a, TEXT)
        assert not spoke_mock(audio_b, TEXT) and loud(audio_b)

        # a switches voice mid-conversation: the next utterance is espeak's
        assert (await set_voice(a, "espeak:en-us"))["type"] == "voice"
        switched = await say(a, TEXT)
        assert not spoke_mock(switched, TEXT) and loud(switched)

        # an unknown voice is refused and the session keeps its voice
        refused = await set_voice(a, "festival:kal")
        assert refused["type"] == "error" and refused["code"] == "unknown_voice"
        assert "mock:mock" in refused["message"] and "espeak:en-us" in refused["message"]
        assert not spoke_mock(await say(a, "Still the same voice."), "Still the same voice.")

        assert (await set_voice(b, "mock:mock"))["type"] == "voice"
        assert spoke_mock(await say(b, TEXT), TEXT)


def test_models_list_load_unload(mesh: MeshProc) -> None:
    rows = {r["name"]: r for r in models(mesh, "list")}
    assert set(rows) == {"tts0", "tts1"}
    assert (rows["tts0"]["engine"], rows["tts1"]["engine"]) == ("mock", "espeak")
    assert rows["tts0"]["device"] == rows["tts1"]["device"] == "cpu"
    assert rows["tts0"]["provider"] and rows["tts1"]["provider"]
    assert rows["tts1"]["host"] and rows["tts0"]["resident"] == ["mock:mock"]

    loaded = models(mesh, "load", "mock:mock-x", "--actor", "tts0")
    assert loaded["actor"] == "tts0" and "mock:mock-x" in loaded["resident"]
    # without --actor the voice's engine picks the actor
    assert models(mesh, "load", "espeak:en-gb")["actor"] == "tts1"

    def resident() -> dict[str, list[str]]:
        return {r["name"]: r["resident"] for r in models(mesh, "list")}

    from meshproc import wait_for

    wait_for(lambda: "mock:mock-x" in resident()["tts0"], 10, "the heartbeat to show mock-x")
    unloaded = models(mesh, "unload", "mock:mock-x")
    assert unloaded["actor"] == "tts0" and "mock:mock-x" not in unloaded["resident"]

    bad = mesh.cli("models", "load", "mock:x", "--actor", "tts9", "--port", str(mesh.port))
    assert bad.returncode == 1 and "no TTS actor named 'tts9'" in bad.stderr
    assert "Traceback" not in bad.stderr
    wrong = mesh.cli("models", "load", "espeak:en-us", "--actor", "tts0", "--port", str(mesh.port))
    assert (wrong.returncode == 1 and "cannot load" in wrong.stderr) or "runs mock" in wrong.stderr


# --- planning, without a mesh ---------------------------------------------------------------


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    lines = "".join(f"GPU {i}: Fake GPU (UUID: GPU-{i})\\n" for i in range(gpus))
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")


def test_tables_give_each_actor_its_engine_and_device(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(TWO_ACTORS + 'device = "1"\npreload = ["en-gb"]\n')
    specs = topology.plan(config.load(path, environ={}), tmp_path, "seg")
    tts = {s.name: s for s in specs if s.kind == "tts"}
    assert set(tts) == {"tts0", "tts1"}
    own = {name: s.section(type(Settings().tts)).own() for name, s in tts.items()}
    assert (own["tts0"].engine, own["tts0"].device) == ("mock", "cpu")
    assert (own["tts1"].engine, own["tts1"].device, own["tts1"].preload) == (
        "espeak",
        "1",
        ("en-gb",),
    )
    assert tts["tts0"].env["CUDA_VISIBLE_DEVICES"] == ""
    assert tts["tts1"].env["CUDA_VISIBLE_DEVICES"] == "1"
    assert specs[0].name == "router" and specs[0].expected[-2:] == ["tts0", "tts1"]


def test_devices_none_means_no_local_tts() -> None:
    specs = topology.plan(Settings().replace(tts={"devices": "none"}), Path("/r"), "s")
    assert [s.kind for s in specs] == ["router", "transport", "vad", "asr"]


def test_bad_tables_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(TWO_ACTORS.replace('"tts1"', '"tts0"'))
    with pytest.raises(SettingsError, match=r"tts\.actors must name each actor once"):
        config.load(path, environ={})
    path.write_text('[[tts.actors]]\nengine = "mock"\ndevice = "gpu"\n')
    with pytest.raises(SettingsError, match=r'tts\.actors\[0\]\.device must be "cpu"'):
        config.load(path, environ={})


def test_two_fake_gpus_two_pinned_actors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tts.devices = auto`` with two GPUs (a fake nvidia-smi): two Piper actors, each in
    its own process with its own CUDA_VISIBLE_DEVICES, each saying which provider it runs
    (the CPU one here: no onnxruntime-gpu)."""
    fake_nvidia_smi(tmp_path, monkeypatch, gpus=2)
    env = {"PATH": os.environ["PATH"], "VOXMESH_MESH_STANDBY": ""}
    with mesh_up(tmp_path, tts="piper", extra_env=env) as mesh:
        rows = {r["name"]: r for r in models(mesh, "list")}
        assert set(rows) == {"tts0", "tts1"}
        pids = mesh.actor_pids()
        for name, device in (("tts0", "0"), ("tts1", "1")):
            assert rows[name]["device"] == device and rows[name]["engine"] == "piper"
            assert rows[name]["provider"] == "CPUExecutionProvider"
            environ = psutil.Process(pids[name]).environ()
            assert environ["CUDA_VISIBLE_DEVICES"] == device


async def test_a_voice_outlives_a_router_restart(mesh: MeshProc) -> None:
    """The transport re-announces the session with the voice the router confirmed, so a
    restarted router speaks on in it (the voice lives in SESSION_OPEN, not only the router)."""
    from test_faults import kill, wait_back

    async with await WsClient.connect(mesh.ws_url) as c:
        assert (await set_voice(c, "espeak:en-us"))["type"] == "voice"
        old_pid, _ = await asyncio.to_thread(kill, mesh, "router")
        await asyncio.to_thread(wait_back, mesh, "router", old_pid)
        again = await say(c, TEXT)
        assert not spoke_mock(again, TEXT) and loud(again)
