"""A Python LiveKit client that does what the web page does, for tests and latency runs.

    async with await LkClient.join("http://127.0.0.1:8080/") as c:   # POST /session, join
        c.mic.play(pcm16k)                        # speak into the (always running) mic
        ev = await c.wait_event("transcript", 20, final=True)
        c.loud_since(t)                           # arrival times of audible agent frames

The mic is a real-time stream like a browser's: 20 ms frames at 48 kHz on an absolute
schedule, silence when nothing is queued; ``mic.sent_at(i)`` is when the frame holding 16 kHz
sample ``i`` left the source's small queue for WebRTC. Every data-channel event (topic
``voxmesh``) and every 10 ms frame of the agent's track is kept with its ``time.monotonic()``
arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import numpy as np
import soxr
from livekit import rtc

TOPIC = "voxmesh"
AGENT = "voxmesh-agent"
MIC_RATE = 16_000  # what callers hand to ``play``
TRACK_RATE = 48_000  # what the track carries, as a browser's mic does
FRAME_S = 0.02
QUEUE_MS = 20  # the source's own buffer: the least that works (0 stalls capture_frame)
LOUD_RMS = 300.0  # decoded silence is ~0; Piper speech is in the thousands


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    data: dict[str, Any]


def rms(pcm: bytes | np.ndarray) -> float:
    x = np.frombuffer(pcm, "<i2") if isinstance(pcm, bytes) else np.asarray(pcm)
    x = x.astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


class Mic:
    """Publishes a mic track and streams into it in real time (see the module docstring)."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.source = rtc.AudioSource(TRACK_RATE, 1, queue_size_ms=QUEUE_MS)
        self.position = 0  # 16 kHz samples streamed so far
        self.frame_times: list[float] = []
        self._queue: list[np.ndarray] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("mic", self.source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, opts)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.source.aclose()

    def play(self, pcm: np.ndarray) -> int:
        """Queue 16 kHz ``pcm``; the absolute index of its first sample."""
        queued = sum(x.size for x in self._queue)
        self._queue.append(np.asarray(pcm, np.int16))
        return self.position + queued

    def sent_at(self, sample: int) -> float:
        return self.frame_times[sample // int(MIC_RATE * FRAME_S)]

    def _next_frame(self) -> np.ndarray:
        n = int(MIC_RATE * FRAME_S)
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._queue:
            head = self._queue[0]
            take = min(head.size, n - filled)
            out[filled : filled + take] = head[:take]
            filled += take
            self._queue[0] = head[take:]
            if not self._queue[0].size:
                self._queue.pop(0)
        return out

    async def _run(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            n += 1
            # A frame goes in once its 20 ms have been "recorded", as with a real microphone.
            await asyncio.sleep(max(0.0, t0 + n * FRAME_S - time.monotonic()))
            up = soxr.resample(self._next_frame(), MIC_RATE, TRACK_RATE).astype(np.int16)
            await self.source.capture_frame(rtc.AudioFrame(up.tobytes(), TRACK_RATE, 1, up.size))
            # The frame's end leaves the source's queue (into WebRTC) once the queue drains.
            self.frame_times.append(time.monotonic() + self.source.queued_duration)
            self.position += int(MIC_RATE * FRAME_S)


class LkClient:
    def __init__(self, session: dict[str, str]) -> None:
        self.session = session
        self.room = rtc.Room()
        self.mic = Mic(self.room)
        self.events: list[Event] = []
        self.heard: list[tuple[float, float]] = []  # (arrival, rms) per 10 ms agent frame
        self.agent_track: tuple[str, str] | None = None  # (identity, track name)
        self.agent_audio: rtc.Track | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    @classmethod
    async def join(cls, base_url: str, *, mic: bool = True, timeout: float = 10.0) -> LkClient:
        """``POST base_url + "session"``, join the room, start the mic."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(base_url + "session", timeout=aiohttp.ClientTimeout(total=timeout)) as r,
        ):
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"POST /session: HTTP {r.status} {body}")
        client = cls(body)
        try:
            await client._connect(mic, timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def _connect(self, mic: bool, timeout: float) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("data_received", self._on_data)
        await asyncio.wait_for(
            self.room.connect(self.session["url"], self.session["token"]), timeout
        )
        if mic:
            await self.mic.start()

    async def close(self) -> None:
        await self.mic.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), 10)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> LkClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- receiving ----------------------------------------------------------------------------

    def _on_track(self, track: rtc.Track, pub: Any, p: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and p.identity == AGENT:
            self.agent_track = (p.identity, track.name)
            self.agent_audio = track
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream.from_track(track=track, sample_rate=TRACK_RATE, num_channels=1)
        try:
            async for ev in stream:
                self.heard.append((time.monotonic(), rms(ev.frame.data.tobytes())))
        finally:
            await stream.aclose()

    def _on_data(self, pkt: rtc.DataPacket) -> None:
        if pkt.topic == TOPIC:
            self.events.append(Event(time.monotonic(), json.loads(pkt.data)))
            self._changed.set()

    # --- sending -------------------------------------------------------------------------------

    async def send(self, msg: dict[str, Any]) -> float:
        """Send a client message as a data packet; the time it was handed over."""
        t = time.monotonic()
        await self.room.local_participant.publish_data(json.dumps(msg), reliable=True, topic=TOPIC)
        return t

    # --- waiting and reading -----------------------------------------------------------------

    def mark(self) -> int:
        return len(self.events)

    def types(self, since: int = 0) -> list[str]:
        return [str(e.data.get("type")) for e in self.events[since:]]

    def events_of(self, kind: str, since: int = 0) -> list[Event]:
        return [e for e in self.events[since:] if e.data.get("type") == kind]

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, *, since: int = 0
    ) -> Event:
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for ev in self.events[checked:]:
                if pred(ev.data):
                    return ev
            checked = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event within {timeout} s; got {self.types(since)}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def wait_event(
        self, kind: str, timeout: float, *, since: int = 0, **fields: Any
    ) -> Event:
        return await self.wait_for(
            lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in fields.items()),
            timeout,
            since=since,
        )

    def loud_since(self, t: float, threshold: float = LOUD_RMS) -> list[float]:
        """Arrival times of agent frames louder than ``threshold`` that arrived at/after ``t``."""
        return [at for at, r in self.heard if at >= t and r > threshold]

    async def wait_loud(self, since: float, timeout: float, frames: int = 1) -> float:
        """The arrival time of the first loud frame after ``since`` (once ``frames`` came)."""
        deadline = time.monotonic() + timeout
        while len(loud := self.loud_since(since)) < frames:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no audible agent audio within {timeout} s")
            await asyncio.sleep(0.005)
        return loud[0]
