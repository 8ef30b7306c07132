"""A small client library for the voxmesh WebSocket protocol (DESIGN section 4).

    async with await WsClient.connect("ws://127.0.0.1:8080/ws", sample_rate=16000) as c:
        await c.say("hello there")
        start = await c.wait_event("audio_start", timeout=5)
        end = await c.wait_event("audio_end", timeout=30)
        pcm = c.audio()                     # every 48 kHz frame received, in order
        times = c.frame_times()             # monotonic receive time of each frame

Everything received is kept with its ``time.monotonic()`` receive time: ``events`` (JSON,
by type with ``events_of``) and ``frames`` (binary). ``wait_for`` polls nothing: it wakes
on every message. With ``player=True`` the client models a real player: received samples
play out in real time (a buffer that drains at 48 kHz and pauses when empty), ``clear``
drops what has not been played, and ``played`` acks go out every ``ack_interval_s`` and at
once after a clear, like the project's web page. ``played_audio()`` is what the user heard.

``MicStream`` is a microphone: it sends 20 ms packets on an absolute real-time schedule
(queued audio, else silence) and logs when every sample left. ``read_wav``/``write_wav``
handle the 16-bit WAV files the ``say`` and ``talk`` commands read and write.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import numpy as np

OUT_RATE = 48_000
FRAME_BYTES = 1920
MIN_RATE, MAX_RATE = 8000, 48000  # mic rates the server accepts


@dataclass(frozen=True, slots=True)
class Event:
    t: float  # receive time, time.monotonic()
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AudioFrame:
    t: float
    data: bytes


class Player:
    """A real-time playout model: a buffer drained at ``rate`` samples per second."""

    def __init__(self, rate: int = OUT_RATE) -> None:
        self.rate = rate
        self.buffer = bytearray()  # received, not yet played
        self.played = bytearray()  # everything played, in order
        self.played_samples = 0
        self.dropped_samples = 0
        self._t: float | None = None
        self._frac = 0.0

    def advance(self, now: float) -> None:
        if self._t is None or not self.buffer:
            self._t, self._frac = now, 0.0  # idle: the clock restarts with the next sample
            return
        exact = (now - self._t) * self.rate + self._frac
        n = int(exact)
        self._frac = exact - n
        self._t = now
        n = min(n, len(self.buffer) // 2)
        self.played += self.buffer[: 2 * n]
        del self.buffer[: 2 * n]
        self.played_samples += n

    def feed(self, now: float, pcm: bytes) -> None:
        self.advance(now)
        self.buffer += pcm

    def clear(self, now: float) -> int:
        """Drop what has not been played; returns how many samples were dropped."""
        self.advance(now)
        n = len(self.buffer) // 2
        self.buffer.clear()
        self.dropped_samples += n
        return n

    def drained(self) -> bool:
        return not self.buffer


class WsClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        player: bool = True,
        ack_interval_s: float | None = 0.1,
    ) -> None:
        self._http = http
        self.ws = ws
        self.events: list[Event] = []
        self.frames: list[AudioFrame] = []
        self.ready: dict[str, Any] | None = None
        self.player = Player() if player else None
        self.ack_interval_s = ack_interval_s if player else None
        self.acks_sent: list[tuple[float, int]] = []
        self.closed = asyncio.Event()
        self._cond = asyncio.Condition()
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
                await client.hello(sample_rate, token=token, timeout=timeout)
            except BaseException:
                await client.close()
                raise
        return client

    async def hello(
        self, sample_rate: int, *, token: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "hello", "sample_rate": sample_rate}
        if token is not None:
            msg["token"] = token
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

    async def close(self) -> None:
        if self._acker is not None:
            self._acker.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, *(t for t in [self._acker] if t), return_exceptions=True)
        await self._http.close()

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- sending ----------------------------------------------------------------------------

    async def send_json(self, obj: Any) -> None:
        await self.ws.send_str(json.dumps(obj))

    async def send_str(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def say(self, text: str) -> None:
        await self.send_json({"type": "say", "text": text})

    async def text(self, text: str) -> None:
        await self.send_json({"type": "text", "text": text})

    async def interrupt(self) -> None:
        await self.send_json({"type": "interrupt"})

    async def bye(self) -> None:
        await self.send_json({"type": "bye"})

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
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    self.events.append(Event(now, data))
                    if data.get("type") == "clear" and self.player is not None:
                        self.player.clear(now)
                        if self.ack_interval_s:
                            await self.send_played()
                else:
                    continue
                async with self._cond:
                    self._cond.notify_all()
        finally:
            self.closed.set()
            async with self._cond:
                self._cond.notify_all()

    async def _ack_loop(self, interval: float) -> None:
        while not self.ws.closed:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionError):
                await self.send_played()

    def mark(self) -> int:
        """The current event count: pass as ``since`` to wait only for newer events."""
        return len(self.events)

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, *, since: int = 0
    ) -> dict[str, Any]:
        """The first event at index >= ``since`` matching ``pred``, waiting up to ``timeout``."""
        checked = since

        def find() -> dict[str, Any] | None:
            nonlocal checked
            while checked < len(self.events):
                ev = self.events[checked].data
                checked += 1
                if pred(ev):
                    return ev
            return None

        async with self._cond:
            try:
                async with asyncio.timeout(timeout):
                    while (found := find()) is None:
                        if self.closed.is_set():
                            raise ConnectionError("socket closed while waiting")
                        await self._cond.wait()
            except TimeoutError:
                raise TimeoutError(
                    f"no matching event within {timeout} s; got {self.types(since)}"
                ) from None
        return found

    async def wait_event(
        self, kind: str, timeout: float = 5.0, *, since: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """The first event of type ``kind`` (with the given field values) at >= ``since``."""
        return await self.wait_for(
            lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in fields.items()),
            timeout,
            since=since,
        )

    async def wait_until(
        self, cond: Callable[[], bool], timeout: float, what: str = "", *, poll_s: float = 0.01
    ) -> None:
        """Wait until ``cond()`` holds: re-checked on every message and every ``poll_s`` (for
        conditions on time, such as the player model having played everything)."""
        deadline = time.monotonic() + timeout
        async with self._cond:
            while not cond():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), min(left, poll_s))

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close the socket; returns its close code."""
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.ws.close_code

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.data.get("type") == kind]

    def event_times(self, kind: str) -> list[float]:
        """Receive times of the events of type ``kind``."""
        return [e.t for e in self.events if e.data.get("type") == kind]

    def types(self, since: int = 0) -> list[str]:
        return [str(e.data.get("type")) for e in self.events[since:]]

    def audio(self, since_frame: int = 0) -> bytes:
        return b"".join(f.data for f in self.frames[since_frame:])

    def frame_times(self, since_frame: int = 0) -> list[float]:
        return [f.t for f in self.frames[since_frame:]]

    def played_audio(self) -> bytes:
        """What the player model has played so far (advanced to now)."""
        assert self.player is not None
        self.player.advance(time.monotonic())
        return bytes(self.player.played)


