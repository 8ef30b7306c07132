"""Doorbells (mesh/doorbell.py) and the rings' waiter entries (``FrameRing.arm``).

Every wait here has a timeout far longer than a wake-up takes and far shorter than the test
timeout, and ``wait()`` says whether it was rung: a test that got its wake-up from the timer
fails instead of passing slowly. The cross-process tests run this file as a script
(``python test_doorbell.py writer|reader ...``); every segment, bell and child is removed in
``finally`` blocks, and the conftest guard fails a test that leaves a bell in /dev/shm.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from voxmesh.actors.micreader import Idle, MicSession
from voxmesh.actors.transport.metrics import TransportStats
from voxmesh.actors.transport.pacer import Pacer, RingWatcher
from voxmesh.mesh.doorbell import Bells, Doorbell, bell_path
from voxmesh.mesh.ring import (
    FLAG_FIRST,
    FLAG_LAST,
    MIC_ASR,
    MIC_FRAME_BYTES,
    MIC_VAD,
    OUT_FRAME_BYTES,
    OUT_READER,
    OUT_WRITER,
    Geometry,
    MicReader,
    RingSegment,
    segment_name,
)

WAKE_S = 10.0  # a wake-up takes well under a millisecond; this only bounds a failure
FRAMES = 400  # the cross-process writer's frames


@contextlib.contextmanager
def segment(mic: int = 16, out: int = 8) -> Iterator[RingSegment]:
    seg = RingSegment.create(
        segment_name(os.getpid(), "bell" + uuid.uuid4().hex[:8]), Geometry(2, mic, out)
    )
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


def rung_bytes(bell: Doorbell) -> bool:
    """Whether a ring is waiting in the bell's FIFO (a ring is a synchronous write)."""
    return bool(select.select([bell.fileno()], [], [], 0)[0])


async def test_a_ring_wakes_the_wait_and_silence_times_out() -> None:
    with segment() as seg:
        bell = seg.doorbell()
        t0 = time.monotonic()
        assert await bell.wait(0.05) is False  # nobody rang: the safety timer ends it
        assert time.monotonic() - t0 >= 0.05
        bells = Bells(seg.path(seg.name))
        try:
            bells.ring(bell.id)
        finally:
            bells.close()
        assert await bell.wait(WAKE_S) is True
        assert bell.rings == 1 and not rung_bytes(bell)  # the ring was taken


async def test_wake_reaches_every_waiter_or_the_next_wait() -> None:
    with segment() as seg:
        bell = seg.doorbell()
        bell.wake()  # nobody waits yet: kept for the next wait
        assert await bell.wait(WAKE_S) is True
        waiters = [asyncio.ensure_future(bell.wait(WAKE_S)) for _ in range(3)]
        await asyncio.sleep(0)  # let them all start waiting
        bell.wake()
        assert await asyncio.wait_for(asyncio.gather(*waiters), WAKE_S) == [True] * 3


async def test_a_cancelled_wait_leaves_no_waiter_behind() -> None:
    with segment() as seg:
        bell = seg.doorbell()
        task = asyncio.ensure_future(bell.wait(WAKE_S))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        bell.wake()  # finds nobody, so it is kept
        assert await bell.wait(0.01) is True


def test_ringing_a_bell_that_is_gone_is_harmless() -> None:
    with segment() as seg:
        bells = Bells(seg.path(seg.name))
        try:
            bells.ring(12345 << 16 | 1)  # never existed
            bell = seg.doorbell()
            bells.ring(bell.id)  # opened and kept
            bell.close()
            assert not os.path.exists(bell.path)
            bells.ring(bell.id)  # its reader is gone: EPIPE, forgotten
            bells.ring(bell.id)  # and now it no longer exists
        finally:
            bells.close()


def test_unlink_removes_bells_left_by_dead_waiters() -> None:
    with segment() as seg:
        path = bell_path(seg.path(seg.name), 999999 << 16 | 7)
        os.mkfifo(path)  # as a killed waiter leaves it
    assert not os.path.exists(path)


