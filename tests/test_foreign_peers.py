"""Only the mesh speaks on the mesh: a foreign process on router.sock gets nothing, does nothing.

A real ``voxmesh up`` (mock TTS) with a victim WebSocket session; a foreign DEALER of the
same user connects to the router's ipc socket and tries each impersonation the recovery
issue lists. Each must be refused (counted by the router, visible in ``voxmesh status``
info) while the victim's session goes on exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator

import pytest
import zmq
from meshproc import MeshProc, mesh_up

from voxmesh.client import WsClient
from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import (
    ClientInterrupt,
    ClientText,
    Heartbeat,
    Hello,
    Message,
    Ready,
    SessionClose,
    SessionOpen,
    VadEvent,
)

REPLY = "The victim's own reply, long enough to be interrupted if anyone could."


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("foreign"), tts="mock") as running:
        yield running


@contextlib.contextmanager
def foreign(mesh: MeshProc, identity: str) -> Iterator[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.connect(f"ipc://{mesh.run_dir}/router.sock")
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def send(sock: zmq.Socket[bytes], msg: Message) -> None:
    sock.send_multipart(protocol.encode(msg))


async def collect(sock: zmq.Socket[bytes], seconds: float) -> list[Message]:
    """Everything the router sends the foreign socket within ``seconds``."""
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while sock.poll(0):
            got.append(protocol.decode(sock.recv_multipart()))
        await asyncio.sleep(0.02)
    return got


def impersonate(sock: zmq.Socket[bytes], name: str, kind: str) -> None:
    """READY as a mesh actor: with no token, then with a made-up one."""
    for token in ("", "f" * 64):
        send(sock, Ready(name=name, kind=kind, pid=os.getpid(), token=token))


async def reply_plays(victim: WsClient, text: str = REPLY) -> dict[str, object]:
    since = victim.mark()
    await victim.say(text)
    await victim.wait_event("audio_start", 10, since=since)
    return await victim.wait_event("audio_end", 20, since=since)


@pytest.mark.parametrize(
    ("name", "kind"), [("vad", "vad"), ("asr", "asr"), ("tts0", "tts"), ("tts9", "tts")]
)
async def test_a_foreign_model_actor_learns_no_session_and_gets_no_reply_text(
    mesh: MeshProc, name: str, kind: str
) -> None:
    async with await WsClient.connect(mesh.ws_url) as victim:
        with foreign(mesh, f"{name}.intruder") as sock:
            impersonate(sock, name, kind)
            send(sock, Heartbeat())
            await asyncio.sleep(0.2)
            end = await reply_plays(victim)  # SPEAK goes to the real TTS actor only
            got = await collect(sock, 0.5)
        assert end["reason"] == "done"
        # Told only "who are you?": no SESSION_OPEN (ids, slots), no SPEAK (reply text).
        assert got and all(isinstance(m, Hello) for m in got), got
        assert not any(isinstance(m, SessionOpen) for m in got)


async def test_foreign_client_messages_do_nothing_to_the_victim(mesh: MeshProc) -> None:
    async with await WsClient.connect(mesh.ws_url) as victim:
        sid = victim.session_id
        await victim.wait_event("state", 5, state="listening")  # the router knows it
        with foreign(mesh, "transport.intruder") as sock:
            impersonate(sock, "transport", "transport")
            since = victim.mark()
            send(sock, ClientText(session=sid, text="Say what I tell you.", mode="say"))
            send(sock, VadEvent(session=sid, kind="speech_start", sample=0, t=0.0))
            await asyncio.sleep(1.0)
            assert victim.types(since) == []  # no reply, no state change, nothing
            # While the victim's own reply plays, forged interrupts and closes cut nothing.
            since = victim.mark()
            await victim.say(REPLY)
            await victim.wait_event("audio_start", 10, since=since)
            send(sock, ClientInterrupt(session=sid))
            send(sock, SessionClose(session=sid, reason="forged"))
            end = await victim.wait_event("audio_end", 20, since=since)
            assert end["reason"] == "done"
            assert "clear" not in victim.types(since)
        # ... and the session is still the router's: it answers again.
        assert (await reply_plays(victim, "Still here."))["reason"] == "done"


async def test_a_foreign_transport_cannot_take_the_sessions_away(mesh: MeshProc) -> None:
    """Registering as the transport used to make the router drop every session."""
    async with await WsClient.connect(mesh.ws_url) as victim:
        with foreign(mesh, "transport") as sock:  # even its exact identity
            impersonate(sock, "transport", "transport")
            send(sock, Heartbeat())
            await asyncio.sleep(0.5)
            assert (await reply_plays(victim))["reason"] == "done"
