"""VAD and ASR on another host (docs/protocol.md section 5): mic frames over the data socket.

In-process first: the bridge (actors/bridge.py) streams a session's mic ring over loopback
tcp with CURVE to a worker's private ring (mesh/remote_mic.py), every frame at its own
sequence, a backlog included; a restarted bridge costs the feed nothing it can still have;
what the network loses is a gap, and a live (VAD) stream drops what arrives late. The same
restart no longer stalls a TTS writer that had used all its credit (mesh/remote_ring.py).

Then two hosts, as tests/remotehost.py makes them: a session host that runs no ASR (and in
one test no VAD either) of its own (``remote.only``) with ``voxmesh worker asr`` / ``vad``
in a mount namespace of their own: an utterance spoken into the session host's mic is
transcribed on the worker and answered; the remote ASR killed mid-turn still ends the turn
with a reply or an explicit error event, never silence, and the next turn is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from meshproc import MeshProc, free_port, mesh_up, wait_for
from remotehost import MeshKeys, RemoteWorker, remote_config, remote_row, status, wait_remote
from speechgen import espeak_pcm, have_espeak

from voxmesh.actors.bridge import BridgeActor
from voxmesh.client import MicStream, WsClient
from voxmesh.mesh import curve
from voxmesh.mesh.protocol import Mic, SessionOpen
from voxmesh.mesh.remote_mic import LIVE_LATE_S, MicFeed
from voxmesh.mesh.remote_ring import RemoteSegment
from voxmesh.mesh.ring import (
    MIC_FRAME_SAMPLES,
    OUT_FRAME_BYTES,
    Geometry,
    MicReader,
    RingSegment,
    segment_name,
)
from voxmesh.mesh.settings import RemoteSettings
from voxmesh.mesh.sockets import Counters
from voxmesh.mesh.spec import MeshPlace
from voxmesh.speech.wer import word_error_rate

pytestmark = pytest.mark.timeout(240)

SENTENCE = "Please send me the report by Friday."
TURN_S = 30.0  # one spoken turn on a busy 2-core box, a worker's ASR restart included
WAIT_S = 10.0  # in-process: frames across loopback


def mic_frame(seq: int) -> bytes:
    return np.full(MIC_FRAME_SAMPLES, seq % 30000, np.int16).tobytes()


# --- in-process: the bridge and a worker's feed ----------------------------------------------


class Host:
    """A session host's ring segment and bridge, restartable; the worker's client keys."""

    def __init__(self, tmp_path: Path, geometry: Geometry) -> None:
        self.keys = MeshKeys.make(tmp_path)
        self.client = curve.client_keys(str(self.keys.worker("w1")), str(self.keys.server_public))
        self.segment = RingSegment.create(segment_name(os.getpid(), "mictest"), geometry)
        port = free_port(2)  # and the bridge's, the next one
        self.settings = RemoteSettings(
            listen=f"tcp://127.0.0.1:{port}",
            data=f"tcp://127.0.0.1:{free_port()}",
            key=str(self.keys.server_secret),
            allowed=str(self.keys.allowed),
        )
        self.bridge: BridgeActor | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        place = MeshPlace(router=None, segment=self.segment.name)
        self.bridge = BridgeActor("bridge", place, self.settings)
        self._task = asyncio.ensure_future(self.bridge.run())
        await wait_until(lambda: self.bridge is not None and self.bridge.mic is not None)

    async def stop(self) -> None:
        if self.bridge is not None and self._task is not None:
            self.bridge.stop()
            await asyncio.wait_for(self._task, WAIT_S)
        self.bridge = self._task = None

    def close(self) -> None:
        self.segment.close()
        self.segment.unlink()


async def wait_until(cond: Any, timeout_s: float = WAIT_S) -> None:
    """Until ``cond()``; woken by the loop's own work (sockets, doorbells), checked each turn."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def host_and_feed(
    tmp_path: Path, kind: str = "asr"
) -> AsyncIterator[tuple[Host, MicFeed, zmq.Context[zmq.Socket[bytes]]]]:
    host = Host(tmp_path, Geometry(2, 64, 8))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    feed: MicFeed | None = None
    try:
        await host.start()
        assert kind in ("asr", "vad")
        feed = MicFeed(
            ctx,
            host.settings.data,
            host.client,
            Counters(),
            kind="asr" if kind == "asr" else "vad",
            geometry=Geometry(2, 64, 1),
        )
        feed.open()
        yield host, feed, ctx
    finally:
        if feed is not None:
            feed.close()
        await host.stop()
        host.close()
        ctx.destroy(linger=0)


def local_frames(feed: MicFeed, slot: int) -> list[tuple[int, bytes]]:
    reader = MicReader(feed.segment.slots[slot].mic, from_start=True)
    out = []
    while (frame := reader.read()) is not None:
        out.append((frame.seq, frame.data))
    return out


