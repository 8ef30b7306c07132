"""The supervisor against the real ``voxmesh up`` (mock TTS): restarts, clean stops, cleanup.

Restart times are measured from the kill to "serving again" (the supervisor shows a new,
READY process; GET /health is 200; a WebSocket ``say`` produces audio) and printed (run
with ``-s`` to see them). The bound asserted is generous (RESTART_BOUND_S): on 2 shared
cores a restarted ASR or VAD actor needs its model loaded again, which takes longer than 1 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from meshproc import MeshProc, free_port, mesh_up, pid_running, segments_of, wait_for

from voxmesh.mesh.ring import Geometry, RingSegment, segment_name

RESTART_BOUND_S = 20.0
PROBE_EVERY_S = 0.1
PROBE_TIMEOUT_S = 2.0
ACTORS = ["router", "transport", "vad", "asr", "tts0"]
# Stand-in actors (no models) for the tests of start-up paths (tests/standin.py).
STANDIN_ENV = {
    "VOXMESH_FACTORIES": json.dumps(
        dict.fromkeys(["router", "transport", "vad", "asr", "tts"], "standin:build")
    ),
    "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p
    ),
}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_stale_segment() -> str:
    seg = RingSegment.create(segment_name(dead_pid()), Geometry(1, 4, 4))
    seg.close()
    return seg.name


async def say_audio(ws_url: str, text: str = "hello there", timeout_s: float = 10.0) -> int:
    """Bytes of 48 kHz audio the mesh sends back for a WebSocket ``say`` (0 if none)."""
    got = 0
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await ws.send_json({"type": "hello", "sample_rate": 16000})
        deadline = time.monotonic() + timeout_s
        said = False
        while time.monotonic() < deadline:
            try:
                msg = await ws.receive(timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                if event.get("type") == "ready" and not said:
                    await ws.send_json({"type": "say", "text": text})
                    said = True
                elif event.get("type") in ("audio_end", "error"):
                    break  # done, or the mesh cannot serve yet (the caller retries)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                assert len(msg.data) == 1920  # one 20 ms frame of 48 kHz s16 mono
                got += len(msg.data)
                if got >= 1920 * 5:
                    break
            else:
                break
        await ws.send_json({"type": "bye"})
    return got


def serving(mesh: MeshProc) -> bool:
    return mesh.healthy() and asyncio.run(say_audio(mesh.ws_url, timeout_s=3.0)) > 0


async def wait_serving(mesh: MeshProc, bound_s: float) -> None:
    """Return once a fresh ``say`` produces audio; a new try starts every PROBE_EVERY_S.

    Tries overlap, so a ``say`` lost while an actor was down (it just times out) does not
    hide the moment the mesh serves again.
    """
    tries: list[asyncio.Task[int]] = []
    deadline = time.monotonic() + bound_s
    try:
        while time.monotonic() < deadline:
            if await asyncio.to_thread(mesh.healthy):
                tries.append(asyncio.create_task(say_audio(mesh.ws_url, timeout_s=PROBE_TIMEOUT_S)))
            await asyncio.sleep(PROBE_EVERY_S)
            if any(t.done() and not t.exception() and t.result() > 0 for t in tries):
                return
        raise AssertionError(f"the mesh did not serve a say within {bound_s:g} s")
    finally:
        for t in tries:
            t.cancel()
        await asyncio.gather(*tries, return_exceptions=True)


def test_up_status_sigint_and_stale_segment(tmp_path: Path) -> None:
    stale = make_stale_segment()
    try:
        with mesh_up(tmp_path) as mesh:
            assert stale not in os.listdir("/dev/shm")  # removed on start
            assert f"removed stale ring segment {stale}" in mesh.log_text()
            wait_for(lambda: f"open {mesh.url}" in mesh.log_text(), 10, "the URL printed")
            assert mesh.ws_url in mesh.log_text()

            result = mesh.cli("status", "--port", str(mesh.port))
            assert result.returncode == 0, result.stderr
            for name in ACTORS:
                assert any(
                    line.split()[:1] == [name] and "running" in line
                    for line in result.stdout.splitlines()
                ), result.stdout
            pids = mesh.actor_pids()
            assert set(pids) == set(ACTORS) and all(pids.values())
            rings = [s for s in segments_of(mesh.pid) if ".bell-" not in s]  # bells: FIFOs
            assert rings == [f"voxmesh-{mesh.pid}-rings"]
            assert serving(mesh)

            again = mesh.cli("up", "--port", str(mesh.port), "--tts", "mock")
            assert again.returncode == 1 and "already running" in again.stderr

            assert mesh.interrupt() == 0  # Ctrl-C: a clean stop
            wait_for(lambda: not mesh.leftovers(), 10, "every actor, segment and file gone")
            assert "voxmesh stopped" in mesh.log_text()
            assert not any(pid_running(p) for p in pids.values() if p)
    finally:
        if os.path.exists(RingSegment.path(stale)):
            os.unlink(RingSegment.path(stale))


def test_dead_or_hung_actors_are_restarted_and_serving(tmp_path: Path) -> None:
    """kill -9 each actor in turn, then hang one (SIGSTOP: alive but silent)."""
    times: dict[str, tuple[float, float]] = {}
    with mesh_up(tmp_path) as mesh:
        for name in ACTORS:
            times[name] = kill_and_wait(mesh, name, signal.SIGKILL)
        assert {a["name"]: a["restarts"] for a in mesh.status().actors} == dict.fromkeys(ACTORS, 1)
        assert "asr exited (killed by SIGKILL): its warm standby takes over" in mesh.log_text()
        hung = mesh.actor_pids()["tts0"]
        times["tts0 hung"] = kill_and_wait(mesh, "tts0", signal.SIGSTOP)
        assert hung is not None and not pid_running(hung)  # the hung process was killed
        assert "tts0 stopped heartbeating" in mesh.log_text()
    report(times)


def kill_and_wait(mesh: MeshProc, name: str, sig: int) -> tuple[float, float]:
    """Signal actor ``name``; seconds until it is replaced (READY) and the mesh serves."""
    old = mesh.actor_pids()[name]
    assert old
    t0 = time.monotonic()
    os.kill(old, sig)
    try:

        def replaced() -> bool:
            row = next(a for a in mesh.status().actors if a["name"] == name)
            return row["state"] == "running" and row["pid"] not in (None, old)

        wait_for(replaced, RESTART_BOUND_S, f"{name} restarted", interval_s=0.02)
        t_ready = time.monotonic() - t0
        asyncio.run(wait_serving(mesh, RESTART_BOUND_S))
        return t_ready, time.monotonic() - t0
    finally:
        if pid_running(old):  # only if the supervisor failed to
            os.kill(old, signal.SIGKILL)


def test_supervisor_sigkill_actors_follow_and_next_up_cleans(tmp_path: Path) -> None:
    first = MeshProc(_mkdir(tmp_path / "first"))
    try:
        first.wait_healthy()
        pids = [p for p in first.actor_pids().values() if p]
        segment = f"voxmesh-{first.pid}-rings"
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        # PR_SET_PDEATHSIG: every actor stops by itself.
        wait_for(lambda: not any(pid_running(p) for p in pids), 15, "actors to exit")
        assert segment in os.listdir("/dev/shm")  # nobody was left to unlink it

        with mesh_up(_mkdir(tmp_path / "second")) as second:
            assert segment not in os.listdir("/dev/shm")
            assert f"removed stale ring segment {segment}" in second.log_text()
            assert second.terminate() == 0  # SIGTERM stops as cleanly as Ctrl-C
            assert not second.leftovers()
    finally:
        first.stop()  # kills and removes whatever the test did not see go


def test_restart_intensity_limit_stops_the_mesh(tmp_path: Path) -> None:
    """An actor that cannot start is retried restart_max times, then the mesh gives up."""
    env = {
        "VOXMESH_VAD_MODEL": str(tmp_path / "no-such-model.onnx"),
        "VOXMESH_MESH_RESTART_MAX": "2",
        "VOXMESH_MESH_RESTART_BACKOFF_MS": "20",
    }
    mesh = MeshProc(tmp_path, extra_env=env)
    try:
        mesh.proc.wait(timeout=60)
        assert mesh.proc.returncode == 1
        log = mesh.log_text()
        assert "restarted 2 times" in log and "giving up" in log and "vad" in log
        assert log.count("vad exited (code 1): restarting") == 2
    finally:
        problems = mesh.stop()
    assert not problems, problems


def test_status_without_a_mesh(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "voxmesh", "status", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no voxmesh is running" in result.stderr


def report(times: dict[str, tuple[float, float]]) -> None:
    print("\nseconds from the signal to READY / to serving (health + WebSocket say)")
    for name, (ready, serving_s) in times.items():
        print(f"  {name:10s} {ready:6.2f} {serving_s:6.2f}")
    print(
        f"  median     {statistics.median(t[0] for t in times.values()):6.2f} "
        f"{statistics.median(t[1] for t in times.values()):6.2f}"
    )


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_actor_never_ready_is_restarted_then_given_up(tmp_path: Path) -> None:
    """READY must come within ready_timeout_s (stand-in actors: no models to load here)."""
    env = {
        **STANDIN_ENV,
        "VOXMESH_STANDIN_HANG": "asr",
        "VOXMESH_MESH_READY_TIMEOUT_S": "1.5",
        "VOXMESH_MESH_RESTART_MAX": "1",
        "VOXMESH_MESH_SHUTDOWN_DEADLINE_S": "0.5",
    }
    mesh = MeshProc(tmp_path, extra_env=env)
    try:
        assert mesh.proc.wait(timeout=60) == 1
        log = mesh.log_text()
        assert log.count("asr not ready after 1.5 s: restarting") == 1
        assert "asr not ready after 1.5 s; restarted 1 times" in log and "giving up" in log
        assert "ready: vad" in log  # the others came up meanwhile
    finally:
        problems = mesh.stop()
    assert not problems, problems


def test_a_busy_silent_actor_is_given_time_not_restarted(tmp_path: Path) -> None:
    """Starved (a flood, a long computation) is not crashed: no restart, no restart count."""
    env = {
        **STANDIN_ENV,
        "VOXMESH_STANDIN_BUSY": "vad:4",  # silent for 4 s, well past 3 heartbeats (1.5 s)
    }
    mesh = MeshProc(tmp_path, extra_env=env)
    try:
        mesh.wait_healthy()
        pid = mesh.actor_pids()["vad"]
        wait_for(lambda: "vad is heartbeating again" in mesh.log_text(), 20, "vad back")
        log = mesh.log_text()
        assert "vad stopped heartbeating while busy" in log
        rows = {a["name"]: a for a in mesh.status().actors}
        assert rows["vad"]["restarts"] == 0 and rows["vad"]["pid"] == pid
    finally:
        problems = mesh.stop()
    assert not problems, problems


def test_ctrl_c_while_loading_stops_everything(tmp_path: Path) -> None:
    """Ctrl-C before the mesh is up; an actor stuck loading is killed after the deadline."""
    env = {
        **STANDIN_ENV,
        "VOXMESH_STANDIN_HANG": "asr",
        "VOXMESH_MESH_SHUTDOWN_DEADLINE_S": "0.5",
    }
    mesh = MeshProc(tmp_path, extra_env=env)
    try:
        wait_for(lambda: "ready: vad" in mesh.log_text(), 30, "vad ready, asr still loading")
        wait_for(lambda: "asr: hanging in start-up" in mesh.log_text(), 30, "asr in its hang")
        pids = mesh.actor_pids()
        assert mesh.interrupt() == 0
        log = mesh.log_text()
        assert "asr did not stop within 0.5 s: SIGTERM" in log
        assert "asr still there: SIGKILL" in log
        assert not any(pid_running(p) for p in pids.values() if p)
    finally:
        problems = mesh.stop()
    assert not problems, problems
