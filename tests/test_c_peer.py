"""Peers written from docs/protocol.md alone: the C TTS of examples/c-tts, and an actor
hosted in a program of its own (examples/embed_tts.py).

The C peer is built here (``make -C examples/c-tts BUILD=<tmp>``; a missing compiler,
pkg-config or libzmq fails the test and says what to install). Checked:

- against a scripted router and bridge (pyzmq sockets, CURVE, no mesh): READY and its info,
  heartbeats, garbage of every kind survived and counted, credit never exceeded, the frames'
  fields, flags and little-endian samples, PAUSE/RESUME, STOP fencing, HELLO, SESSION_CLOSE,
  a silent router left for a fresh socket, and a clean stop on SIGTERM;
- in a real mesh (``voxmesh up --listen`` with no TTS of its own): it joins as a remote
  actor, a ``say`` comes back as exactly the tone's frames with ``audio_end`` ``done``, and
  an interrupted ``say`` stops at once;
- the embedded Python actor speaks a ``say`` in a mesh too, and stops cleanly on SIGINT.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from meshproc import MeshProc, free_port, mesh_up, wait_for
from remotehost import MeshKeys, remote_config, remote_row, status

from voxmesh.client import FRAME_BYTES, WsClient
from voxmesh.mesh import curve
from voxmesh.speech.chunking import split_for_speech

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "examples" / "c-tts"
EMBED = ROOT / "examples" / "embed_tts.py"
JOIN_S = 20.0
FUZZ = int(os.environ.get("C_TTS_FUZZ", "500"))  # mutated messages sent to the peer

# The tone voice (examples/c-tts/README.md): 2 frames (40 ms) per byte of text; a letter or
# digit is a 30 ms beep of 400 + 10 * (byte % 64) Hz with 5 ms ramps, anything else silence.
FRAMES_PER_BYTE = 2
SAY = "Hello from C. Seven digits: 4 1 5 9 2 6 5."
LONG = " ".join(f"Sentence number {n} of a reply that goes on for a good while." for n in range(8))


def tone_frames(text: str) -> int:
    return FRAMES_PER_BYTE * len(text.encode())


def reply_frames(text: str) -> int:
    """The frames the C peer sends for a ``say``, chunked as the router does."""
    return sum(tone_frames(chunk) for chunk in split_for_speech(text))


def tone_pcm(text: str) -> np.ndarray:
    """The tone's samples for one chunk's text (what tts.c's tone_frame computes)."""
    out = np.zeros(len(text.encode()) * 1920)
    i = np.arange(1440)
    env = np.minimum(1.0, np.minimum(i / 240, (1440 - i) / 240))
    for k, byte in enumerate(text.encode()):
        if chr(byte).isalnum() or byte >= 0x80:
            hz = 400.0 + 10.0 * (byte % 64)
            out[k * 1920 : k * 1920 + 1440] = np.rint(
                6000.0 * env * np.sin(2 * np.pi * hz * i / 48000)
            )
    return out.astype(np.int16)


# --- building and running the C peer ------------------------------------------------------


@pytest.fixture(scope="module")
def tone_tts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built C peer (a clear failure, not a skip, when the toolchain is missing)."""
    for tool, package in (("make", "make"), ("cc", "gcc"), ("pkg-config", "pkg-config")):
        if shutil.which(tool) is None:
            pytest.fail(f"examples/c-tts needs `{tool}`: install {package} (make dev does)")
    build = tmp_path_factory.mktemp("c-tts")
    # C_TTS_CFLAGS="-O1 -g -fsanitize=address,undefined" runs these tests under sanitizers
    cflags = [f"CFLAGS={os.environ['C_TTS_CFLAGS']}"] if os.environ.get("C_TTS_CFLAGS") else []
    got = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), f"BUILD={build}", *cflags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if got.returncode != 0:
        pytest.fail(
            "building examples/c-tts failed (needs a C compiler, pkg-config and libzmq3-dev; "
            f"`make dev` installs them):\n{got.stdout}{got.stderr}"
        )
    assert "warning" not in got.stderr, f"the C peer must build without warnings:\n{got.stderr}"
    return build / "tone-tts"


class Peer:
    """The C peer as a subprocess; always killed and reaped on the way out."""

    def __init__(self, binary: Path, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen([str(binary), *args], stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # a GOODBYE: the router forgets it at once
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def peer_args(port: int, key: Path, server_key: Path, name: str) -> list[str]:
    return [
        "--connect",
        f"tcp://127.0.0.1:{port}",
        "--key",
        str(key),
        "--server-key",
        str(server_key),
        "--name",
        name,
    ]


# --- a scripted router and bridge ---------------------------------------------------------


def pack(cmd: int, fields: dict[str, Any]) -> list[bytes]:
    return [b"VXM1", bytes((cmd,)), msgpack.packb(fields, use_bin_type=True)]


READY, HEARTBEAT, GOODBYE, HELLO = 0x01, 0x02, 0x04, 0x08
SESSION_CLOSE, SPEAK, PAUSE, RESUME, STOP = 0x11, 0x20, 0x21, 0x22, 0x23
SPEAK_DONE, SPEAK_PROGRESS, FRAME, CREDIT = 0x26, 0x29, 0x50, 0x51
MODEL_LOAD, MODEL_LIST, MODEL_INFO = 0x40, 0x42, 0x43


@dataclass
class Got:
    t: float
    identity: bytes
    cmd: int
    body: dict[str, Any]


@dataclass
class FakeMesh:
    """A ROUTER for control and one for data, both CURVE servers (no ZAP handler: any
    client key is let in), driven by ``run`` in the test's thread."""

    ctl: zmq.Socket[bytes]
    data: zmq.Socket[bytes]
    control: list[Got] = field(default_factory=list)
    frames: list[Got] = field(default_factory=list)
    identity: bytes = b""  # the peer's current control identity
    beating: bool = True  # send our heartbeats
    next_beat: float = 0.0

    def send(self, cmd: int, fields: dict[str, Any]) -> None:
        self.ctl.send_multipart([self.identity, *pack(cmd, fields)])

    def send_raw(self, frames: list[bytes]) -> None:
        self.ctl.send_multipart([self.identity, *frames])

    def credit(self, slot: int, generation: int, granted: int) -> None:
        assert self.frames, "no FRAME yet: the bridge does not know the writer"
        body = {"slot": slot, "generation": generation, "granted": granted, "capacity": 250}
        self.data.send_multipart([self.frames[-1].identity, *pack(CREDIT, body)])

    def run(self, seconds: float, until: Callable[[], bool] = lambda: False) -> bool:
        """Serve for ``seconds`` or until ``until()``; True if it came true."""
        end = time.monotonic() + seconds
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        poller.register(self.data, zmq.POLLIN)
        while True:
            if until():
                return True
            now = time.monotonic()
            if now >= end:
                return False
            if self.beating and self.identity and now >= self.next_beat:
                self.next_beat = now + 0.5
                self.send(HEARTBEAT, {"info": {}})
            for sock, _ in poller.poll(timeout=50):
                while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    identity, version, cmd, body = sock.recv_multipart()
                    assert version == b"VXM1"
                    got = Got(time.monotonic(), identity, cmd[0], msgpack.unpackb(body))
                    if sock is self.ctl:
                        self.control.append(got)
                        if got.cmd == READY:
                            self.identity = identity
                    else:
                        self.frames.append(got)

    def of(self, cmd: int, since: int = 0) -> list[Got]:
        return [g for g in self.control[since:] if g.cmd == cmd]

    def wait(self, cmd: int, since: int, seconds: float = 3.0) -> Got:
        assert self.run(seconds, lambda: bool(self.of(cmd, since))), f"no {cmd:#04x} came"
        return self.of(cmd, since)[0]

    def wait_done(self, since: int, seconds: float = 3.0) -> Got:
        """SPEAK_DONE, and the utterance's last frame: it travels on the other socket, so it
        may be read after the control message that follows it."""
        done = self.wait(SPEAK_DONE, since, seconds)
        utterance = done.body["utterance"]

        def last_frame() -> bool:
            return any(
                f.body["flags"] & 2 and f.body["utterance"] == utterance for f in self.frames
            )

        assert self.run(seconds, last_frame), f"no last frame of utterance {utterance}"
        return done


@pytest.fixture
def fake_mesh(tmp_path: Path) -> Iterator[tuple[FakeMesh, int, MeshKeys]]:
    keys = MeshKeys.make(tmp_path)
    public, secret = curve.read_pair(str(keys.server_secret))
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    port = free_port(2)  # and the bridge's, the next one
    socks = []
    try:
        for p in (port, port + 1):
            sock = context.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public.encode())
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret.encode())
            sock.bind(f"tcp://127.0.0.1:{p}")
            socks.append(sock)
        yield FakeMesh(socks[0], socks[1]), port, keys
    finally:
        for sock in socks:
            sock.close(linger=0)
        context.term()


