"""Who may speak on the mesh, and what strangers cost: a Hub with a secret, raw DEALERs.

Every socket is ipc under the test's tmp dir and closed with linger 0 in ``finally``; every
wait is bounded. The hub is driven by a real asyncio loop, as in an actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import zmq

from voxmesh.mesh import auth, protocol
from voxmesh.mesh.hub import MAX_HELD_BYTES, MAX_STRANGERS, STRANGER_BUDGET, Hub, Peer
from voxmesh.mesh.link import Link
from voxmesh.mesh.protocol import ClientText, Heartbeat, Hello, Message, Ready
from voxmesh.mesh.sockets import MAX_FRAME_BYTES

SECRET = auth.new_secret()
HB_S = 0.2


async def until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


class Recorder:
    def __init__(self) -> None:
        self.ready: list[Peer] = []
        self.messages: list[tuple[str, Message]] = []

    def on_message(self, peer: Peer, msg: Message) -> None:
        self.messages.append((peer.name, msg))

    def on_ready(self, peer: Peer) -> None:
        self.ready.append(peer)


@contextlib.asynccontextmanager
async def hub_at(
    endpoint: str, ctx: zmq.Context[zmq.Socket[bytes]], heartbeat_s: float = HB_S
) -> AsyncIterator[tuple[Hub, Recorder]]:
    rec = Recorder()
    hub = Hub(
        ctx, endpoint, rec.on_message, on_ready=rec.on_ready, heartbeat_s=heartbeat_s, secret=SECRET
    )
    try:
        yield hub, rec
    finally:
        hub.close()


@contextlib.contextmanager
def dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, identity: str
) -> Iterator[zmq.Socket[bytes]]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def received(sock: zmq.Socket[bytes]) -> list[Message]:
    out = []
    while sock.poll(0):
        out.append(protocol.decode(sock.recv_multipart()))
    return out


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def ready(name: str, kind: str, token: str) -> list[bytes]:
    return protocol.encode(Ready(name=name, kind=kind, pid=os.getpid(), token=token))


def test_a_ready_without_the_right_token_is_refused_and_told_nothing(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/hub.sock"

    async def scenario() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            async with hub_at(endpoint, ctx) as (hub, rec):
                with dealer(ctx, endpoint, "vad") as sock:
                    sock.send_multipart(ready("vad", "vad", ""))  # no token
                    sock.send_multipart(ready("vad", "vad", auth.token_for(SECRET, "asr")))
                    sock.send_multipart(ready("vad", "vad", "0" * 64))
                    for _ in range(50):  # then chatter as if it belonged
                        sock.send_multipart(protocol.encode(Heartbeat()))
                    await until(lambda: hub.counters["unknown_peer"] >= 50, 5, "the chatter")
                    assert hub.counters["refused"] == 3
                    assert hub.peers == {} and rec.ready == []
                    await asyncio.sleep(0.05)
                    got = received(sock)
                    # Told "introduce yourself" once per heartbeat interval, nothing else.
                    assert got and all(isinstance(m, Hello) for m in got)
                    assert len(got) <= 2
                with dealer(ctx, endpoint, "vad.2") as good:
                    good.send_multipart(ready("vad", "vad", auth.token_for(SECRET, "vad")))
                    await until(lambda: "vad" in hub.peers, 5, "the real vad")
                    await until(lambda: good.poll(0), 5, "the READY's ack")
                    assert isinstance(received(good)[0], Heartbeat)
        finally:
            ctx.term()

    run(scenario())


def test_a_stranger_refused_again_and_again_stays_within_its_budget(tmp_path: Path) -> None:
    """A flood of bad READYs: each refusal must not buy the stranger a fresh budget."""
    endpoint = f"ipc://{tmp_path}/hub.sock"
    bad_ready = ready("transport", "transport", "0" * 64)
    chatter = protocol.encode(ClientText(session="forged", text="x"))
    sent = 20 * STRANGER_BUDGET

    async def scenario() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            # one budget window for the whole flood: the interval is far longer than the test
            async with hub_at(endpoint, ctx, heartbeat_s=600) as (hub, rec):
                with dealer(ctx, endpoint, "flood") as sock:
                    for i in range(sent):
                        sock.send_multipart(chatter if i % 2 else bad_ready)
                    await until(lambda: hub.counters["unknown_peer"] == sent, 10, "the flood")
                    # Looked at: its first STRANGER_BUDGET messages, half of them READYs.
                    assert hub.counters["refused"] == STRANGER_BUDGET // 2
                    assert hub.counters["stranger_dropped"] == sent - STRANGER_BUDGET
                    assert hub.peers == {} and rec.messages == []
                    await until(lambda: sock.poll(0), 5, "the HELLO")
                    await asyncio.sleep(0.05)
                    assert [type(m) for m in received(sock)] == [Hello]  # once, not per READY
        finally:
            ctx.term()

    run(scenario())


def test_what_a_stranger_sent_is_served_in_order_once_it_proves_itself(tmp_path: Path) -> None:
    """The transport's requests sent while a restarted router did not know it yet."""
    endpoint = f"ipc://{tmp_path}/hub.sock"

    async def scenario() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            async with hub_at(endpoint, ctx) as (hub, rec):
                with dealer(ctx, endpoint, "transport") as sock:
                    for i in range(3):
                        sock.send_multipart(protocol.encode(ClientText(session="s", text=f"{i}")))
                    await until(lambda: hub.counters["unknown_peer"] >= 3, 5, "the requests")
                    assert rec.messages == []  # held, not served
                    token = auth.token_for(SECRET, "transport")
                    sock.send_multipart(ready("transport", "transport", token))
                    await until(lambda: len(rec.messages) == 3, 5, "the held requests")
                    texts = [m.text for _, m in rec.messages if isinstance(m, ClientText)]
                    assert texts == ["0", "1", "2"]
                    assert hub.counters["held_served"] == 3
        finally:
            ctx.term()

    run(scenario())


