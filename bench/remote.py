"""TTS local vs on another host: first audio, interruption, data-socket bytes, bridge CPU;
and ASR local vs on another host: voice-to-voice and the mic's bytes on the data socket.

Three meshes, up side by side for the whole scenario (so each sees the same background),
rounds alternating between them: ``local`` (the mock TTS actor on this host, rings),
``remote`` (no local TTS; ``voxmesh worker tts`` in a mount namespace of its own, over
loopback tcp with CURVE, frames through the bridge) and ``remote +20 ms each way``: the
worker in a network namespace of its own behind a veth pair with ``netem delay 20ms`` on
both ends (private addresses this scenario makes and removes) where the kernel has netem,
else behind a userspace tcp relay on loopback that holds every chunk 20 ms each way. The
mock voice keeps synthesis out of the figures: what differs is the path of the frames.

Interruption here is the client's ``interrupt`` (the same PAUSE/HOLD/STOP path a barge-in
takes after the VAD; the VAD side does not depend on where the TTS runs).

``remote_asr``: two meshes with the mock TTS and the echo responder, one with its own ASR,
one with none (``remote.only = ["asr"]``) and ``voxmesh worker asr`` in a mount namespace
over loopback tcp with CURVE, the mic frames through the bridge; the same Piper utterances
alternated between them. Voice-to-voice is the client's: the packet holding the last
voiced sample leaves -> the first reply frame arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from voxmesh.client import MicStream, WsClient
from voxmesh.mesh import curve
from voxmesh.supervisor.launch import MeshError, MeshProcess, WorkerProcess, free_port, wait_for

from . import speech
from .registry import BenchContext, Outcome, require_tool, scenario
from .report import Figure, Row

SHORT = "Hello there, how are you?"
LONG = (
    "This is a long reply, so that it is still playing when the listener interrupts it, "
    "sentence after sentence, and then some more."
)
NETEM_MS = 20
SUBNET = "10.231.{}.{}"


@dataclass
class Variant:
    name: str
    mesh: MeshProcess
    worker: WorkerProcess | None = None
    first_audio: list[float] = field(default_factory=list)
    pause_server: list[float] = field(default_factory=list)  # HOLD issued -> last frame out
    pause_client: list[float] = field(default_factory=list)  # interrupt sent -> clear in
    frames_after: list[float] = field(default_factory=list)  # frames in after the interrupt
    bytes_per_s: list[float] = field(default_factory=list)
    bridge_cpu: list[float] = field(default_factory=list)  # % of a core per session


class DelayRelay:
    """A tcp relay on loopback that delivers every chunk ``delay_s`` late, both ways (the
    stand-in for netem where the kernel has none); one thread, its own loop."""

    def __init__(self, targets: dict[int, int], delay_s: float) -> None:
        self.delay_s = delay_s
        self.targets = targets  # listen port -> upstream port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        for listen, upstream in self.targets.items():
            self._loop.run_until_complete(
                asyncio.start_server(
                    functools.partial(self._serve, upstream=upstream), "127.0.0.1", listen
                )
            )
        self._ready.set()
        self._loop.run_forever()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: int
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()  # the peer reconnects, as it would to a host not up yet
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                loop.call_later(self.delay_s, writer.write, chunk)  # same delay: order kept
        loop.call_later(self.delay_s, writer.close)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def _netns(tag: str) -> Iterator[tuple[str, str, str]]:
    """(namespace, host address, worker address): a veth pair with netem on both ends."""
    ns, host_if, ns_if = f"vxm{tag}", f"vxh{tag}", f"vxw{tag}"
    octet = int(tag) % 250 + 1
    host_ip, ns_ip = SUBNET.format(octet, 1), SUBNET.format(octet, 2)
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if],
        ["ip", "-n", ns, "link", "set", ns_if, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["tc", "qdisc", "add", "dev", host_if, "root", "netem", "delay", f"{NETEM_MS}ms"],
        ["tc", "-n", ns, "qdisc", "add", "dev", ns_if, "root", "netem", "delay", f"{NETEM_MS}ms"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=10)
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _netns_possible() -> str:
    """ "" when a network namespace with netem can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    return ""