def test_c_peer_against_a_scripted_router(
    tone_tts: Path, fake_mesh: tuple[FakeMesh, int, MeshKeys], tmp_path: Path
) -> None:
    mesh, port, keys = fake_mesh
    key = keys.worker("c1")
    args = peer_args(port, key, keys.server_public, "tone@test")
    with Peer(tone_tts, tmp_path / "peer.log", *args) as peer:
        # READY, with what section 5 asks for in its info; the identity is fresh and random
        ready = mesh.wait(READY, 0, 10.0)
        assert ready.body["name"] == "tone@test" and ready.body["kind"] == "tts", ready.body
        assert ready.body["pid"] == peer.proc.pid and "token" not in ready.body
        info = ready.body["info"]
        assert info["engine"] == "tone" and info["voices"] == ["tone:beep"], info
        assert info["default"] == "tone:beep" and info["host"], info
        assert info["load"] == 0 and info["sessions"] == 0, info
        assert ready.identity.startswith(b"tone@test.") and len(ready.identity) == 10 + 16

        # heartbeats every 500 ms
        n = len(mesh.control)
        mesh.run(1.3)
        beats = mesh.of(HEARTBEAT, n)
        assert 2 <= len(beats) <= 3, [round(b.t, 2) for b in beats]

        # garbage of every kind: dropped and counted, never fatal
        garbage = [
            [b"VXM1", bytes((HEARTBEAT,))],  # two frames
            [b"VXM2", bytes((HEARTBEAT,)), msgpack.packb({})],  # another version
            [b"VXM1", b"\x20\x20", msgpack.packb({})],  # a two-byte command
            [b"VXM1", b"\xee", msgpack.packb({})],  # an unknown command
            [b"VXM1", bytes((SPEAK,)), msgpack.packb([1, 2])],  # not a map
            [b"VXM1", bytes((SPEAK,)), b"\xc1"],  # not msgpack
            [b"VXM1", bytes((SPEAK,)), b"\x85\xa7session"],  # cut short
            [b"VXM1", bytes((SPEAK,)), msgpack.packb({"session": "s"})],  # fields missing
            [b"VXM1", bytes((SPEAK,)), msgpack.packb({1: 2})],  # an int key
            [b"VXM1", bytes((SPEAK,)), msgpack.packb({}) + b"\x00"],  # trailing bytes
            [b"VXM1", bytes((SPEAK,)), b"\x81\xa1x" + b"\x91" * 5000 + b"\xc0"],  # too deep
            [b"VXM1", bytes((STOP,)), b"\x82\xa7session\xa2\xff\xfe\xa5epoch\x05"],  # bad UTF-8
            pack(SPEAK, {"session": "s", "slot": "0", "epoch": 1, "utterance": 1, "text": "x"}),
            pack(PAUSE, {"session": "s", "epoch": True}),  # a bool is not an int
            pack(SPEAK, {"session": "s", "slot": 70000, "epoch": 1, "utterance": 1, "text": "x"}),
        ]
        for frames in garbage:
            mesh.send_raw(frames)
        n = len(mesh.control)
        mesh.run(1.2, lambda: len(mesh.of(HEARTBEAT, n)) >= 2)
        assert peer.proc.poll() is None, peer.log_text()
        counters = mesh.of(HEARTBEAT, n)[-1].body["info"]["counters"]
        assert counters.get("malformed") == len(garbage), counters
        assert not mesh.frames, "garbage made audio"

        # SPEAK: 16 frames on the initial credit, then only what CREDIT grants
        text = "Credit, please!"  # 15 bytes: 30 frames
        speak = {"session": "s1", "slot": 3, "generation": 7, "epoch": 1, "utterance": 1}
        n = len(mesh.control)
        mesh.send(SPEAK, {**speak, "text": text, "chunk": 0, "extra": {"ignored": [1]}})
        mesh.run(1.0)
        assert [f.body["seq"] for f in mesh.frames] == list(range(16)), "initial credit is 16"
        mesh.credit(3, 6, 100)  # another generation: ignored
        mesh.run(0.3)
        assert len(mesh.frames) == 16
        mesh.credit(3, 7, 24)
        mesh.run(0.5)
        assert len(mesh.frames) == 24, "sent beyond the credit"
        mesh.credit(3, 7, 20)  # granted never goes down: nothing changes
        mesh.credit(3, 7, 200)
        mesh.wait_done(n)
        frames = mesh.frames
        assert [f.body["seq"] for f in frames] == list(range(30))
        assert [f.body["flags"] for f in frames] == [1] + [0] * 28 + [2]
        for f in frames:
            assert {k: f.body[k] for k in speak} == speak and len(f.body["pcm"]) == FRAME_BYTES
        pcm = np.frombuffer(b"".join(f.body["pcm"] for f in frames), "<i2")  # little-endian
        assert np.abs(pcm.astype(int) - tone_pcm(text)).max() <= 1, "not the tone, or not LE"
        progress = mesh.of(SPEAK_PROGRESS, n)
        done = mesh.of(SPEAK_DONE, n)
        assert [p.body for p in progress] == [
            {"session": "s1", "epoch": 1, "utterance": 1, "chunk": 0}
        ]
        assert done[0].body == {"session": "s1", "epoch": 1, "utterance": 1, "samples": 30 * 960}
        assert progress[0].t <= done[0].t

        # PAUSE: no frame while paused, credit or not; RESUME goes on where it stopped.
        # (Another session on another slot: a fresh count, and the initial credit again.)
        mesh.frames.clear()
        n = len(mesh.control)
        chunks = ["One two.", "Three four five six seven eight nine ten.", ""]
        s2 = {"session": "s2", "slot": 4, "generation": 1, "epoch": 1, "utterance": 2}
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            mesh.send(SPEAK, {**s2, "text": chunk, "chunk": i, "last": last, "first": i == 0})
        mesh.run(1.0, lambda: len(mesh.frames) >= 16)
        mesh.send(PAUSE, {"session": "s2", "epoch": 1})
        mesh.run(0.3)
        assert len(mesh.frames) == 16
        mesh.credit(4, 1, 400)
        mesh.run(0.5)
        assert len(mesh.frames) == 16, "frames while paused"
        mesh.send(PAUSE, {"session": "s2", "epoch": 0})  # older: ignored
        mesh.send(RESUME, {"session": "s2", "epoch": 1})
        mesh.wait_done(n)
        want = tone_frames(chunks[0]) + tone_frames(chunks[1]) + 1  # + the silent last frame
        assert len(mesh.frames) == want, (len(mesh.frames), want)
        assert [f.body["seq"] for f in mesh.frames] == list(range(want)), "gaps"
        assert {f.body["slot"] for f in mesh.frames} == {4}
        assert mesh.frames[0].body["flags"] == 1 and mesh.frames[-1].body["flags"] == 2
        assert not any(mesh.frames[-1].body["pcm"]), "the last frame of an empty chunk is silence"
        assert [p.body["chunk"] for p in mesh.of(SPEAK_PROGRESS, n)] == [0, 1, 2]
        assert mesh.of(SPEAK_DONE, n)[0].body["samples"] == (want - 1) * 960

        # STOP: a new epoch drops the queued work of older ones; old epochs are ignored after.
        # (Session s1 again: 170 frames of credit left, then it waits.)
        mesh.frames.clear()
        n = len(mesh.control)
        mesh.send(SPEAK, {**speak, "utterance": 3, "text": "x" * 500})  # 1000 frames
        mesh.run(1.0, lambda: len(mesh.frames) >= 20)
        mesh.send(STOP, {"session": "s1", "epoch": 2, "reason": "interrupted"})
        mesh.run(0.3)
        cut = len(mesh.frames)
        mesh.credit(3, 7, 10_000)
        mesh.send(SPEAK, {**speak, "epoch": 1, "utterance": 4, "text": "stale"})
        mesh.send(STOP, {"session": "s1", "epoch": 2})  # the same epoch again: old news
        mesh.send(SPEAK, {**speak, "epoch": 2, "utterance": 5, "text": "ok", "first": False})
        mesh.wait_done(n)
        after = mesh.frames[cut:]
        assert cut <= 170 and [f.body["utterance"] for f in after] == [5] * 4, "old work went on"
        assert {f.body["epoch"] for f in after} == {2}
        assert [f.body["flags"] for f in after] == [0, 0, 0, 2], "first: false has no FLAG_FIRST"
        assert [d.body["utterance"] for d in mesh.of(SPEAK_DONE, n)] == [5]

        # MODEL_LIST and MODEL_LOAD (relayed by the router for `voxmesh models`): MODEL_INFO
        n = len(mesh.control)
        mesh.send(MODEL_LIST, {})
        mesh.send(MODEL_LOAD, {"model": "tone:other", "actor": "tone@test"})
        assert mesh.run(2.0, lambda: len(mesh.of(MODEL_INFO, n)) == 2)
        listed, refused = (m.body for m in mesh.of(MODEL_INFO, n))
        assert listed == {
            "available": ["tone:beep"],
            "resident": ["tone:beep"],
            "error": "",
            "actor": "tone@test",
        }
        assert "tone:beep" in refused["error"], refused

        # HELLO: READY again; SESSION_CLOSE: the session is forgotten
        n = len(mesh.control)
        mesh.send(HELLO, {})
        assert mesh.wait(READY, n).body["info"]["sessions"] == 2
        mesh.send(SESSION_CLOSE, {"session": "s1", "reason": "bye"})
        mesh.send(SESSION_CLOSE, {"session": "s2"})
        mesh.run(1.2, lambda: len(mesh.of(HEARTBEAT, n)) >= 2)
        assert mesh.of(HEARTBEAT, n)[-1].body["info"]["sessions"] == 0

        # a silent router: after 3 heartbeats, a fresh socket (a new identity) and READY
        old = mesh.identity
        mesh.beating = False
        n = len(mesh.control)
        t0 = time.monotonic()
        again = mesh.wait(READY, n, 6.0)
        assert again.identity != old and again.body["name"] == "tone@test"
        assert 1.2 < again.t - t0 < 4.0, again.t - t0
        mesh.beating = True

        # mutated messages of every kind we serve: whatever they decode to, the peer lives
        rng = random.Random(5)
        valid = [
            pack(SPEAK, {**speak, "session": "fuzz", "text": "abc", "voice": "", "last": False}),
            pack(STOP, {"session": "fuzz", "epoch": 9, "reason": "interrupted"}),
            pack(PAUSE, {"session": "fuzz", "epoch": 9}),
            pack(SESSION_CLOSE, {"session": "fuzz"}),
            pack(HEARTBEAT, {"info": {"load": 1.5, "voices": ["a"], "x": None}}),
        ]
        for _ in range(FUZZ):
            frames = list(rng.choice(valid))
            body = bytearray(frames[2])
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            frames[2] = bytes(body[: rng.randint(1, len(body))] if rng.random() < 0.3 else body)
            mesh.send_raw(frames)
        n = len(mesh.control)
        assert mesh.run(2.0, lambda: len(mesh.of(HEARTBEAT, n)) >= 2), "silent after fuzz"
        assert peer.proc.poll() is None, peer.log_text()

        # SIGTERM: GOODBYE, exit 0
        n = len(mesh.control)
        peer.proc.send_signal(signal.SIGTERM)
        assert mesh.wait(GOODBYE, n).body == {"reason": "stopping"}
        assert peer.proc.wait(timeout=5) == 0, peer.log_text()