def test_a_writer_rings_once_per_arming_when_the_target_is_reached() -> None:
    with segment() as seg:
        vad, asr = seg.doorbell(), seg.doorbell()
        mic = seg.slots[0].mic
        assert not mic.arm(MIC_VAD, vad, 2)
        assert not mic.arm(MIC_ASR, asr, 3)
        mic.write(bytes(MIC_FRAME_BYTES))
        assert not rung_bytes(vad) and not rung_bytes(asr)  # below both targets
        mic.write(bytes(MIC_FRAME_BYTES))
        assert rung_bytes(vad) and not rung_bytes(asr)
        os.read(vad.fileno(), 64)
        mic.write(bytes(MIC_FRAME_BYTES))
        assert not rung_bytes(vad) and rung_bytes(asr)  # the VAD's arming was rung already
        assert mic.arm(MIC_VAD, vad, 3)  # already there: do not sleep
        assert not mic.arm(MIC_VAD, vad, 4)
        mic.write(bytes(MIC_FRAME_BYTES))
        assert rung_bytes(vad)  # a new arming, rung again


def test_the_out_rings_reader_and_writer_wait_for_head_and_tail() -> None:
    with segment(out=4) as seg:
        reader, writer = seg.doorbell(), seg.doorbell()
        out = seg.slots[1].out
        assert not out.arm(OUT_READER, reader, out.tail + 1)
        for _ in range(4):
            out.write(bytes(OUT_FRAME_BYTES))
        assert rung_bytes(reader) and out.free() == 0
        assert not out.arm(OUT_WRITER, writer, out.head - out.capacity + 2)  # 2 free
        assert out.read() is not None
        assert not rung_bytes(writer)
        assert out.read() is not None
        assert rung_bytes(writer)
        os.read(writer.fileno(), 64)
        assert not out.arm(OUT_WRITER, writer, out.head - out.capacity + 4)
        assert out.flush() == 2
        assert rung_bytes(writer)  # a flush frees space too


# --- the actors' sleeps ------------------------------------------------------------------------


async def test_a_mic_loop_sleeps_until_its_frames_or_a_new_session() -> None:
    """``Idle.until_frames`` (the VAD's and the ASR's sleep): returns at once when the frames
    are there, else when a write brings them or a session opens."""
    with segment() as seg:
        idle = Idle()
        idle.bell = seg.doorbell()
        slot = seg.slots[0]
        slot.claim()
        mic = MicSession.open(seg, "s", 0, slot.generation, from_start=True)
        slot.mic.write(bytes(MIC_FRAME_BYTES))
        await asyncio.wait_for(idle.until_frames(MIC_VAD, [(mic, 1)]), WAKE_S)  # there already
        sleeping = asyncio.ensure_future(idle.until_frames(MIC_VAD, [(mic, 4)]))
        await asyncio.sleep(0)
        slot.mic.write(bytes(MIC_FRAME_BYTES))
        slot.mic.write(bytes(MIC_FRAME_BYTES))
        assert not sleeping.done() and not rung_bytes(idle.bell)  # 3 of the 4 unread frames
        slot.mic.write(bytes(MIC_FRAME_BYTES))
        await asyncio.wait_for(sleeping, WAKE_S)
        assert idle.bell.rings == 1
        sleeping = asyncio.ensure_future(idle.until_frames(MIC_VAD, [(mic, 10)]))
        await asyncio.sleep(0)
        idle.opened()  # a new session: its ring must be armed too
        await asyncio.wait_for(sleeping, WAKE_S)


async def test_the_ring_watcher_wakes_an_idle_pacer_at_the_first_frame() -> None:
    with segment() as seg:
        slot = seg.slots[0]
        slot.claim()
        link = Recorder()
        pacer = Pacer(
            link,
            slot,
            TransportStats(),
            session="s",
            lead_s=0.06,
            send_router=lambda m: True,
            poll_control=lambda: None,
        )
        watcher = RingWatcher()
        bell = seg.doorbell()
        tasks = [asyncio.ensure_future(watcher.run(bell)), asyncio.ensure_future(pacer.run())]
        try:
            watcher.add(pacer)
            await asyncio.wait_for(until(lambda: pacer.waiting_for_ring), WAKE_S)
            slot.out.write(bytes(OUT_FRAME_BYTES), flags=FLAG_FIRST | FLAG_LAST)
            await asyncio.wait_for(link.audio.wait(), WAKE_S)
            assert bell.rings == 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class Recorder:
    """A ClientLink that notes when audio arrives."""

    def __init__(self) -> None:
        self.audio = asyncio.Event()

    async def send_event(self, event: dict[str, Any]) -> None:
        pass

    async def send_audio(self, frame: bytes) -> None:
        self.audio.set()

    async def clear(self) -> None:
        pass