async def test_mic_frames_reach_a_private_ring_at_their_positions(tmp_path: Path) -> None:
    async with host_and_feed(tmp_path) as (host, feed, _):
        slot = host.segment.slots[1]
        generation = slot.claim()
        for seq in range(10):  # before anyone asked: the ASR's backlog
            slot.mic.write(mic_frame(seq))
        local = feed.subscribe(SessionOpen("s1", 1, generation))
        assert local is not None  # for our ring: our slot, our generation
        await wait_until(lambda: feed.covered("s1") >= 10 * MIC_FRAME_SAMPLES)
        for seq in range(10, 15):  # live, as the transport writes them
            slot.mic.write(mic_frame(seq))
        await wait_until(lambda: feed.covered("s1") >= 15 * MIC_FRAME_SAMPLES)
        assert local_frames(feed, local.slot) == [(s, mic_frame(s)) for s in range(15)]

        # The bridge restarts; what the transport writes meanwhile is still in the ring there.
        await host.stop()
        for seq in range(15, 20):
            slot.mic.write(mic_frame(seq))
        await host.start()
        await wait_until(lambda: feed.covered("s1") >= 20 * MIC_FRAME_SAMPLES)
        assert local_frames(feed, local.slot) == [(s, mic_frame(s)) for s in range(20)]
        assert feed.counters["data_reopened"] >= 1 and not feed.counters["mic_duplicate"]
        bridge = host.bridge
        assert bridge is not None and bridge.info()["mic_streams"] == 1

        # The session ends there: its stream stops; the slot is ours to give again.
        slot.release()
        slot.mic.write(mic_frame(20))
        await wait_until(lambda: bridge.info()["mic_streams"] == 0)
        feed.unsubscribe("s1")
        assert feed.covered("s1") == 0


def test_lost_frames_are_a_gap_and_a_live_stream_drops_late_ones() -> None:
    now = [100.0]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    feeds: list[MicFeed] = []
    try:
        for kind in ("asr", "vad"):
            feeds.append(
                MicFeed(
                    ctx,
                    "tcp://127.0.0.1:1",  # never opened: frames are handed over directly
                    None,
                    Counters(),
                    kind="asr" if kind == "asr" else "vad",
                    geometry=Geometry(1, 64, 1),
                    clock=lambda: now[0],
                )
            )
        asr, vad = feeds
        for feed in feeds:
            local = feed.subscribe(SessionOpen("s1", 3, 7))
            assert local is not None and local.slot == 0  # ours, not the session host's 3

        def send(seq: int, n: int, sent: float) -> None:
            pcm = b"".join(mic_frame(seq + i) for i in range(n))
            for feed in feeds:
                feed.receive(Mic(3, 7, seq, sent, pcm))

        send(500, 3, 99.99)  # the first frames set where the ring starts: no gap
        send(505, 2, 99.99)  # two frames lost on the way
        send(504, 1, 99.99)  # too late to fill a gap behind the head: dropped as a duplicate
        now[0] = 100.0 + LIVE_LATE_S + 0.1  # a stall: these sat in a queue
        send(507, 2, 99.99)
        for feed in feeds:
            assert feed.counters["mic_gap"] == 2
        assert [s for s, _ in local_frames(asr, 0)] == [500, 501, 502, 505, 506, 507, 508]
        assert [s for s, _ in local_frames(vad, 0)] == [500, 501, 502, 505, 506]
        assert vad.counters["mic_late"] == 2 and not asr.counters["mic_late"]
        assert asr.covered("s1") == 509 * MIC_FRAME_SAMPLES
        send(520, 1, now[0] - 0.01)  # on time again: the VAD takes it, after a gap
        assert [s for s, _ in local_frames(vad, 0)][-1] == 520
    finally:
        for feed in feeds:
            feed.close()
        ctx.destroy(linger=0)


async def test_a_restarted_bridge_does_not_stall_a_writer_out_of_credit(tmp_path: Path) -> None:
    async with host_and_feed(tmp_path) as (host, _, ctx):
        slot = host.segment.slots[0]
        generation = slot.claim()
        remote = RemoteSegment(ctx, host.settings.data, host.client, Counters())
        remote.open()
        try:
            remote.note(0, generation, "s1")
            ring = remote.slots[0].out
            while ring.free() > 0:  # the initial credit; the out ring (8) holds half of it
                ring.write(b"\1" * OUT_FRAME_BYTES)
            await wait_until(lambda: slot.out.queued() == 8)
            assert ring.free() == 0  # nobody plays: no CREDIT comes

            await host.stop()  # ...and the bridge that held the rest is gone
            await host.start()
            slot.out.flush()  # the listener plays what the ring held
            await wait_until(lambda: ring.free() > 0)  # a fresh connection: a fresh count
            for _ in range(4):
                ring.write(b"\2" * OUT_FRAME_BYTES)
            await wait_until(lambda: slot.out.queued() == 4)
            got = [slot.out.read() for _ in range(4)]
            assert all(f is not None and f.data[:1] == b"\2" for f in got)
            await wait_until(lambda: ring.granted > 4)  # and the new bridge's credit flows
        finally:
            remote.close()