# --- in a real mesh -----------------------------------------------------------------------


@dataclass
class CMesh:
    mesh: MeshProc
    keys: MeshKeys
    port: int
    tmp: Path


@pytest.fixture(scope="module")
def c_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CMesh]:
    """A session host with no TTS of its own, listening for remote actors on loopback."""
    tmp = tmp_path_factory.mktemp("c-mesh")
    keys = MeshKeys.make(tmp)
    port = free_port(2)  # and the bridge's, the next one
    with mesh_up(tmp, config=remote_config(keys, port)) as mesh:
        yield CMesh(mesh, keys, port, tmp)


def wait_joined(
    cm: CMesh, name: str, proc: subprocess.Popen[bytes], log: Callable[[], str]
) -> dict[str, Any]:
    def joined() -> dict[str, Any] | None:
        assert proc.poll() is None, f"{name} exited:\n{log()}"
        return remote_row(cm.mesh, name)

    return wait_for(joined, JOIN_S, f"{name} in voxmesh status", interval_s=0.3)


def wait_gone(cm: CMesh, name: str) -> None:
    wait_for(lambda: remote_row(cm.mesh, name) is None, 10.0, f"{name} gone from status")


@pytest.fixture(scope="module")
def c_peer(tone_tts: Path, c_mesh: CMesh) -> Iterator[Peer]:
    key = c_mesh.keys.worker("ctone")
    args = peer_args(c_mesh.port, key, c_mesh.keys.server_public, "ctone")
    with Peer(tone_tts, c_mesh.tmp / "ctone.log", *args) as peer:
        row = wait_joined(c_mesh, "ctone", peer.proc, peer.log_text)
        assert row["state"] == "remote" and row["kind"] == "tts", row
        assert row["info"]["engine"] == "tone" and row["host"], row
        yield peer