async def until(cond: Callable[[], bool]) -> None:
    """Yield to the loop until ``cond`` (the caller bounds it with a timeout)."""
    while not cond():
        await asyncio.sleep(0)


# --- across processes -----------------------------------------------------------------------


def spawn_role(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, role, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


async def test_a_reader_sleeps_until_another_process_writes() -> None:
    """The VAD's pattern: arm for the next frame, sleep, read what came; no wake-up is lost
    (each wait is rung, never ended by its timer) while a writer process writes frames in
    bursts with pauses between them."""
    with segment(mic=1024) as seg:
        mic = seg.slots[0].mic
        reader = MicReader(mic, from_start=True)
        bell = seg.doorbell()
        with reaped(spawn_role("writer", seg.name, str(FRAMES))) as writer:
            got = 0
            while got < FRAMES:
                if not mic.arm(MIC_VAD, bell, reader.cursor + 1):
                    assert await bell.wait(WAKE_S), f"not rung after {got} frames"
                while reader.read() is not None:
                    got += 1
            assert writer.wait(WAKE_S) == 0
        assert reader.lost == 0 and bell.rings > 0


async def test_a_writer_sleeps_until_another_process_frees_space() -> None:
    """The TTS's pattern: wait for room in a full out ring that a reader process drains."""
    with segment(out=8) as seg:
        out = seg.slots[0].out
        bell = seg.doorbell()
        with reaped(spawn_role("reader", seg.name, str(FRAMES))) as reader:
            written = 0
            while written < FRAMES:
                if out.free() == 0:
                    if not out.arm(OUT_WRITER, bell, out.head - out.capacity + 2):
                        assert await bell.wait(WAKE_S), f"not rung after {written} frames"
                    continue
                out.write(written.to_bytes(4, "little"))
                written += 1
            assert reader.stdout is not None
            assert await asyncio.to_thread(reader.stdout.readline) == f"{FRAMES}\n"
            assert reader.wait(WAKE_S) == 0


# --- the roles, run as separate processes -------------------------------------------------------


def _writer(name: str, frames: int) -> int:
    """Write ``frames`` mic frames in bursts of 1..7, pausing up to ~1 ms between them."""
    seg = RingSegment.attach(name)
    try:
        mic = seg.slots[0].mic
        for seq in range(frames):
            mic.write(bytes(MIC_FRAME_BYTES))
            if seq % 7 in (0, 3):
                time.sleep(0.0002 * (seq % 5))
    finally:
        seg.close()
    return 0


def _reader(name: str, frames: int) -> int:
    """Take ``frames`` out-ring frames as the transport does, waiting on its own bell; print
    how many arrived in order."""

    async def take() -> int:
        seg = RingSegment.attach(name)
        try:
            out, bell = seg.slots[0].out, seg.doorbell()
            n = 0
            while n < frames:
                frame = out.read()
                if frame is None:
                    if not out.arm(OUT_READER, bell, out.tail + 1):
                        await bell.wait(WAKE_S)
                    continue
                if int.from_bytes(frame.data[:4], "little") != n:
                    break
                n += 1
                if n % 5 == 0:
                    await asyncio.sleep(0.0005)  # slower than the writer: it must wait
            return n
        finally:
            seg.close()

    print(asyncio.run(take()), flush=True)
    return 0


if __name__ == "__main__":
    role, name, count = sys.argv[1:4]
    sys.exit({"writer": _writer, "reader": _reader}[role](name, int(count)))
