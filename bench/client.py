"""A WebSocket client that times what it receives, as the bench's user (DESIGN section 4).

Every binary frame and JSON event is stamped with ``time.monotonic()`` on arrival; the
server's own stamps (``t_issued``, ``t_last_frame``) use the same clock, since the bench and
the mesh share one host. ``MicStreamer`` sends mic audio in 20 ms packets on an absolute
real-time schedule, as a microphone would, and records when each packet left.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

MIC_RATE = 16000
PACKET_SAMPLES = MIC_RATE // 50  # 20 ms


@dataclass
class Arrival:
    t: float
    kind: str  # "frame" or the event's type
    event: dict[str, Any] = field(default_factory=dict)


Predicate = Callable[[Arrival], bool]


class BenchClient:
    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.frames: list[float] = []  # arrival time of every binary frame
        self.events: list[Arrival] = []  # every JSON event, in order
        self.session_id = ""
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Predicate, asyncio.Future[Arrival]]] = []

    async def __aenter__(self) -> BenchClient:
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(self.ws_url, max_msg_size=0, heartbeat=None)
            await self.send({"type": "hello", "sample_rate": MIC_RATE})
            self._reader = asyncio.ensure_future(self._read())
            ready = await self.wait(lambda a: a.kind == "ready", 10.0)
            self.session_id = str(ready.event.get("session_id", ""))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            try:
                await self._ws.send_str(json.dumps({"type": "bye"}))
            except (ConnectionError, RuntimeError):
                pass
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def send(self, msg: dict[str, Any]) -> float:
        """Send one JSON message; the monotonic time it was handed to the socket."""
        assert self._ws is not None
        text = json.dumps(msg)
        t = time.monotonic()
        await self._ws.send_str(text)
        return t

    async def send_pcm(self, pcm: np.ndarray) -> float:
        assert self._ws is not None
        data = np.asarray(pcm, dtype="<i2").tobytes()
        t = time.monotonic()
        await self._ws.send_bytes(data)
        return t

    async def quiet(self, gap_s: float, timeout_s: float) -> bool:
        """Wait until no frame has arrived for ``gap_s``; False if that never happened."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.frames[-1] if self.frames else 0.0
            idle = time.monotonic() - last
            if idle >= gap_s:
                return True
            await asyncio.sleep(gap_s - idle)
        return False

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            t = time.monotonic()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(t)
                arrival = Arrival(t, "frame")
            elif msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                arrival = Arrival(t, str(event.get("type", "")), event)
                self.events.append(arrival)
            else:
                break
            if self._waiters:
                self._wake(arrival)

    def _wake(self, arrival: Arrival) -> None:
        keep = []
        for pred, fut in self._waiters:
            if fut.done():
                continue
            if pred(arrival):
                fut.set_result(arrival)
            else:
                keep.append((pred, fut))
        self._waiters = keep

    def expect(self, pred: Predicate) -> asyncio.Future[Arrival]:
        """A future for the next arrival matching ``pred`` (register before triggering it)."""
        fut: asyncio.Future[Arrival] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return fut

    async def wait(self, pred: Predicate, timeout_s: float) -> Arrival:
        return await asyncio.wait_for(self.expect(pred), timeout_s)

    def event_after(self, kind: str, t: float) -> Arrival | None:
        return next((a for a in self.events if a.kind == kind and a.t >= t), None)

    def frames_between(self, t0: float, t1: float) -> list[float]:
        return [t for t in self.frames if t0 <= t <= t1]


def is_event(kind: str, **fields: Any) -> Predicate:
    return lambda a: a.kind == kind and all(a.event.get(k) == v for k, v in fields.items())


def is_frame(a: Arrival) -> bool:
    return a.kind == "frame"


class MicStreamer:
    """Real-time mic: 20 ms packets on an absolute schedule, silence when nothing is queued.

    ``sent`` maps absolute 16 kHz sample index -> the time its packet left (the packet's
    last sample is "in the mic stream" then, as with a real microphone).
    """

    def __init__(self, client: BenchClient) -> None:
        self.client = client
        self.position = 0  # samples sent so far
        self.packet_times: list[float] = []
        self._queue: list[np.ndarray] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def play(self, pcm: np.ndarray) -> int:
        """Queue ``pcm`` after what is queued; returns the absolute index of its first sample."""
        queued = sum(x.size for x in self._queue)
        self._queue.append(np.asarray(pcm, np.int16))
        return self.position + queued

    def drop(self) -> None:
        """Forget what is queued: the mic goes back to silence at once."""
        self._queue.clear()

    def sent_at(self, sample: int) -> float:
        """When the packet holding absolute sample ``sample`` left (it must have)."""
        return self.packet_times[sample // PACKET_SAMPLES]

    def _next_packet(self) -> np.ndarray:
        out = np.zeros(PACKET_SAMPLES, np.int16)
        filled = 0
        while filled < PACKET_SAMPLES and self._queue:
            head = self._queue[0]
            take = min(head.size, PACKET_SAMPLES - filled)
            out[filled : filled + take] = head[:take]
            filled += take
            if take == head.size:
                self._queue.pop(0)
            else:
                self._queue[0] = head[take:]
        return out

    async def _run(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            n += 1
            # A packet leaves once its 20 ms have been "recorded".
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
            t = await self.client.send_pcm(self._next_packet())
            self.packet_times.append(t)
            self.position += PACKET_SAMPLES