async def voiced_client(cm: CMesh, voice: str) -> WsClient:
    """A session that asks for ``voice`` (so it is routed to the actor that offers it)."""
    client = await WsClient.connect(cm.mesh.ws_url)
    since = client.mark()
    await client.send_json({"type": "voice", "voice": voice})
    ev = await client.wait_for(lambda e: e["type"] in ("voice", "error"), 5, since=since)
    assert ev["type"] == "voice", ev
    return client


async def test_a_say_is_spoken_by_the_c_peer(c_mesh: CMesh, c_peer: Peer) -> None:
    async with await voiced_client(c_mesh, "tone:beep") as client:
        since, first = client.mark(), len(client.frames)
        await client.say(SAY)
        start = await client.wait_for(
            lambda e: e["type"] in ("audio_start", "error"), 10, since=since
        )
        assert start["type"] == "audio_start", (start, c_mesh.mesh.log_tail(30))
        end = await client.wait_event("audio_end", 20, since=since)
        assert end["reason"] == "done" and end["utterance_id"] == start["utterance_id"], end
        got = client.frames[first:]
        want = reply_frames(SAY)
        assert abs(len(got) - want) <= 2, f"{len(got)} frames for a tone of {want}"
        assert {len(f.data) for f in got} == {FRAME_BYTES}
        pcm = np.frombuffer(b"".join(f.data for f in got), "<i2")
        head = tone_pcm(split_for_speech(SAY)[0])
        assert np.abs(pcm[: head.size].astype(int) - head).max() <= 1, "the tone changed"
    assert c_peer.proc.poll() is None, c_peer.log_text()
    # `voxmesh models load --actor` reaches it through the router
    port = str(c_mesh.mesh.port)
    loaded = c_mesh.mesh.cli(
        "models", "load", "tone:beep", "--actor", "ctone", "--json", "--port", port
    )
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["resident"] == ["tone:beep"], loaded.stdout
    rows = {r["name"]: r for r in status(c_mesh.mesh)["actors"]}
    assert rows["ctone"]["info"]["counters"].get("frames", 0) >= want, rows["ctone"]
    # nothing the peer sent was refused or taken for garbage by the router or the bridge
    log = c_mesh.mesh.log_text()
    assert "malformed" not in log and "refused" not in log, log
    bridge = rows["bridge"]["info"]["counters"]
    for name in ("malformed", "refused_data", "bad_frame", "seq_gap", "overflow_dropped"):
        assert not bridge.get(name), f"bridge {name}: {bridge}"


