"""The voxmesh WebSocket protocol (docs/client-protocol.md), client side: one session on ``/ws``.

    async with await WsClient.connect("ws://127.0.0.1:8080/ws", sample_rate=16000) as c:
        since = c.mark()
        await c.say("hello there")
        start = await c.wait_event("audio_start", timeout=5, since=since)
        end = await c.wait_event("audio_end", timeout=30, since=since)
        pcm = c.audio()                     # every 48 kHz frame received, in order
        times = c.frame_times()             # monotonic receive time of each frame

Everything received is kept with its ``time.monotonic()`` receive time: the JSON events
(``EventLog``, ``events.py``) and the binary ``frames``. With ``player=True`` the client
models a real player (``player.py``): ``clear`` drops what has not been played, and
``played`` acks go out every ``ack_interval_s`` and at once after a clear, like the
project's web page; ``played_audio()`` is what the user heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from .events import EventLog
from .mic import MicStream
from .player import Player


@dataclass(frozen=True, slots=True)
class AudioFrame:
    t: float  # receive time, time.monotonic()
    data: bytes


class WsClient(EventLog):
    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        player: bool = True,
        ack_interval_s: float | None = 0.1,
    ) -> None:
        super().__init__()
        self._http = http
        self.ws = ws
        self.frames: list[AudioFrame] = []
        self.ready: dict[str, Any] | None = None
        self.player = Player() if player else None
        self.ack_interval_s = ack_interval_s if player else None
        self.acks_sent: list[tuple[float, int]] = []
        self._reader = asyncio.create_task(self._read())
        self._acker: asyncio.Task[None] | None = None

    # --- connecting -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        sample_rate: int | None = 16000,
        token: str | None = None,
        player: bool = True,
        ack_interval_s: float | None = 0.1,
        timeout: float = 5.0,
        max_msg_size: int = 4 << 20,
        aec: str | None = None,
        partials: bool | int | None = None,
    ) -> WsClient:
        """Open the socket and (unless ``sample_rate`` is None) say hello and await ready."""
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(
                url,
                timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                max_msg_size=max_msg_size,
                autoclose=False,
            )
        except BaseException:
            await http.close()
            raise
        client = cls(http, ws, player=player, ack_interval_s=ack_interval_s)
        if sample_rate is not None:
            try:
                await client.hello(
                    sample_rate, token=token, timeout=timeout, aec=aec, partials=partials
                )
            except BaseException:
                await client.close()
                raise
        return client

    async def hello(
        self,
        sample_rate: int,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        aec: str | None = None,
        partials: bool | int | None = None,
    ) -> dict[str, Any]:
        """``aec``: who cancels the bot's echo in our mic (server, client, off; None: the
        server's default). ``partials``: partial transcripts while we speak (True, False or
        at most every N ms; None: the server's default, none unless configured)."""
        msg: dict[str, Any] = {"type": "hello", "sample_rate": sample_rate}
        if token is not None:
            msg["token"] = token
        if aec is not None:
            msg["aec"] = aec
        if partials is not None:
            msg["partials"] = partials
        since = self.mark()
        await self.send_json(msg)
        ev = await self.wait_for(lambda e: e["type"] in ("ready", "error"), timeout, since=since)
        if ev["type"] == "error":
            raise RuntimeError(f"hello refused: {ev.get('code')}: {ev.get('message')}")
        self.ready = ev
        if self.ack_interval_s:
            self._acker = asyncio.create_task(self._ack_loop(self.ack_interval_s))
        return ev

    @property
    def session_id(self) -> str:
        assert self.ready is not None, "no ready yet"
        return str(self.ready["session_id"])

    async def close(self, *, bye: bool = False) -> None:
        """Close the socket (after a ``bye``, if asked and it is still open)."""
        if bye and not self.ws.closed:
            with contextlib.suppress(Exception):  # the server may be gone already
                await self.bye()
        if self._acker is not None:
            self._acker.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, *(t for t in [self._acker] if t), return_exceptions=True)
        await self._http.close()

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sending: each returns the monotonic time it was handed to the socket --------------

    async def send_json(self, obj: Any) -> float:
        return await self.send_str(json.dumps(obj))

    async def send_str(self, text: str) -> float:
        t = time.monotonic()
        await self.ws.send_str(text)
        return t

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def say(self, text: str) -> float:
        return await self.send_json({"type": "say", "text": text})

    async def text(self, text: str) -> float:
        return await self.send_json({"type": "text", "text": text})

    async def interrupt(self) -> float:
        return await self.send_json({"type": "interrupt"})

    async def bye(self) -> float:
        return await self.send_json({"type": "bye"})

    async def send_played(self, samples: int | None = None) -> None:
        """A ``played`` ack: ``samples``, or what the player model has played by now."""
        if samples is None:
            assert self.player is not None
            self.player.advance(time.monotonic())
            samples = self.player.played_samples
        self.acks_sent.append((time.monotonic(), samples))
        await self.send_json({"type": "played", "samples": samples})

    async def send_pcm(
        self, pcm: bytes, sample_rate: int, *, realtime: bool = True, chunk_ms: float = 20
    ) -> list[float]:
        """Send mic PCM in ``chunk_ms`` pieces, paced in real time (absolute deadlines) or
        as fast as possible; returns the monotonic send time of each piece."""
        mic = MicStream(self, sample_rate, chunk_ms=chunk_ms, speed=1.0 if realtime else 0.0)
        mic.silence = False
        end = mic.queue(pcm)
        async with mic:
            await mic.wait_sent(end)
        return [t for t, _ in mic.log]

    # --- receiving --------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                now = time.monotonic()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.frames.append(AudioFrame(now, msg.data))
                    if self.player is not None:
                        self.player.feed(now, msg.data)
                    self.wake()
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    self.record(data, now)
                    if data.get("type") == "clear" and self.player is not None:
                        self.player.clear(now)
                        if self.ack_interval_s:
                            await self.send_played()
        finally:
            self.closed.set()
            self.wake()

    async def _ack_loop(self, interval: float) -> None:
        while not self.ws.closed:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionError):
                await self.send_played()

    async def wait_frame(self, since_frame: int, timeout: float) -> AudioFrame:
        """The first frame at index >= ``since_frame`` (``len(frames)`` before asking),
        waiting up to ``timeout``."""
        await self.wait_until(lambda: len(self.frames) > since_frame, timeout, "an audio frame")
        return self.frames[since_frame]

    async def wait_quiet(self, gap_s: float, timeout_s: float) -> bool:
        """Wait until no frame has arrived for ``gap_s``; False if that never happened."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.frames[-1].t if self.frames else 0.0
            idle = time.monotonic() - last
            if idle >= gap_s:
                return True
            await asyncio.sleep(gap_s - idle)
        return False

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close the socket; returns its close code."""
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.ws.close_code

    def audio(self, since_frame: int = 0) -> bytes:
        return b"".join(f.data for f in self.frames[since_frame:])

    def frame_times(self, since_frame: int = 0) -> list[float]:
        return [f.t for f in self.frames[since_frame:]]

    def played_audio(self) -> bytes:
        """What the player model has played so far (advanced to now)."""
        assert self.player is not None
        self.player.advance(time.monotonic())
        return bytes(self.player.played)
