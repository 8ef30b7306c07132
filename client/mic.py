"""A microphone for a client: mic PCM in packets on an absolute real-time schedule.

    async with MicStream(client, 16000) as mic:
        end = mic.queue(pcm)                 # the stream position just past it
        await mic.wait_sent(end)
        mic.sent_time(end - 1)               # when its last sample left

It sends through anything with ``send_bytes`` (``PcmSender``): a ``WsClient``, or a
LiveKit track's source (``tests/lkclient.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import deque
from typing import Protocol

import numpy as np


class PcmSender(Protocol):
    async def send_bytes(self, data: bytes) -> float | None:
        """Send one packet; returns when it really left if that is later than the call (a
        queue in between), else None."""
        ...


class MicStream:
    """A microphone on any ``PcmSender``: ``chunk_ms`` packets of queued audio (or silence
    when the queue is empty and ``silence`` is set) on an absolute schedule, ``speed``
    times real time (0: as fast as the sender takes them). Sample positions count from the
    stream's start; ``log`` holds ``(send time, first sample)`` of every packet, so
    ``sent_time(i)`` is when sample ``i`` left, e.g. the last sample of the user's speech.
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

    def drop(self) -> None:
        """Forget what is queued and not yet sent: the mic goes back to silence at once."""
        self._pending.clear()
        self._pending_samples = 0

    def sent_time(self, sample: int) -> float | None:
        """When the packet holding sample ``sample`` was sent (None: not sent yet)."""
        if sample < 0 or sample >= self.sent:
            return None
        i = bisect.bisect_right(self.log, sample, key=lambda e: e[1]) - 1
        return self.log[i][0]

    def mesh_sample_time(self, sample: int, mesh_rate: int = 16000) -> float | None:
        """When the mic audio the mesh counts as its sample ``sample`` left this client: the
        mesh numbers the session's mic samples at ``mesh_rate`` from the session's start (as
        in ``vad`` events), this stream at ``rate`` from its own start (the same moment when
        it was started with the session). None: not sent yet."""
        return self.sent_time(max(0, -(-sample * self.rate // mesh_rate) - 1))

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
        self._pending_samples -= self.chunk - need
        if self.silence and need:  # an open mic records on: the packet ends in silence
            parts.append(np.zeros(need, np.int16))
        return np.concatenate(parts)

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
            first = self.sent
            self.log.append((time.monotonic(), first))
            self.sent += packet.size  # with the take, so ``queued`` never skips a packet
            left = await self.client.send_bytes(packet.astype("<i2").tobytes())
            if left is not None:
                self.log[-1] = (left, first)
            self._progress.set()
            if self.speed > 0:
                deadline += packet.size / self.rate / self.speed
            else:
                await asyncio.sleep(0)  # let the reader run between packets