async def test_an_interrupted_say_stops(c_mesh: CMesh, c_peer: Peer) -> None:
    async with await voiced_client(c_mesh, "tone:beep") as client:
        since, first = client.mark(), len(client.frames)
        await client.say(LONG)
        start = await client.wait_event("audio_start", 10, since=since)
        await client.wait_until(lambda: len(client.frames) - first >= 25, 10, "25 frames")
        mark = client.mark()
        await client.interrupt()
        end = await client.wait_event("audio_end", 3, since=mark)
        assert end["reason"] == "interrupted" and end["utterance_id"] == start["utterance_id"]
        at_end = len(client.frames)
        assert at_end - first < reply_frames(LONG) // 2, "most of the reply went out anyway"
        await client.wait_quiet(0.4, 3.0)
        assert len(client.frames) - at_end <= 2, "frames kept coming after the interruption"
        since = client.mark()
        await client.say("Again.")
        assert (await client.wait_event("audio_end", 10, since=since))["reason"] == "done"


async def test_embedded_actor_speaks_and_stops_on_ctrl_c(c_mesh: CMesh) -> None:
    key = c_mesh.keys.worker("embedded")
    log_path = c_mesh.tmp / "embedded.log"
    argv = [
        sys.executable,
        str(EMBED),
        "--connect",
        f"tcp://127.0.0.1:{c_mesh.port}",
        "--key",
        str(key),
        "--server-key",
        str(c_mesh.keys.server_public),
        "--name",
        "embedded",
        "--tick-s",
        "0.2",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=c_mesh.mesh.env)
    try:

        def log_text() -> str:
            return log_path.read_text(errors="replace")

        row = wait_joined(c_mesh, "embedded", proc, log_text)
        assert row["info"]["engine"] == "mock" and row["info"]["remote"] is True, row

        async with await voiced_client(c_mesh, row["info"]["default"]) as client:
            since = client.mark()
            await client.say("Spoken from inside another program.")
            end = await client.wait_event("audio_end", 20, since=since)
            assert end["reason"] == "done", end
            assert len(client.frames) > 10
        assert "tick " in log_text(), "the host program's own task did not run"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, log_text()
        assert "embedded: stopped" in log_text(), log_text()
        assert "Traceback" not in log_text(), log_text()
        wait_gone(c_mesh, "embedded")  # its GOODBYE: forgotten at once
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
