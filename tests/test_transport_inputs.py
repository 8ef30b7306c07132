"""Hostile client input against the in-process transport: strings that are not Unicode,
numbers out of range, a client that stops reading, HTTP auth.

Reuses test_transport's fixtures (a real ring segment, a fake router whose ``say "N"``
writes N frames into the session's out ring).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from voxmesh.actors.transport import server as transport_server
from voxmesh.actors.transport.metrics import TransportStats
from voxmesh.actors.transport.pacer import Pacer
from voxmesh.client import WsClient
from voxmesh.mesh.errors import ErrorCode
from voxmesh.mesh.protocol import ClientText, SessionClose
from voxmesh.mesh.ring import FLAG_FIRST, OUT_FRAME_BYTES, Geometry, RingSegment, Slot, segment_name

try:  # tests/ may or may not become a package
    from .test_transport import Mesh, MeshFactory, make_mesh, mesh, until, utterance_frames
except ImportError:
    from test_transport import (  # type: ignore[no-redef]
        Mesh,
        MeshFactory,
        make_mesh,
        mesh,
        until,
        utterance_frames,
    )

__all__ = ["make_mesh", "mesh"]  # the fixtures, imported to be used here


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Fails the test if anything was logged with a traceback (or at ERROR and above)."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def still_works(c: WsClient) -> None:
    """A ``say`` after the bad input still plays."""
    since, frames = c.mark(), len(c.frames)
    await c.say("2")
    await c.wait_event("audio_end", 3, since=since, reason="done")
    assert len(c.frames) == frames + 2


async def expect_error(c: WsClient, raw: str, code: ErrorCode) -> dict[str, Any]:
    since = c.mark()
    await c.send_str(raw)
    ev: dict[str, Any] = await c.wait_event("error", 2, since=since)
    assert ev["code"] == code, (raw, ev)
    assert isinstance(ev["message"], str) and ev["message"]
    return ev


# --- strings --------------------------------------------------------------------------------

# Raw JSON text: json.loads turns "\udfff" into a lone surrogate, which is not Unicode.
BAD_STRINGS = [
    ('{"type": "text", "text": "\\udfff"}', ErrorCode.BAD_FIELD),
    ('{"type": "text", "text": "hi \\ud800 there"}', ErrorCode.BAD_FIELD),
    ('{"type": "say", "text": "5\\udfff"}', ErrorCode.BAD_FIELD),
    ('{"type": "say", "text": "\\udc00\\ud800"}', ErrorCode.BAD_FIELD),  # a pair, reversed
    ('{"type": "\\udfff"}', ErrorCode.UNKNOWN_TYPE),
    ('{"type": "hello", "sample_rate": 16000, "token": "\\udfff"}', ErrorCode.ALREADY_HELLO),
]


async def test_strings_that_are_not_unicode_are_bad_fields(
    mesh: Mesh, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    c = await mesh.client(player=False)
    for raw, code in BAD_STRINGS:
        await expect_error(c, raw, code)
        await still_works(c)
    assert not [m for m in mesh.router.of(ClientText) if m.mode == "text"]
    await c.send_str('{"type": "text", "text": "smile \\ud83d\\ude00"}')  # a real pair is fine
    await until(lambda: mesh.router.of(ClientText)[-1].mode == "text", 2, "CLIENT_TEXT")
    assert mesh.router.of(ClientText)[-1].text == "smile \N{GRINNING FACE}"
    assert mesh.actor.stats.client_errors[ErrorCode.INTERNAL] == 0


async def test_a_hello_token_that_is_not_unicode_is_a_bad_field(
    make_mesh: MeshFactory, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    for token in ("", "s3cret"):
        m = await make_mesh(auth_token=token)
        c = await m.client(sample_rate=None, player=False)
        await expect_error(
            c, '{"type":"hello","sample_rate":16000,"token":"\\udfff"}', ErrorCode.BAD_FIELD
        )
        await expect_error(
            c, '{"type":"hello","sample_rate":16000,"token":"s\\ud800"}', ErrorCode.BAD_FIELD
        )
        assert not c.closed.is_set()  # no session yet, but the socket lives: hello again
        await c.hello(16000, token=token or None)
        assert c.ready is not None
        await still_works(c)


# --- numbers --------------------------------------------------------------------------------


async def test_played_samples_must_be_an_int_within_what_was_sent(
    mesh: Mesh, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    c = await mesh.client(player=False)
    await still_works(c)  # 2 frames sent
    pb = mesh.actor.sessions[c.session_id].playback
    sent = pb.sent_total
    assert sent == 2 * 960
    await c.send_json({"type": "played", "samples": 960})
    await until(lambda: pb.acked == 960, 2, "a good ack")
    cases: list[tuple[str, ErrorCode]] = [
        (f'{{"type": "played", "samples": {10**30}}}', ErrorCode.BAD_FIELD),
        (f'{{"type": "played", "samples": {2**64}}}', ErrorCode.BAD_FIELD),
        (f'{{"type": "played", "samples": {2**63}}}', ErrorCode.BAD_FIELD),
        ('{"type": "played", "samples": -1}', ErrorCode.BAD_FIELD),
        ('{"type": "played", "samples": 1e3}', ErrorCode.BAD_FIELD),
        ('{"type": "played", "samples": 960.0}', ErrorCode.BAD_FIELD),
        ('{"type": "played", "samples": 1e400}', ErrorCode.BAD_FIELD),  # inf
        ('{"type": "played", "samples": NaN}', ErrorCode.BAD_FIELD),  # Python's json takes it
        ('{"type": "played", "samples": true}', ErrorCode.BAD_FIELD),
        ('{"type": "played", "samples": "960"}', ErrorCode.BAD_FIELD),
        ('{"type": "played", "samples": null}', ErrorCode.BAD_FIELD),
        ('{"type": "played", "samples": [960]}', ErrorCode.BAD_FIELD),
        ('{"type": "played"}', ErrorCode.MISSING_FIELD),
        ('{"type": "played", "samples": 1%s}' % ("0" * 5000), ErrorCode.BAD_JSON),  # > 4300 digits
    ]
    for raw, code in cases:
        await expect_error(c, raw, code)
        assert pb.acked == 960  # the heard point did not move
        await still_works(c)
    sent = pb.sent_total  # grew with every still_works
    await expect_error(c, f'{{"type": "played", "samples": {sent + 1}}}', ErrorCode.BAD_FIELD)
    assert pb.acked == 960
    await c.send_json({"type": "played", "samples": sent})  # exactly what was sent is fine
    await until(lambda: pb.acked == sent, 2, "the ack at the bound")
    assert mesh.actor.stats.client_errors[ErrorCode.INTERNAL] == 0


# --- a client that does not read --------------------------------------------------------------


class RawWs:
    """A WebSocket client on a bare socket, so that a test decides when it reads.

    Its receive buffer is tiny (set before connecting), so the kernel stops taking our
    server's data after a few KiB once it stops reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int) -> RawWs:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        self = cls(sock)
        try:
            await self.loop.sock_connect(sock, ("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await self.loop.sock_sendall(sock, request.encode())
            while b"\r\n\r\n" not in self.buf:
                await self._fill(2)
            head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            self.buf = bytearray(rest)
        except BaseException:
            sock.close()
            raise
        return self

    async def _fill(self, timeout: float) -> bool:
        """Read once; False at EOF (a reset counts as one)."""
        try:
            async with asyncio.timeout(timeout):
                data = await self.loop.sock_recv(self.sock, 1 << 16)
        except ConnectionResetError:
            return False
        self.buf += data
        return bool(data)

    async def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.loop.sock_sendall(self.sock, head + mask + masked)

    async def send_json(self, obj: Any) -> None:
        await self.send(0x1, json.dumps(obj).encode())

    def _frame(self) -> tuple[int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, at = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, at = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < at + n:
            return None
        frame = (buf[0] & 0x0F, bytes(buf[at : at + n]))
        del buf[: at + n]
        return frame

    async def frames(self, timeout: float) -> AsyncIterator[tuple[int, bytes]]:
        """Every frame until EOF, reading as needed (each read bounded by ``timeout``)."""
        while True:
            while (frame := self._frame()) is not None:
                yield frame
            if not await self._fill(timeout):
                return

    async def event(self, kind: str, timeout: float) -> dict[str, Any]:
        async for opcode, payload in self.frames(timeout):
            if opcode == 0x1 and (ev := json.loads(payload)).get("type") == kind:
                return dict(ev)
        raise AssertionError(f"EOF before a {kind!r} event")

    def close(self) -> None:
        self.sock.close()


@contextlib.asynccontextmanager
async def raw_client(mesh: Mesh) -> AsyncIterator[tuple[RawWs, str]]:
    """A raw client past hello, its session id, and a small server-side send buffer."""
    raw = await RawWs.connect(mesh.actor.port)
    try:
        await raw.send_json({"type": "hello", "sample_rate": 16000})
        sid = str((await raw.event("ready", 2))["session_id"])
        # Lock the server side's kernel send buffer small too (loopback autotunes it to
        # megabytes): then only aiohttp's own backlog (~300 KiB, 3 s of audio) is queued
        # before a write blocks.
        transport = getattr(mesh.actor.sessions[sid].link, "transport", None)
        assert transport is not None
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        yield raw, sid
    finally:
        raw.close()


SLOW_S = 0.3


async def test_a_slow_reader_is_told_and_closed_with_1008(
    make_mesh: MeshFactory, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    mesh = await make_mesh(slow_reader_s=SLOW_S)
    async with raw_client(mesh) as (raw, sid):
        await until(lambda: sid in mesh.router.slots, 2, "SESSION_OPEN")
        slot = mesh.seg.slots[mesh.router.slots[sid]]
        await raw.send_json({"type": "say", "text": "1500"})  # 30 s; we stop reading now
        t0 = time.monotonic()
        await until(lambda: sid not in mesh.actor.sessions, 15, "the slow reader's session to end")
        print(f"\nslow reader dropped {time.monotonic() - t0:.2f} s after its reply began")
        assert not slot.in_use
        await until(lambda: mesh.router.of(SessionClose), 2, "SESSION_CLOSE")
        assert [(m.session, m.reason) for m in mesh.router.of(SessionClose)] == [
            (sid, "slow_reader")
        ]
        assert mesh.actor.stats.client_errors[ErrorCode.SLOW_READER] == 1
        # Reading again (within the grace): the backlog, the error, the close, then EOF.
        error: dict[str, Any] | None = None
        close: bytes | None = None
        async for opcode, payload in raw.frames(5):
            if opcode == 0x1:
                ev = json.loads(payload)
                if ev.get("type") == "error":
                    error = ev
            elif opcode == 0x8:
                close = payload
                await raw.send(0x8, payload[:2])  # answer the close, as a client does
        assert error is not None and error["code"] == ErrorCode.SLOW_READER
        assert close is not None and struct.unpack("!H", close[:2])[0] == 1008
        assert close[2:] == b"slow reader"
        await until(lambda: not mesh.actor.server._sockets, 3, "the server's socket to go")
    for writer in list(mesh.router.writers):  # the fake TTS would go on into the freed slot
        writer.cancel()
    again = await mesh.client(player=False)  # the server serves on
    await still_works(again)


async def test_a_client_that_never_reads_again_is_aborted(
    make_mesh: MeshFactory,
    no_tracebacks: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_server, "DROP_GRACE_S", 0.05)
    mesh = await make_mesh(slow_reader_s=SLOW_S)
    async with raw_client(mesh) as (raw, sid):
        await until(lambda: sid in mesh.router.slots, 2, "SESSION_OPEN")
        await raw.send_json({"type": "say", "text": "1500"})
        await until(lambda: sid not in mesh.actor.sessions, 15, "the slow reader's session to end")
        await until(lambda: not mesh.actor.server._sockets, 3, "the server's socket to go")
        # The connection is gone on our side too: reading ends (reset or EOF), no hang.
        async with asyncio.timeout(5):
            async for _ in raw.frames(5):
                pass
    assert mesh.actor.stats.client_errors[ErrorCode.SLOW_READER] == 1
    assert not mesh.actor.sessions


class StuckLink:
    """A ClientLink whose writes block forever after the first ``free`` ones."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.sent = 0

    async def _write(self) -> None:
        if self.sent >= self.free:
            await asyncio.get_running_loop().create_future()  # never done
        self.sent += 1

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._write()

    async def send_audio(self, frame: bytes) -> None:
        await self._write()

    async def clear(self) -> None:
        await self._write()


class BrokenLink(StuckLink):
    async def send_audio(self, frame: bytes) -> None:
        raise ConnectionResetError("gone")


@pytest.fixture
def out_slot() -> Iterator[Slot]:
    seg = RingSegment.create(
        segment_name(os.getpid(), "i" + os.urandom(4).hex()), Geometry(1, 8, 32)
    )
    try:
        slot = seg.slots[0]
        slot.claim()
        yield slot
    finally:
        seg.close()
        seg.unlink()


@pytest.mark.parametrize("free", [0, 3])  # blocked on the first event, or mid-utterance
async def test_the_pacer_calls_a_blocked_write_a_slow_reader(out_slot: Slot, free: int) -> None:
    for k, frame in enumerate(utterance_frames(10)):
        out_slot.out.write(frame, epoch=0, utterance=1, flags=FLAG_FIRST if k == 0 else 0)
    link = StuckLink(free)
    pacer = Pacer(
        link,
        out_slot,
        TransportStats(),
        session="s",
        lead_s=0.06,
        send_router=lambda m: True,
        poll_control=lambda: None,
        slow_reader_s=0.05,
    )
    await asyncio.wait_for(pacer.run(), 2)  # returns by itself: the write timed out
    assert pacer.slow_reader and link.sent == free


async def test_a_broken_link_is_not_a_slow_reader(out_slot: Slot) -> None:
    out_slot.out.write(bytes(OUT_FRAME_BYTES), epoch=0, utterance=1, flags=FLAG_FIRST)
    pacer = Pacer(
        BrokenLink(100),
        out_slot,
        TransportStats(),
        session="s",
        lead_s=0.06,
        send_router=lambda m: True,
        poll_control=lambda: None,
        slow_reader_s=0.05,
    )
    await asyncio.wait_for(pacer.run(), 2)
    assert not pacer.slow_reader


# --- HTTP auth ------------------------------------------------------------------------------


async def test_post_session_and_metrics_need_the_token(
    make_mesh: MeshFactory, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    open_mesh = await make_mesh(auth_token="s3cret")
    locked = await make_mesh(auth_token="s3cret", metrics_auth=True)
    good = {"Authorization": "Bearer s3cret"}
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret"},
        {"Authorization": "s3cret"},
        {"Authorization": "Bearer s3cret2"},
        {"Authorization": "Bearer \udcff"},  # a surrogate, as aiohttp decodes a bad byte
    ]
    async with aiohttp.ClientSession() as http:

        async def status(method: str, url: str, headers: dict[str, str]) -> int:
            async with http.request(method, url, headers=headers) as r:
                if r.status == 401:
                    body = await r.json()
                    assert body["type"] == "error" and body["code"] == ErrorCode.UNAUTHORIZED
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                return r.status

        for headers in bad_headers:
            for m in (open_mesh, locked):
                assert await status("POST", m.http + "/session", headers) == 401, headers
            assert await status("GET", locked.http + "/metrics", headers) == 401, headers
            assert await status("GET", open_mesh.http + "/metrics", headers) == 200
        for m in (open_mesh, locked):
            assert await status("POST", m.http + "/session", good) == 404  # no LiveKit here
            assert await status("GET", m.http + "/metrics", good) == 200
            assert await status("GET", m.http + "/health", {}) in (200, 503)  # always open
    assert locked.actor.stats.client_errors[ErrorCode.UNAUTHORIZED] == 2 * len(bad_headers)


async def test_without_a_token_post_session_and_metrics_are_open(mesh: Mesh) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(mesh.http + "/session") as r:
            assert r.status == 404
        async with http.get(mesh.http + "/metrics") as r:
            assert r.status == 200
