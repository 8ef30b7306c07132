"""The supervisor's parts on their own: the actor plan, the state file, STATUS, the bootstrap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zmq

from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import Heartbeat, Ready, Status
from voxmesh.mesh.ring import Geometry, RingSegment, segment_name
from voxmesh.mesh.spec import ActorSpec, MeshPlace
from voxmesh.supervisor import config, statefile, topology
from voxmesh.supervisor.child import FACTORIES_ENV, PARENT_ENV
from voxmesh.supervisor.config import ConfigError
from voxmesh.supervisor.status import format_table


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    lines = "".join(f"GPU {i}: NVIDIA H100 (UUID: GPU-{i})\\n" for i in range(gpus))
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")


def test_plan_one_tts_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, gpus=2)
    specs = topology.plan(config.load(environ={}), Path("/run/x"), "voxmesh-1-rings")
    assert [(s.name, s.kind) for s in specs] == [
        ("router", "router"),
        ("transport", "transport"),
        ("vad", "vad"),
        ("asr", "asr"),
        ("tts0", "tts"),
        ("tts1", "tts"),
    ]
    assert [s.env.get("CUDA_VISIBLE_DEVICES") for s in specs[4:]] == ["0", "1"]
    router = specs[0]
    assert router.expected == ["transport", "vad", "asr", "tts0", "tts1"]
    assert router.place.router == "ipc:///run/x/router.sock"
    assert router.place.supervisor == "ipc:///run/x/supervisor.sock"
    assert router.place.segment == "voxmesh-1-rings" and router.place.heartbeat_s == 0.5
    assert ActorSpec.from_json(router.to_json()) == router
    # Each actor holds only its own sections: API keys stay with who needs them.
    by_name = {s.name: s for s in specs}
    assert set(by_name["transport"].settings) == {"log", "server", "livekit"}
    assert set(by_name["tts0"].settings) == {"log", "tts"}
    assert "livekit" not in router.settings and "server" not in router.settings


def test_plan_cpu_when_no_gpu_or_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, gpus=0)
    cfg = config.load(environ={})
    specs = topology.plan(cfg, Path("/r"), "s")
    assert [s.name for s in specs][4:] == ["tts0"]
    assert specs[4].env == {"CUDA_VISIBLE_DEVICES": ""}
    assert topology.tts_devices("cpu") == ["cpu"] and topology.tts_devices("none") == []
    assert topology.tts_devices("1, 3") == ["1", "3"]
    with pytest.raises(ConfigError, match=r"tts\.devices must be"):
        config.load(environ={"VOXMESH_TTS_DEVICES": "gpu"})


def test_state_file_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert statefile.state_path(8123) == tmp_path / "voxmesh" / "8123.json"
    assert statefile.read(8123) is None
    statefile.write(8123, {"pid": os.getpid(), "endpoint": "ipc:///x"})
    assert statefile.read(8123) == {"pid": os.getpid(), "endpoint": "ipc:///x"}
    statefile.remove(8123, pid=os.getpid() + 1)  # not ours: stays
    assert statefile.read(8123) is not None
    statefile.remove(8123, pid=os.getpid())
    assert not statefile.state_path(8123).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    statefile.write(8123, {"pid": dead.pid})
    assert statefile.read(8123) is None  # its supervisor is gone: stale


def test_status_table() -> None:
    status = Status(
        actors=[
            {
                "name": "router",
                "kind": "router",
                "pid": 10,
                "state": "running",
                "serving": "up",
                "restarts": 0,
                "uptime_s": 75.0,
                "info": {"sessions": 2},
                "heartbeat_age_s": 0.2,
                "standby_pid": 11,
                "host": "box1",
            },
            {
                "name": "asr",
                "kind": "asr",
                "pid": None,
                "state": "backoff",
                "serving": "restarting",
                "restarts": 3,
                "uptime_s": 0.0,
                "info": {},
            },
        ],
        info={"state": "up", "pid": 9, "uptime_s": 80.0, "url": "http://h:1/", "ws_url": "ws"},
    )
    lines = format_table(status).splitlines()
    assert lines[0].split() == [
        "ACTOR",
        "KIND",
        "HOST",
        "PID",
        "STATE",
        "SERVING",
        "RESTARTS",
        "UPTIME",
        "SESSIONS",
        "HEARTBEAT",
    ]
    assert lines[1].split() == [
        "router",
        "router",
        "box1",
        "10+11",
        "running",
        "up",
        "0",
        "1m15s",
        "2",
        "0.2s",
        "ago",
    ]
    assert lines[2].split() == ["asr", "asr", "-", "-", "backoff", "restarting", "3", "-", "-", "-"]
    assert "supervisor pid 9" in lines[-1] and "http://h:1/" in lines[-1]


def test_child_bootstrap_ignores_sigint_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The bootstrap: READY to the supervisor; SIGINT ignored; SIGTERM: clean stop, exit 0."""
    seg = RingSegment.create(segment_name(os.getpid(), "t" + uuid.uuid4().hex[:8]), Geometry(1))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    hub = ctx.socket(zmq.ROUTER)
    hub.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/sup.sock"
    hub.bind(endpoint)
    place = MeshPlace(f"ipc://{tmp_path}/router.sock", endpoint, seg.name, 0.2, 3)
    spec = ActorSpec("vad", "vad", place)
    env = {
        **os.environ,
        FACTORIES_ENV: '{"vad": "standin:build"}',
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p
        ),
        PARENT_ENV: str(os.getpid()),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "voxmesh.supervisor.child", spec.name],
        env=env,
        start_new_session=True,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None
        child.stdin.write(spec.to_json())
        child.stdin.close()
        assert isinstance(receive(hub), Ready)
        child.send_signal(signal.SIGINT)
        for _ in range(3):  # still alive: it keeps talking after Ctrl-C (heartbeats, and
            # READY again since this fake supervisor never answers)
            assert isinstance(receive(hub), (Heartbeat, Ready))
        assert child.poll() is None
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0
        assert child.stderr is not None and "vad: stopped" in child.stderr.read()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        if child.stderr is not None:
            child.stderr.close()
        hub.close(linger=0)
        ctx.term()
        seg.close()
        seg.unlink()


def test_child_refuses_to_start_without_its_supervisor() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec = ActorSpec("vad", "vad", MeshPlace("ipc:///nonexistent/r", "ipc:///nonexistent/s", "x"))
    result = subprocess.run(
        [sys.executable, "-m", "voxmesh.supervisor.child", spec.name],
        env={**os.environ, PARENT_ENV: str(dead.pid)},
        input=spec.to_json(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3 and "supervisor already gone" in result.stderr


def receive(sock: zmq.Socket[bytes], timeout_s: float = 15.0) -> protocol.Message:
    """The next message from any DEALER (identity frame dropped)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            return protocol.decode(sock.recv_multipart()[1:])
    raise AssertionError(f"no message within {timeout_s} s")