def _remote_mesh(workdir: Path, host: str, env: dict[str, str]) -> tuple[MeshProcess, Path, Path]:
    """A session host with no TTS of its own listening on ``host``; (mesh, key, server key)."""
    keys = workdir / "keys"
    server_public, server_secret = curve.make_keys(keys / "mesh", "server")
    allowed = keys / "allowed"
    allowed.mkdir(parents=True)
    worker_public, worker_secret = curve.make_keys(keys / "worker", "worker")
    shutil.copy(worker_public, allowed / worker_public.name)
    port = free_port(2)  # and the bridge's, the next one
    env = {
        "VOXMESH_TTS_DEVICES": "none",
        "VOXMESH_REMOTE_LISTEN": f"tcp://{host}:{port}",
        "VOXMESH_REMOTE_KEY": str(server_secret),
        "VOXMESH_REMOTE_ALLOWED": str(allowed),
        **env,
    }
    return MeshProcess(workdir, tts="mock", env=env), worker_secret, server_public


def _start_remote(
    name: str,
    workdir: Path,
    host: str,
    *,
    netns: str | None = None,
    relay: Callable[[int], str] | None = None,
    kind: str = "tts",
    env: dict[str, str] | None = None,
) -> Variant:
    """``relay(port)``: start a delaying relay to the mesh's ``port`` and port + 1, and
    say where the worker connects instead."""
    workdir.mkdir(parents=True)
    env = {"VOXMESH_VAD_TURN_MODEL": "off", **(env or {})}
    mesh, key, server_key = _remote_mesh(workdir, host, env)
    listen = mesh.env["VOXMESH_REMOTE_LISTEN"]
    connect = relay(int(listen.rpartition(":")[2])) if relay else listen
    mesh.wait_healthy()
    worker = WorkerProcess(
        workdir, connect=connect, key=key, server_key=server_key, name="w1", netns=netns, kind=kind
    )
    variant = Variant(name, mesh, worker)
    wait_for(lambda: _remote_up(mesh), 60.0, f"{name}: the worker in status")
    return variant


def _remote_up(mesh: MeshProcess) -> bool:
    return any(a.get("state") == "remote" for a in mesh.status().actors)


def _bridge(mesh: MeshProcess) -> dict[str, Any]:
    return next(a for a in mesh.status().actors if a.get("name") == "bridge")


async def _first_audio(v: Variant, rounds: int) -> None:
    async with await WsClient.connect(v.mesh.ws_url) as c:
        for _ in range(rounds):
            since, first = c.mark(), len(c.frames)
            t0 = await c.say(SHORT)
            frame = await c.wait_frame(first, 20)
            v.first_audio.append((frame.t - t0) * 1e3)
            await c.wait_event("audio_end", 30, since=since)


async def _interrupt(v: Variant, rounds: int) -> None:
    async with await WsClient.connect(v.mesh.ws_url) as c:
        for _ in range(rounds):
            since, first = c.mark(), len(c.frames)
            await c.say(LONG)
            await c.wait_frame(first + 24, 20)  # the 25th frame of the reply
            mark = c.mark()
            t_sent = await c.interrupt()
            clear = await c.wait_event("clear", 5, since=mark)
            await c.wait_event("audio_end", 5, since=since)
            await c.wait_quiet(0.3, 5)
            v.pause_server.append((clear["t_last_frame"] - clear["t_issued"]) * 1e3)
            clear_at = next(e.t for e in c.events[mark:] if e.data.get("type") == "clear")
            v.pause_client.append((clear_at - t_sent) * 1e3)
            v.frames_after.append(float(sum(f.t > t_sent for f in c.frames[first:])))


async def _data_rate(v: Variant, sessions: int) -> None:
    """``sessions`` speaking LONG at once: bridge bytes per audio second, bridge CPU."""
    bridge = _bridge(v.mesh)
    proc = psutil.Process(int(bridge["pid"]))
    bytes0 = int(bridge["info"].get("bytes_in", 0))
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    clients = [await WsClient.connect(v.mesh.ws_url) for _ in range(sessions)]
    try:
        marks = [c.mark() for c in clients]
        await asyncio.gather(*(c.say(LONG) for c in clients))
        await asyncio.gather(
            *(c.wait_event("audio_end", 60, since=m) for c, m in zip(clients, marks, strict=True))
        )
        audio_s = sum(len(c.frames) for c in clients) * 0.020
    finally:
        for c in clients:
            await c.close()
    cpu1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
    bytes1 = int(_bridge(v.mesh)["info"].get("bytes_in", 0))
    v.bytes_per_s.append((bytes1 - bytes0) / (audio_s / sessions) / sessions)
    v.bridge_cpu.append(100 * (cpu1 - cpu0) / (t1 - t0) / sessions)