def test_a_flood_from_strangers_is_bounded_and_the_mesh_keeps_its_heartbeats(
    tmp_path: Path,
) -> None:
    endpoint = f"ipc://{tmp_path}/hub.sock"
    garbage = [b"VXM1", bytes((ClientText.ID,)), b"\x81\xa4text\xa3abc"]  # no session field
    body = protocol.encode(ClientText(session="s", text="x" * 4000))

    async def scenario() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        socks: list[zmq.Socket[bytes]] = []
        try:
            async with hub_at(endpoint, ctx) as (hub, rec):
                with dealer(ctx, endpoint, "vad") as real:
                    real.send_multipart(ready("vad", "vad", auth.token_for(SECRET, "vad")))
                    await until(lambda: "vad" in hub.peers, 5, "the real peer")
                    for i in range(MAX_STRANGERS * 2):
                        sock = ctx.socket(zmq.DEALER)
                        sock.setsockopt(zmq.LINGER, 0)
                        sock.setsockopt(zmq.IDENTITY, f"flood-{i}".encode())
                        sock.connect(endpoint)
                        socks.append(sock)
                    sent = 0
                    t_end = time.monotonic() + 2.0  # a bounded flood: 2 s or 40k messages
                    while time.monotonic() < t_end and sent < 40_000:
                        for sock in socks:
                            sock.send_multipart(body if sent % 2 else garbage, zmq.NOBLOCK)
                            sent += 1
                        real.send_multipart(protocol.encode(Heartbeat()))
                        hub.tick(time.monotonic())
                        await asyncio.sleep(0)
                    await until(
                        lambda: (
                            hub.counters["unknown_peer"] + hub.counters["malformed"] >= sent * 0.9
                        ),
                        20,
                        "the flood to drain",
                    )
                    hub.tick(time.monotonic())
                    assert sent >= 5_000, f"only {sent} messages: not a flood"
                    assert "vad" in hub.peers  # never presumed dead under the flood
                    strangers = hub._strangers
                    assert len(strangers) <= MAX_STRANGERS
                    assert all(s.held_bytes <= MAX_HELD_BYTES for s in strangers.values())
                    assert rec.messages == []  # nothing a stranger sent was served
        finally:
            for sock in socks:
                sock.close(linger=0)
            ctx.term()

    run(scenario())


