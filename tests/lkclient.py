"""A Python LiveKit client that does what the web page does, for tests and latency runs.

    async with await LkClient.join("http://127.0.0.1:8080/") as c:   # POST /session, join
        start = c.mic.queue(pcm16k) - pcm16k.size  # speak into the (always running) mic
        ev = await c.next_event(event_is("transcript", final=True), 20)
        c.loud_since(t)                           # arrival times of audible agent frames

A different transport from ``WsClient``, the same client otherwise: the data channel's
events (topic ``voxmesh``) go into the package's ``EventLog`` (``client/events.py``), and
the mic is its ``MicStream`` (``client/mic.py``) sending into a track instead of a socket:
20 ms packets at 16 kHz on an absolute schedule, silence when nothing is queued, each
resampled to the 48 kHz a browser's mic track carries; ``mic.sent_time(i)`` is when the
packet holding sample ``i`` left the source's small queue for WebRTC. Every 10 ms frame of
the agent's track is kept with its ``time.monotonic()`` arrival time and loudness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
import numpy as np
import soxr
from livekit import rtc

from voxmesh.client import EventLog, MicStream, rms

TOPIC = "voxmesh"
AGENT = "voxmesh-agent"
MIC_RATE = 16_000  # what callers queue on the mic
TRACK_RATE = 48_000  # what the track carries, as a browser's mic does
QUEUE_MS = 20  # the source's own buffer: the least that works (0 stalls capture_frame)
LOUD_RMS = 300.0  # decoded silence is ~0; Piper speech is in the thousands


class TrackSender:
    """A mic track's source as the ``MicStream``'s sender: 16 kHz packets in, 48 kHz out."""

    def __init__(self) -> None:
        self.source = rtc.AudioSource(TRACK_RATE, 1, queue_size_ms=QUEUE_MS)

    async def publish(self, room: rtc.Room) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("mic", self.source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, opts)

    async def send_bytes(self, data: bytes) -> float:
        up = soxr.resample(np.frombuffer(data, "<i2"), MIC_RATE, TRACK_RATE).astype(np.int16)
        await self.source.capture_frame(rtc.AudioFrame(up.tobytes(), TRACK_RATE, 1, up.size))
        # The packet's end leaves the source's queue (into WebRTC) once the queue drains.
        return time.monotonic() + self.source.queued_duration


async def hear(track: rtc.Track, heard: list[tuple[float, float]]) -> None:
    """Append (arrival, rms) of every 10 ms frame of ``track`` to ``heard`` until it ends."""
    stream = rtc.AudioStream.from_track(track=track, sample_rate=TRACK_RATE, num_channels=1)
    try:
        async for ev in stream:
            heard.append((time.monotonic(), rms(ev.frame.data.tobytes())))
    finally:
        await stream.aclose()


class LkClient(EventLog):
    def __init__(self, session: dict[str, str]) -> None:
        super().__init__()
        self.session = session
        self.room = rtc.Room()
        self.track = TrackSender()
        self.mic = MicStream(self.track, MIC_RATE)
        self.heard: list[tuple[float, float]] = []  # (arrival, rms) per 10 ms agent frame
        self.agent_track: tuple[str, str] | None = None  # (identity, track name)
        self.agent_audio: rtc.Track | None = None
        self._tasks: list[asyncio.Task[None]] = []

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
        return await cls.enter(body, mic=mic, timeout=timeout)

    @classmethod
    async def enter(
        cls, session: dict[str, str], *, mic: bool = True, timeout: float = 10.0
    ) -> LkClient:
        """Join the room of ``session`` (``url``, ``token``), start the mic."""
        client = cls(session)
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
            await self.track.publish(self.room)
            self.mic.start()

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # what stopped the mic is no news at the end
            await self.mic.stop()
        with contextlib.suppress(Exception):
            await self.track.source.aclose()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), 10)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> LkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- receiving ----------------------------------------------------------------------------

    def _on_track(self, track: rtc.Track, pub: Any, p: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and p.identity == AGENT:
            self.agent_track = (p.identity, track.name)
            self.agent_audio = track
            self._tasks.append(asyncio.create_task(hear(track, self.heard)))

    def _on_data(self, pkt: rtc.DataPacket) -> None:
        if pkt.topic == TOPIC:
            self.record(json.loads(pkt.data))

    # --- sending -------------------------------------------------------------------------------

    async def send(self, msg: dict[str, Any]) -> float:
        """Send a client message as a data packet; the time it was handed over."""
        t = time.monotonic()
        await self.room.local_participant.publish_data(json.dumps(msg), reliable=True, topic=TOPIC)
        return t

    # --- the agent's audio ---------------------------------------------------------------------

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