@scenario("remote", "TTS on another host: first audio, interruption, bridge cost", order=67)
def remote_scenario(ctx: BenchContext, out: Outcome) -> None:
    require_tool("unshare", "the worker host needs a mount namespace")
    rounds, repeats = (3, 1) if ctx.quick else (8, 3)
    root = Path(tempfile.mkdtemp(prefix="vxm-remote-"))
    variants: list[Variant] = []
    why_no_netem = _netns_possible()
    try:
        (root / "local").mkdir()
        local = MeshProcess(root / "local", tts="mock", env={"VOXMESH_VAD_TURN_MODEL": "off"})
        variants.append(Variant("local", local))
        local.wait_healthy()
        variants.append(_start_remote("remote (loopback)", root / "remote", "127.0.0.1"))
        with contextlib.ExitStack() as stack:
            delayed = f"remote +{NETEM_MS} ms each way"
            if not why_no_netem:
                try:
                    ns, host_ip, _ = stack.enter_context(_netns(str(os.getpid() % 10000)))
                    variants.append(_start_remote(delayed, root / "netem", host_ip, netns=ns))
                except (subprocess.CalledProcessError, MeshError) as exc:
                    err = getattr(exc, "stderr", b"") or b""
                    why_no_netem = f"netem: {exc} {err.decode(errors='replace').strip()}"
            if why_no_netem:

                def relay(port: int) -> str:
                    front = free_port(2)
                    r = DelayRelay({front: port, front + 1: port + 1}, NETEM_MS / 1000)
                    stack.callback(r.close)
                    return f"tcp://127.0.0.1:{front}"

                variants.append(
                    _start_remote(delayed + " (relay)", root / "relay", "127.0.0.1", relay=relay)
                )
            for _ in range(repeats):  # A B C A B C: the box drifts
                for v in variants:
                    asyncio.run(_first_audio(v, rounds))
                    asyncio.run(_interrupt(v, max(2, rounds // 2)))
            for v in variants[1:]:
                for _ in range(repeats):
                    asyncio.run(_data_rate(v, 4))
            _report(out, variants, why_no_netem)
            for v in variants:  # stopped inside the namespace's lifetime
                if v.worker is not None:
                    v.worker.kill()
                v.mesh.stop()
    finally:
        for v in variants:
            if v.worker is not None and v.worker.alive():
                v.worker.kill()
            v.mesh.stop()
        shutil.rmtree(root, ignore_errors=True)


def _report(out: Outcome, variants: list[Variant], why_no_netem: str) -> None:
    notes = (
        [f"no netem here ({why_no_netem}): the delay came from a userspace tcp relay"]
        if why_no_netem
        else []
    )
    fal = out.add(
        Figure(
            "remote_first_audio",
            "first audio, TTS local vs on another host (mock voice)",
            "client: `say` sent -> first audio frame received; meshes alternated",
            notes=notes,
        )
    )
    pause = out.add(
        Figure(
            "remote_pause",
            "interruption, TTS local vs on another host",
            "transport: HOLD issued -> last frame sent (the `clear` event's own times)",
            target="a pause stops at the transport within one frame (20 ms), whatever is in flight",
        )
    )
    stop = out.add(
        Figure(
            "remote_interrupt_client",
            "interruption as the client sees it, TTS local vs on another host",
            "client: `interrupt` sent -> `clear` received",
        )
    )
    after = out.add(
        Figure(
            "remote_frames_after_interrupt",
            "audio frames the client still received after sending `interrupt`",
            "count of 20 ms frames received after `interrupt` was sent (the transport's lead "
            "and what was on the wire)",
            unit="frames",
        )
    )
    for v in variants:
        fal.add(Row(v.name, v.first_audio))
        pause.add(Row(v.name, v.pause_server))
        stop.add(Row(v.name, v.pause_client))
        after.add(Row(v.name, v.frames_after))
    data = out.add(
        Figure(
            "remote_bridge_cost",
            "the data socket: bytes per second per session, and the bridge's CPU",
            "4 sessions speaking at once; bridge bytes in / audio seconds / sessions (B/s), "
            "bridge process CPU / wall time / sessions (% of a core)",
            unit="",
        )
    )
    for v in variants[1:]:
        data.add(Row(f"{v.name}: bytes/s per session", v.bytes_per_s))
        data.add(Row(f"{v.name}: bridge CPU % of a core per session", v.bridge_cpu))


# --- ASR on another host -----------------------------------------------------------------------


@dataclass
class AsrVariant:
    name: str
    mesh: MeshProcess
    remote: bool = False  # its ASR is a worker, its mic goes through the bridge
    v2v: list[float] = field(default_factory=list)
    mic_bytes_per_s: list[float] = field(default_factory=list)  # zmq messages, one session
    bridge_cpu: list[float] = field(default_factory=list)  # % of a core, one session


async def _voice_turns(v: AsrVariant, texts: list[str]) -> None:
    bridge = _bridge(v.mesh) if v.remote else None
    bytes0 = int(bridge["info"].get("mic_bytes_out", 0)) if bridge else 0
    proc = psutil.Process(int(bridge["pid"])) if bridge else None
    cpu0 = sum(proc.cpu_times()[:2]) if proc else 0.0
    async with (
        await WsClient.connect(v.mesh.ws_url, sample_rate=speech.MIC_RATE) as c,
        MicStream(c, speech.MIC_RATE) as mic,
    ):
        t0 = time.monotonic()
        for text in texts:
            audio, _, last = speech.spoken(text)
            since, first = c.mark(), len(c.frames)
            end = mic.queue(audio)
            await mic.wait_sent(end)
            t_last = mic.sent_time(end - audio.size + last - 1)
            frame = await c.wait_frame(first, 20)
            if t_last is not None:
                v.v2v.append((frame.t - t_last) * 1e3)
            await c.wait_event("audio_end", 30, since=since)
        wall = time.monotonic() - t0
    if bridge is not None:  # the mic streams all the while (silence too): bytes per second
        bytes1 = int(_bridge(v.mesh)["info"].get("mic_bytes_out", 0))
        v.mic_bytes_per_s.append((bytes1 - bytes0) / wall)
        assert proc is not None
        v.bridge_cpu.append(100 * (sum(proc.cpu_times()[:2]) - cpu0) / wall)


@scenario("remote_asr", "ASR on another host: voice-to-voice vs local, mic bytes", order=68)
def remote_asr_scenario(ctx: BenchContext, out: Outcome) -> None:
    require_tool("unshare", "the worker host needs a mount namespace")
    rounds, repeats = (2, 1) if ctx.quick else (4, 3)
    root = Path(tempfile.mkdtemp(prefix="vxm-remote-asr-"))
    variants: list[AsrVariant] = []
    workers: list[WorkerProcess] = []
    try:
        (root / "local").mkdir()
        local = MeshProcess(root / "local", tts="mock", env={"VOXMESH_VAD_TURN_MODEL": "off"})
        variants.append(AsrVariant("asr local", local))
        local.wait_healthy()
        only_remote = {"VOXMESH_TTS_DEVICES": "cpu", "VOXMESH_REMOTE_ONLY": "asr"}
        remote = _start_remote("asr", root / "remote", "127.0.0.1", kind="asr", env=only_remote)
        assert remote.worker is not None
        workers.append(remote.worker)
        variants.append(AsrVariant("asr remote (loopback, CURVE)", remote.mesh, remote=True))
        texts = speech.sample(speech.UTTERANCES, rounds * repeats)
        for i in range(repeats):  # A B A B: the box drifts
            for v in variants:
                asyncio.run(_voice_turns(v, texts[i * rounds : (i + 1) * rounds]))
        fig = out.add(
            Figure(
                "remote_asr_v2v",
                "voice-to-voice, ASR local vs on another host (mock TTS, echo, vad off)",
                "client: packet with the last voiced sample sent -> first reply frame in; "
                "meshes alternated, the same Piper utterances",
            )
        )
        for v in variants:
            fig.add(Row(v.name, v.v2v))
        mic = out.add(
            Figure(
                "remote_asr_mic_bytes",
                "mic audio on the data socket: bytes per second, bridge CPU, per session",
                "bridge MIC message bytes (VXM1 frames, before CURVE and tcp) / wall time (B/s), "
                "bridge process CPU / wall time (% of a core), one session streaming its mic "
                "(speech and silence alike)",
                unit="",
            )
        )
        mic.add(Row(f"{variants[1].name}: bytes/s", variants[1].mic_bytes_per_s))
        mic.add(Row(f"{variants[1].name}: bridge CPU %", variants[1].bridge_cpu))
    finally:
        for w in workers:
            if w.alive():
                w.kill()
        for v in variants:
            v.mesh.stop()
        shutil.rmtree(root, ignore_errors=True)