def test_an_oversized_frame_is_dropped_before_it_is_buffered(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/hub.sock"

    async def scenario() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            async with hub_at(endpoint, ctx) as (hub, rec):
                with dealer(ctx, endpoint, "asr") as sock:
                    sock.send_multipart(ready("asr", "asr", auth.token_for(SECRET, "asr")))
                    await until(lambda: "asr" in hub.peers, 5, "the peer")
                    big = [b"VXM1", bytes((ClientText.ID,)), b"\0" * (MAX_FRAME_BYTES * 4)]
                    sock.send_multipart(big)
                await asyncio.sleep(0.1)
                assert rec.messages == [] and hub.counters["malformed"] == 0  # never read
                with dealer(ctx, endpoint, "vad") as other:  # the hub serves on
                    other.send_multipart(ready("vad", "vad", auth.token_for(SECRET, "vad")))
                    await until(lambda: "vad" in hub.peers, 5, "the next peer")
        finally:
            ctx.term()

    run(scenario())


def test_a_link_announces_itself_at_once_to_a_restarted_hub(tmp_path: Path) -> None:
    """ZeroMQ reports the hub's death and its return: no waiting for missed heartbeats."""
    endpoint = f"ipc://{tmp_path}/hub.sock"

    async def scenario() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        announced: list[float] = []
        link: Link | None = None
        try:

            def on_connect() -> None:
                announced.append(time.monotonic())
                assert link is not None
                token = auth.token_for(SECRET, "tts0")
                link.send(Ready(name="tts0", kind="tts", pid=os.getpid(), token=token))

            # Heartbeats every 5 s: only the socket monitor can explain a fast re-announce.
            link = Link(ctx, endpoint, "tts0", lambda m: None, on_connect, heartbeat_s=5.0)
            async with hub_at(endpoint, ctx) as (hub, _):
                link.open()
                await until(lambda: "tts0" in hub.peers, 5, "the first READY")
                await until(lambda: link.welcomed, 5, "the hub's ack")
            await until(lambda: not link.welcomed, 2, "the link to see the hub gone")
            assert len(announced) == 1
            async with hub_at(endpoint, ctx) as (hub, _):
                t_bound = time.monotonic()
                await until(lambda: "tts0" in hub.peers, 2, "the READY to the new hub")
                assert len(announced) == 2 and announced[1] - t_bound < 1.0
                await until(lambda: link.welcomed, 2, "the new hub's ack")
        finally:
            if link is not None:
                link.close()
            ctx.term()

    run(scenario())


def test_peers_are_not_presumed_dead_while_the_hub_is_behind_on_reading(tmp_path: Path) -> None:
    """A flood (or a starved loop) leaves messages unread; the peers' heartbeats may be among
    them, so intervals the hub spends behind do not count against anyone."""
    endpoint = f"ipc://{tmp_path}/hub.sock"

    async def scenario() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            async with hub_at(endpoint, ctx) as (hub, _):
                with dealer(ctx, endpoint, "vad") as sock, dealer(ctx, endpoint, "x") as flood:
                    sock.send_multipart(ready("vad", "vad", auth.token_for(SECRET, "vad")))
                    await until(lambda: "vad" in hub.peers, 10, "the READY")
                    before = hub.counters["unknown_peer"]  # the READY counts as one
                    for _ in range(200):
                        flood.send_multipart([b"garbage"])
                    deadline = time.monotonic() + 10  # the loop is not run: nothing is read
                    while not hub.backlogged() and time.monotonic() < deadline:
                        flood.poll(10)  # ZeroMQ's I/O thread delivers them meanwhile
                    assert hub.backlogged()
                    at = time.monotonic()

                    def intervals(n: int) -> None:
                        nonlocal at
                        for _ in range(n):
                            at += 2 * HB_S  # past each heartbeat's due time, rounding and all
                            hub.tick(at)

                    intervals(3 * hub.liveness_max)
                    assert "vad" in hub.peers  # behind all along: no interval counted
                    # Every one read (not a moment between two the I/O thread delivers):
                    flood_read = lambda: hub.counters["unknown_peer"] == before + 200  # noqa: E731
                    await until(flood_read, 10, "the flood read")
                    assert not hub.backlogged()
                    intervals(hub.liveness_max)
                    assert "vad" not in hub.peers  # caught up, and it is silent: dead
        finally:
            ctx.destroy(linger=0)

    run(scenario())