# --- two hosts -------------------------------------------------------------------------------

needs_speech = pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng")


def readers_config(keys: MeshKeys, port: int, only: list[str]) -> dict[str, Any]:
    """A session host with its own (mock) TTS whose ``only`` readers are on workers."""
    return remote_config(keys, port, tts={"devices": "cpu"}, remote={"only": only})


@contextlib.contextmanager
def reader_hosts(tmp_path: Path, only: list[str]) -> Iterator[tuple[MeshProc, list[RemoteWorker]]]:
    keys = MeshKeys.make(tmp_path)
    port = free_port(2)  # and the bridge's, the next one
    with (
        mesh_up(tmp_path, config=readers_config(keys, port, only)) as mesh,
        contextlib.ExitStack() as stack,
    ):
        workers = [
            stack.enter_context(
                RemoteWorker(tmp_path, mesh, keys, keys.worker(k), f"{k}1", port, kind=k)
            )
            for k in only
        ]
        for worker in workers:
            wait_remote(mesh, worker)
        yield mesh, workers


def speak(client: WsClient, mic: MicStream, text: str) -> int:
    """Queue ``text`` (espeak) and a second of silence into the mic; the event mark before."""
    since = client.mark()
    mic.queue(espeak_pcm(text))
    mic.queue_silence(1.0)
    return since


async def turn_outcome(client: WsClient, since: int) -> dict[str, Any]:
    """The turn's end as the client sees it: the reply's ``audio_end``, or an ``error``."""
    return await client.wait_for(
        lambda e: e.get("type") in ("error", "audio_end"), TURN_S, since=since
    )


async def wait_type(client: WsClient, since: int, kind: str, **fields: Any) -> dict[str, Any]:
    def match(e: dict[str, Any]) -> bool:
        return e.get("type") == kind and all(e.get(k) == v for k, v in fields.items())

    return await client.wait_for(match, TURN_S, since=since)


async def heard_and_answered(client: WsClient, since: int) -> None:
    final = await wait_type(client, since, "transcript", final=True)
    assert word_error_rate(SENTENCE, str(final["text"])) <= 0.5, final
    end = await turn_outcome(client, since)
    assert end["type"] == "audio_end" and end["reason"] == "done", end
    replies = [e.data["text"] for e in client.received("reply", since)]
    assert replies == [final["text"]]  # the echo responder


@needs_speech
async def test_an_utterance_is_heard_by_vad_and_asr_on_other_hosts(tmp_path: Path) -> None:
    with reader_hosts(tmp_path, ["vad", "asr"]) as (mesh, workers):
        for worker in workers:
            row = remote_row(mesh, worker.name)
            assert row is not None and row["state"] == "remote", row
            assert row["kind"] == worker.name[:3] and row["host"], row
            assert row["info"].get("remote") is True, row
        assert not any(a["name"] in ("vad", "asr") for a in status(mesh)["actors"])
        async with (
            await WsClient.connect(mesh.ws_url, sample_rate=16000) as client,
            MicStream(client, 16000) as mic,
        ):
            await heard_and_answered(client, speak(client, mic, SENTENCE))
        bridge = next(a for a in status(mesh)["actors"] if a["name"] == "bridge")
        assert bridge["info"]["counters"].get("mic_frames", 0) > 100, bridge


@needs_speech
async def test_remote_asr_killed_mid_turn_ends_the_turn_loudly(tmp_path: Path) -> None:
    with reader_hosts(tmp_path, ["asr"]) as (mesh, (worker,)):
        async with (
            await WsClient.connect(mesh.ws_url, sample_rate=16000) as client,
            MicStream(client, 16000) as mic,
        ):
            # The ASR actor dies while the user speaks; its worker restarts it.
            since = speak(client, mic, SENTENCE)
            await wait_type(client, since, "vad", event="speech_start")
            row = remote_row(mesh, worker.name)
            assert row is not None
            os.kill(int(row["pid"]), signal.SIGKILL)
            end = await turn_outcome(client, since)
            if end["type"] == "error":  # it was not back within hold_s
                assert end["code"] == "unavailable", end
            else:  # it was, and heard the turn from the session host's ring
                assert end["reason"] == "done" and client.received("reply", since), end
            assert "lost asr1" in mesh.log_text(), "the router never saw it go"
            await wait_type(client, since, "state", state="listening")

            def restarted() -> bool:
                now = remote_row(mesh, worker.name)
                return now is not None and now["pid"] != row["pid"]

            await asyncio.to_thread(wait_for, restarted, TURN_S, "the restarted ASR")
            await heard_and_answered(client, speak(client, mic, SENTENCE))

            # The worker's host goes for good mid-turn: no ASR anywhere, and the client is told.
            since = speak(client, mic, SENTENCE)
            await wait_type(client, since, "vad", event="speech_start")
            worker.kill()
            end = await turn_outcome(client, since)
            assert end["type"] == "error" and end["code"] == "unavailable", end
            await wait_type(client, since, "state", state="listening")
