"""Shared-memory PCM rings: one segment, a fixed pool of session slots, two rings per slot.

Layout (all integers native-endian, every header 64-byte aligned)::

    segment header | slot 0 | slot 1 | ... | slot n-1
    slot    = slot header | mic ring | out ring
    ring    = ring header (head, tail, 2 waiters) | frame 0 | ... | frame cap-1
    frame   = frame header (seq, t, epoch, nbytes, utterance, flags) | payload

Publication is seqlock-style: the writer marks a frame BUSY, writes meta and payload, then
stores the frame's sequence number and finally the ring's head. A reader copies the payload
and re-reads the sequence number; if it changed, the writer lapped it (an overrun) and the
copy is discarded. So a reader never returns a torn frame, even if the writer was killed
half-way: a BUSY frame is never published.

The mic ring (16 kHz) has one writer that never blocks and any number of readers, each with
its own private cursor (``MicReader``); a reader that falls more than ``capacity`` frames
behind skips ahead and counts what it lost. The out ring (48 kHz) has one writer and one
reader whose cursor (``tail``) lives in shared memory, so the writer can wait when full.

Waiting: a ring header has two waiter entries (bell, target, arming), each written only by
the process that waits on it: on a mic ring the VAD (``MIC_VAD``) and the ASR (``MIC_ASR``)
wait for ``head`` to reach a target; on an out ring the transport (``OUT_READER``) waits for
``head`` and the TTS writing it (``OUT_WRITER``) for ``tail`` (space). ``arm()`` sets an
entry; every ``write()`` (and the out ring's ``read()`` and ``flush()``) rings the bell of
an entry whose target it reached, once per arming (mesh/doorbell.py).

This module assumes a machine whose stores become visible in program order (x86-64 TSO);
CPython executes each store as one aligned 8-byte move.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import Final

from .doorbell import Bells, Doorbell, fence, remove_bells

MAGIC: Final = b"VXRING01"
SHM_DIR: Final = "/dev/shm"
NAME_PREFIX: Final = "voxmesh-"

MIC_RATE: Final = 16000
OUT_RATE: Final = 48000
FRAME_MS: Final = 20
MIC_FRAME_SAMPLES: Final = MIC_RATE * FRAME_MS // 1000  # 320
OUT_FRAME_SAMPLES: Final = OUT_RATE * FRAME_MS // 1000  # 960
MIC_FRAME_BYTES: Final = MIC_FRAME_SAMPLES * 2
OUT_FRAME_BYTES: Final = OUT_FRAME_SAMPLES * 2

FLAG_FIRST: Final = 1  # first frame of an utterance
FLAG_LAST: Final = 2  # last frame of an utterance

BUSY: Final = 2**64 - 1  # frame sequence while being written (never a real sequence)

# Waiter entries in a ring header (after head and tail: words 2-4 and 5-7).
MIC_VAD: Final = 0
MIC_ASR: Final = 1
OUT_READER: Final = 0  # waits for head (frames to send)
OUT_WRITER: Final = 1  # waits for tail (space to write)
_WAITER_WORDS = 3  # bell, target, arming

_SEG_HDR = struct.Struct(
    "8sIIIIII"
)  # magic, version, slots, mic cap, mic bytes, out cap, out bytes
_FRAME_HDR = struct.Struct("QdIIII")  # seq, t, epoch, nbytes, utterance, flags
_SLOT_HDR = struct.Struct("IIII")  # generation, in_use, epoch, reserved
HEADER_BYTES: Final = 64
FRAME_HDR_BYTES: Final = 32


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    t: float
    epoch: int
    utterance: int
    flags: int
    data: bytes


class RingError(RuntimeError):
    pass


class FrameRing:
    """A single-writer ring of fixed-size frame slots inside a shared buffer."""

    _head_waiters: tuple[int, ...] = (MIC_VAD, MIC_ASR)  # the entries a write() may satisfy

    def __init__(
        self,
        buf: memoryview,
        offset: int,
        capacity: int,
        frame_bytes: int,
        bells: Bells | None = None,
    ) -> None:
        self.capacity = capacity
        self.frame_bytes = frame_bytes
        self._buf = buf
        self._stride = _align(FRAME_HDR_BYTES + frame_bytes, 16)
        self._frames_at = offset + HEADER_BYTES
        # head: next sequence to be written; tail: next sequence the (single) reader takes;
        # then the waiter entries.
        self._words = buf[offset : offset + HEADER_BYTES].cast("Q")
        self._seqs = [buf[self._at(i) : self._at(i) + 8].cast("Q") for i in range(capacity)]
        self._bells = bells
        self._rung = [0, 0]  # per entry: the arming we last rang for

    @staticmethod
    def size(capacity: int, frame_bytes: int) -> int:
        return HEADER_BYTES + capacity * _align(FRAME_HDR_BYTES + frame_bytes, 16)

    def _at(self, index: int) -> int:
        return self._frames_at + index * self._stride

    @property
    def head(self) -> int:
        return int(self._words[0])

    @property
    def tail(self) -> int:
        return int(self._words[1])

    def release_views(self) -> None:
        for view in self._seqs:
            view.release()
        self._seqs = []
        self._words.release()

    def reset(self) -> None:
        """Empty the ring (only while no writer or reader is active on it)."""
        for seq_word in self._seqs:
            seq_word[0] = BUSY
        self._words[0] = 0
        self._words[1] = 0

    def write(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        epoch: int = 0,
        utterance: int = 0,
        flags: int = 0,
        t: float | None = None,
    ) -> int:
        """Publish one frame and return its sequence number. Never blocks."""
        n = len(payload)
        if n > self.frame_bytes:
            raise RingError(f"frame of {n} bytes exceeds {self.frame_bytes}")
        seq = int(self._words[0])
        index = seq % self.capacity
        at = self._at(index)
        seq_word = self._seqs[index]
        seq_word[0] = BUSY
        stamp = time.monotonic() if t is None else t
        _FRAME_HDR.pack_into(self._buf, at, BUSY, stamp, epoch, n, utterance, flags)
        self._buf[at + FRAME_HDR_BYTES : at + FRAME_HDR_BYTES + n] = payload
        seq_word[0] = seq  # publish the frame...
        self._words[0] = seq + 1  # ...then the head
        self._notify(self._head_waiters)
        return seq

    def skip_to(self, seq: int) -> None:
        """Move the head forward to ``seq`` without publishing the frames in between (a
        writer that relays another host's ring and lost some: readers count them lost, and
        every later frame keeps its sequence, so its absolute position)."""
        if seq > int(self._words[0]):
            self._words[0] = seq
            self._notify(self._head_waiters)

    # --- waiting ----------------------------------------------------------------------------

    def _count(self, entry: int) -> int:
        """What waiter ``entry`` waits on: the head (the out ring's writer: the tail)."""
        return int(self._words[0])

    def arm(self, entry: int, bell: Doorbell, target: int) -> bool:
        """Have ``bell`` rung once the entry's count reaches ``target``; True if it already
        has (then do not sleep). Arm, then wait, with no ``await`` in between."""
        at = 2 + entry * _WAITER_WORDS
        words = self._words
        words[at] = bell.id
        words[at + 1] = target
        words[at + 2] = words[at + 2] + 1  # the arming goes last: a ringer that sees it sees all
        fence()  # our arming before our look at the count (mesh/doorbell.py)
        return self._count(entry) >= target

    def _notify(self, entries: tuple[int, ...]) -> None:
        """Ring each waiter whose target the count just stored reached (once per arming)."""
        if self._bells is None:
            return
        fence()  # the count we stored before our look at the armings
        words = self._words
        for entry in entries:
            at = 2 + entry * _WAITER_WORDS
            arming = int(words[at + 2])
            if arming != self._rung[entry] and self._count(entry) >= words[at + 1]:
                self._rung[entry] = arming
                self._bells.ring(int(words[at]))

    def read_at(self, seq: int) -> Frame | None:
        """The frame ``seq`` if it is still intact in the ring, else None (overwritten)."""
        index = seq % self.capacity
        seq_word = self._seqs[index]
        if seq_word[0] != seq:
            return None
        at = self._at(index)
        _, t, epoch, n, utterance, flags = _FRAME_HDR.unpack_from(self._buf, at)
        if n > self.frame_bytes:
            return None
        data = bytes(self._buf[at + FRAME_HDR_BYTES : at + FRAME_HDR_BYTES + n])
        if seq_word[0] != seq:  # lapped while we copied: the copy may be torn
            return None
        return Frame(seq, t, epoch, utterance, flags, data)


class MicReader:
    """One reader's private cursor over a mic ring; detects and counts overruns."""

    def __init__(self, ring: FrameRing, *, from_start: bool = False) -> None:
        self.ring = ring
        self.cursor = 0 if from_start else ring.head
        self.lost = 0

    def available(self) -> int:
        return self.ring.head - self.cursor

    def read(self) -> Frame | None:
        """The next frame, or None when caught up. Skips (and counts) overwritten frames."""
        while True:
            head = self.ring.head
            if self.cursor >= head:
                return None
            oldest = head - self.ring.capacity
            if self.cursor < oldest:
                self.lost += oldest - self.cursor
                self.cursor = oldest
            frame = self.ring.read_at(self.cursor)
            if frame is None:  # overwritten between the head check and the copy
                self.lost += 1
                self.cursor += 1
                continue
            self.cursor += 1
            return frame


class OutRing(FrameRing):
    """The out ring: one writer that checks ``free()`` before writing, one reader."""

    _head_waiters = (OUT_READER,)

    def _count(self, entry: int) -> int:
        return int(self._words[1 if entry == OUT_WRITER else 0])

    def free(self) -> int:
        return self.capacity - (self.head - self.tail)

    def queued(self) -> int:
        return self.head - self.tail

    def read(self) -> Frame | None:
        """Take the next frame (advances the shared tail), or None when empty."""
        while True:
            tail = self.tail
            if tail >= self.head:
                return None
            frame = self.read_at(tail)
            self._words[1] = tail + 1
            self._notify((OUT_WRITER,))
            if frame is not None:
                return frame

    def flush(self) -> int:
        """Drop every queued frame (the reader's side of STOP); returns how many."""
        head = self.head
        dropped = head - self.tail
        self._words[1] = head
        self._notify((OUT_WRITER,))
        return dropped


class Slot:
    """One session's slot: generation, epoch and its two rings."""

    def __init__(
        self, buf: memoryview, offset: int, index: int, geometry: Geometry, bells: Bells
    ) -> None:
        self.index = index
        self._hdr = buf[offset : offset + 16].cast("I")
        mic_at = offset + HEADER_BYTES
        out_at = mic_at + FrameRing.size(geometry.mic_capacity, MIC_FRAME_BYTES)
        self.mic = FrameRing(buf, mic_at, geometry.mic_capacity, MIC_FRAME_BYTES, bells)
        self.out = OutRing(buf, out_at, geometry.out_capacity, OUT_FRAME_BYTES, bells)

    @property
    def generation(self) -> int:
        return int(self._hdr[0])

    @property
    def in_use(self) -> bool:
        return bool(self._hdr[1])

    @property
    def epoch(self) -> int:
        return int(self._hdr[2])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._hdr[2] = value & 0xFFFFFFFF

    def claim(self) -> int:
        """Reset both rings for a new session and return the new generation."""
        self.mic.reset()
        self.out.reset()
        self._hdr[2] = 0
        self._hdr[0] = (self._hdr[0] + 1) & 0xFFFFFFFF
        self._hdr[1] = 1
        return int(self._hdr[0])

    def release(self) -> None:
        self._hdr[1] = 0

    def release_views(self) -> None:
        self._hdr.release()
        self.mic.release_views()
        self.out.release_views()


@dataclass(frozen=True, slots=True)
class Geometry:
    slots: int
    mic_capacity: int = 512  # 10.24 s of 20 ms frames
    out_capacity: int = 256  # 5.12 s of 20 ms frames

    def slot_size(self) -> int:
        return _align(
            HEADER_BYTES
            + FrameRing.size(self.mic_capacity, MIC_FRAME_BYTES)
            + FrameRing.size(self.out_capacity, OUT_FRAME_BYTES)
        )

    def total_size(self) -> int:
        return HEADER_BYTES + self.slots * self.slot_size()


class RingSegment:
    """The shared-memory segment; create() in the supervisor, attach() everywhere else."""

    def __init__(self, name: str, fd: int, size: int, geometry: Geometry, owner: bool) -> None:
        self.name = name
        self.geometry = geometry
        self.owner = owner
        self._mmap = mmap.mmap(fd, size)
        os.close(fd)
        self._buf = memoryview(self._mmap)
        self._bells = Bells(self.path(name))
        self._doorbells: list[Doorbell] = []
        stride = geometry.slot_size()
        self.slots = [
            Slot(self._buf, HEADER_BYTES + i * stride, i, geometry, self._bells)
            for i in range(geometry.slots)
        ]

    @staticmethod
    def path(name: str) -> str:
        return os.path.join(SHM_DIR, name)

    @classmethod
    def create(cls, name: str, geometry: Geometry) -> RingSegment:
        if not name.startswith(NAME_PREFIX) or "/" in name:
            raise RingError(f"segment name must start with {NAME_PREFIX!r} and have no '/'")
        size = geometry.total_size()
        fd = os.open(cls.path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(cls.path(name))
            raise
        seg = cls(name, fd, size, geometry, owner=True)
        _SEG_HDR.pack_into(
            seg._buf,
            0,
            MAGIC,
            1,
            geometry.slots,
            geometry.mic_capacity,
            MIC_FRAME_BYTES,
            geometry.out_capacity,
            OUT_FRAME_BYTES,
        )
        for slot in seg.slots:
            slot.mic.reset()
            slot.out.reset()
        return seg

    @classmethod
    def attach(cls, name: str) -> RingSegment:
        try:
            fd = os.open(cls.path(name), os.O_RDWR)
        except FileNotFoundError:
            raise RingError(f"no ring segment {name!r} in {SHM_DIR}") from None
        with open(fd, "rb", closefd=False) as f:
            head = f.read(_SEG_HDR.size)
        if len(head) < _SEG_HDR.size:
            os.close(fd)
            raise RingError(f"segment {name!r} is too short")
        magic, _version, slots, mic_cap, mic_bytes, out_cap, out_bytes = _SEG_HDR.unpack(head)
        if magic != MAGIC or mic_bytes != MIC_FRAME_BYTES or out_bytes != OUT_FRAME_BYTES:
            os.close(fd)
            raise RingError(f"segment {name!r} is not a voxmesh ring segment of this version")
        geometry = Geometry(slots, mic_cap, out_cap)
        return cls(name, fd, geometry.total_size(), geometry, owner=False)

    def doorbell(self) -> Doorbell:
        """A bell for this process to wait on (``FrameRing.arm``); closed by close()."""
        bell = Doorbell(self.path(self.name))
        self._doorbells.append(bell)
        return bell

    def close(self) -> None:
        """Release every view and unmap; the segment itself stays until unlink()."""
        for bell in self._doorbells:
            bell.close()
        self._doorbells.clear()
        self._bells.close()
        for slot in self.slots:
            slot.release_views()
        self.slots = []
        self._buf.release()
        self._mmap.close()

    def unlink(self) -> None:
        try:
            os.unlink(self.path(self.name))
        except FileNotFoundError:
            pass
        remove_bells(self.path(self.name))


def segment_name(pid: int, tag: str = "rings") -> str:
    """Segment names carry the owner's pid so a later run can tell stale ones apart."""
    return f"{NAME_PREFIX}{pid}-{tag}"


def remove_stale_segments() -> list[str]:
    """Unlink voxmesh segments whose owning process is dead; returns their names."""
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(NAME_PREFIX):
            continue
        pid_text = name[len(NAME_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