class ConnectError(ConnectionError):
    """The server cannot be reached, or refused the session; the message says which."""


async def open_session(
    url: str,
    *,
    sample_rate: int = 16000,
    token: str | None = None,
    player: bool = False,
    timeout: float = 5.0,
) -> WsClient:
    """``WsClient.connect`` with every way of failing turned into a ``ConnectError``."""
    try:
        return await WsClient.connect(
            url, sample_rate=sample_rate, token=token, player=player, timeout=timeout
        )
    except RuntimeError as exc:  # hello answered with an error event
        raise ConnectError(f"{url} refused the session: {exc}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot connect to {url}: {exc or type(exc).__name__}") from None


class PcmSender(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...


class MicStream:
    """A microphone on a ``WsClient`` (any ``PcmSender``): ``chunk_ms`` packets of queued
    audio (or silence when the queue is empty and ``silence`` is set) on an absolute
    schedule, ``speed`` times real time (0: as fast as the socket takes them). Sample
    positions count from the stream's start; ``log`` holds ``(send time, first sample)`` of
    every packet, so ``sent_time(i)`` is when sample ``i`` left, e.g. the last sample of
    the user's speech.

        async with MicStream(client, 16000) as mic:
            end = mic.queue(pcm)             # the position just past it
            await mic.wait_sent(end)
    """

    def __init__(
        self, client: PcmSender, rate: int, *, chunk_ms: float = 20, speed: float = 1.0
    ) -> None:
        self.client = client
        self.rate = rate
        self.chunk = max(1, round(rate * chunk_ms / 1000))
        self.speed = speed
        self.silence = True
        self.sent = 0  # samples sent so far (queued audio and silence)
        self.log: list[tuple[float, int]] = []
        self._pending: deque[np.ndarray] = deque()
        self._pending_samples = 0
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    @property
    def queued(self) -> int:
        """The stream position just past everything sent or waiting to be sent."""
        return self.sent + self._pending_samples

    def queue(self, pcm: np.ndarray | bytes) -> int:
        """Queue int16 mono PCM after whatever is queued; returns the position just past it
        (so the audio starts at the returned position minus its length)."""
        x = np.frombuffer(pcm, "<i2") if isinstance(pcm, bytes) else np.asarray(pcm, np.int16)
        if x.size:
            self._pending.append(x.reshape(-1))
            self._pending_samples += x.size
        return self.queued

    def queue_silence(self, seconds: float) -> int:
        return self.queue(np.zeros(round(seconds * self.rate), np.int16))

    def sent_time(self, sample: int) -> float | None:
        """When the packet holding sample ``sample`` was sent (None: not sent yet)."""
        if sample < 0 or sample >= self.sent:
            return None
        i = bisect.bisect_right(self.log, sample, key=lambda e: e[1]) - 1
        return self.log[i][0]

    async def wait_sent(self, sample: int, timeout: float | None = None) -> None:
        """Wait until every sample before position ``sample`` has been sent."""
        async with asyncio.timeout(timeout):
            while self.sent < sample:
                if self._task is not None and self._task.done():
                    self._task.result()  # raises what stopped the sender
                    raise ConnectionError("the microphone stopped")
                self._progress.clear()
                await self._progress.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> MicStream:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _take(self) -> np.ndarray | None:
        """The next packet: queued audio, else silence (or None when idle)."""
        if not self._pending:
            return np.zeros(self.chunk, np.int16) if self.silence else None
        parts, need = [], self.chunk
        while need and self._pending:
            head = self._pending[0]
            parts.append(head[:need])
            if head.size <= need:
                self._pending.popleft()
            else:
                self._pending[0] = head[need:]
            need -= parts[-1].size
        packet = np.concatenate(parts)
        self._pending_samples -= packet.size
        return packet

    async def _run(self) -> None:
        deadline: float | None = None  # when the next packet is due
        while True:
            if not self._pending and not self.silence:  # idle: the schedule restarts later
                deadline = None
                await asyncio.sleep(0.005)
                continue
            now = time.monotonic()
            if deadline is None or now - deadline > 0.1:  # (re)start, or fell far behind
                deadline = now
            await asyncio.sleep(max(0.0, deadline - now))
            packet = self._take()  # at the deadline: audio queued meanwhile goes out now
            if packet is None:
                continue
            self.log.append((time.monotonic(), self.sent))
            self.sent += packet.size  # with the take, so ``queued`` never skips a packet
            await self.client.send_bytes(packet.astype("<i2").tobytes())
            self._progress.set()
            if self.speed > 0:
                deadline += packet.size / self.rate / self.speed
            else:
                await asyncio.sleep(0)  # let the reader run between packets


@contextlib.asynccontextmanager
async def streaming_session(
    url: str, rate: int = 16000, *, player: bool = True
) -> AsyncIterator[WsClient]:
    """A session whose microphone streams silence for as long as it is open."""
    client = await WsClient.connect(url, sample_rate=rate, player=player)
    try:
        mic = MicStream(client, rate)
        mic.start()
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):  # the socket may have died under it
                await mic.stop()
    finally:
        await client.close()


# --- WAV files --------------------------------------------------------------------------------


class WavError(ValueError):
    """A WAV file this client cannot use (unreadable, not 16-bit PCM)."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(int16 mono samples, rate) of a 16-bit PCM WAV; several channels are averaged."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        detail = str(exc) or "the file ends too soon"
        raise WavError(f"cannot read {path} as a WAV file: {detail}") from None
    if width != 2:
        raise WavError(f"{path} has {8 * width}-bit samples; only 16-bit PCM is supported")
    pcm = np.frombuffer(data[: len(data) // (2 * channels) * 2 * channels], "<i2")
    if channels > 1:
        mixed = pcm.reshape(-1, channels).astype(np.int32).mean(axis=1)
        pcm = np.rint(mixed).astype(np.int16)
    return pcm.astype(np.int16), rate


def write_wav(path: str | Path, pcm: bytes | np.ndarray, rate: int = OUT_RATE) -> float:
    """Write int16 mono PCM as a WAV file; returns its duration in seconds."""
    data = pcm if isinstance(pcm, bytes) else np.asarray(pcm, "<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    return len(data) / 2 / rate
