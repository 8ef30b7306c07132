"""Bench-only stand-ins for the TTS -> transport path, in three plumbing variants.

The regime is the one real systems live in (docs/bench.md): the producer (a TTS) makes
audio ``speed`` times faster than real time, in chunks, and sends each frame as soon as it
is made; the consumer (a transport) paces frames out at 20 ms against absolute deadlines
and checks its control input before every frame. Only the plumbing differs:

- ``one-socket``: one ordered ZeroMQ channel per session carries audio *and* control; the
  producer forwards a PAUSE in-band, so it is read only after every frame sent before it.
- ``two-sockets``: audio on its own ZeroMQ socket per session, control on another socket
  (the driver's HOLD), polled first.
- ``rings``: audio in the real shared-memory out rings (``voxmesh.mesh.ring``), control
  as ``voxmesh.mesh.protocol`` HOLD messages on a DEALER.

Both processes serve every session from one thread, as the mesh's actors do. The driver
(``bench/planes.py``) plays the router: it binds a ROUTER and sends SPEAK, PAUSE and HOLD.
The consumer answers each pause with a ``ClientEvent`` carrying when it saw the pause and
the send time of every frame of that utterance.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import zmq

from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import ClientEvent, Hold, Message, Pause, Ready, Shutdown, Speak
from voxmesh.mesh.ring import FLAG_FIRST, FLAG_LAST, OUT_FRAME_BYTES, OutRing, RingSegment
from voxmesh.mesh.sockets import configure, recv_all

VARIANTS = ("one-socket", "two-sockets", "rings")
PRODUCER, CONSUMER = "tts", "transport"
IDLE_POLL_S = 0.002  # rings have no FD: an idle consumer looks at them this often
MAX_REPORTED_SENDS = 400

_AUDIO = b"A"
_HDR = struct.Struct("<IIId")  # epoch, seq, flags, producer time
_SILENCE = bytes(OUT_FRAME_BYTES)


@dataclass(frozen=True)
class PlanesConfig:
    variant: str
    sessions: int
    ctl: str  # the driver's ROUTER endpoint
    run_dir: str  # per-session audio sockets live here (socket variants)
    segment: str = ""  # ring segment name (rings variant)
    frames: int = 100  # frames per utterance
    chunk_frames: int = 10  # frames the producer makes at once (a Piper sentence, say)
    speed: float = 14.0  # producer speed, times real time
    frame_s: float = 0.02

    def audio_endpoint(self, i: int) -> str:
        return f"ipc://{self.run_dir}/audio-{i}"

    def command(self, role: str) -> list[str]:
        """The command line that runs ``role`` (producer or consumer) with this config."""
        return [sys.executable, "-m", "voxmesh.bench.planes_proc", role, json.dumps(asdict(self))]


def poll_ms(seconds: float) -> int:
    """A poll timeout rounded up, as asyncio does: waking early would spin until the deadline."""
    return max(0, math.ceil(seconds * 1000))


class _Control:
    """A DEALER to the driver: Ready on connect, decoded control messages out."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], cfg: PlanesConfig, name: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        configure(self.sock)
        self.sock.setsockopt(zmq.IDENTITY, name.encode())
        self.sock.connect(cfg.ctl)
        self.send(Ready(name=name, kind="bench", pid=os.getpid()))

    def send(self, msg: Message) -> None:
        self.sock.send_multipart(protocol.encode(msg))

    def drain(self) -> list[Message]:
        out = []
        for frames in recv_all(self.sock):
            try:
                out.append(protocol.decode(frames))
            except protocol.ProtocolError:
                continue
        return out


# --- producer (TTS stand-in) -----------------------------------------------------------------


@dataclass
class _Job:
    epoch: int
    due: float  # when the next chunk is "synthesized"
    made: int = 0


def producer_main(cfg: PlanesConfig) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctl = _Control(ctx, cfg, PRODUCER)
    pushes: list[zmq.Socket[bytes]] = []
    segment = RingSegment.attach(cfg.segment) if cfg.variant == "rings" else None
    if segment is None:
        for i in range(cfg.sessions):
            push = ctx.socket(zmq.PUSH)
            configure(push)
            push.connect(cfg.audio_endpoint(i))
            pushes.append(push)
    jobs: dict[int, _Job] = {}
    chunk_s = cfg.chunk_frames * cfg.frame_s / cfg.speed
    running = True

    def serve_control() -> None:
        nonlocal running
        for msg in ctl.drain():
            if isinstance(msg, Speak):
                jobs[int(msg.session)] = _Job(msg.epoch, time.monotonic() + chunk_s)
            elif isinstance(msg, Pause):
                i = int(msg.session)
                job = jobs.get(i)
                if job is not None and job.epoch == msg.epoch:
                    del jobs[i]
                if cfg.variant == "one-socket":  # in-band, behind every frame already sent
                    pushes[i].send_multipart(protocol.encode(msg))
            elif isinstance(msg, Shutdown):
                running = False

    def emit(i: int, job: _Job) -> bool:
        flags = (FLAG_FIRST if job.made == 0 else 0) | (
            FLAG_LAST if job.made == cfg.frames - 1 else 0
        )
        if segment is not None:
            out = segment.slots[i].out
            if out.free() == 0:
                return False  # full: the writer waits
            out.write(_SILENCE, epoch=job.epoch, utterance=job.epoch, flags=flags)
        else:
            header = _HDR.pack(job.epoch, job.made, flags, time.monotonic())
            pushes[i].send_multipart([_AUDIO, header, _SILENCE])
        return True

    poller = zmq.Poller()
    poller.register(ctl.sock, zmq.POLLIN)
    try:
        while running:
            now = time.monotonic()
            wake = min((j.due for j in jobs.values()), default=now + 0.1)
            poller.poll(poll_ms(wake - now))
            serve_control()
            for i, job in list(jobs.items()):
                if job.due > time.monotonic():
                    continue
                for _ in range(cfg.chunk_frames):
                    serve_control()  # PAUSE is honoured between frames, as in the TTS actor
                    if jobs.get(i) is not job:
                        break
                    if not emit(i, job):
                        job.due = time.monotonic() + IDLE_POLL_S
                        break
                    job.made += 1
                    if job.made == cfg.frames:
                        del jobs[i]
                        break
                else:
                    job.due += chunk_s
    finally:
        for sock in [*pushes, ctl.sock]:
            sock.close(linger=0)
        if segment is not None:
            segment.close()
        ctx.term()


# --- consumer (transport stand-in) -------------------------------------------------------------

Item = tuple[str, int, bytes]  # ("frame" | "pause", epoch, payload)


@dataclass
class _Stream:
    """One session's playback as the transport sees it."""

    index: int
    epoch: int = -1  # the utterance being played
    paused: int = -1  # highest paused epoch: its frames (and older) are dropped unplayed
    t0: float = 0.0  # deadline of the utterance's first frame
    k: int = 0  # frames of this utterance sent so far
    held: tuple[int, bytes] | None = None  # the next frame, waiting for its deadline
    token: int = 0  # bumps invalidate scheduled deadlines
    sent: list[float] = field(default_factory=list)


def _socket_reader(sock: zmq.Socket[bytes]) -> Callable[[], Item | None]:
    def read() -> Item | None:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        if frames[0] == _AUDIO:
            epoch = _HDR.unpack(frames[1])[0]
            return ("frame", epoch, frames[2])
        msg = protocol.decode(frames)
        return ("pause", msg.epoch, b"") if isinstance(msg, Pause) else None

    return read


def _ring_reader(out: OutRing) -> Callable[[], Item | None]:
    def read() -> Item | None:
        frame = out.read()
        return None if frame is None else ("frame", frame.epoch, frame.data)

    return read


def consumer_main(cfg: PlanesConfig) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctl = _Control(ctx, cfg, CONSUMER)
    segment = RingSegment.attach(cfg.segment) if cfg.variant == "rings" else None
    pulls: list[zmq.Socket[bytes]] = []
    readers: list[Callable[[], Item | None]] = []
    for i in range(cfg.sessions):
        if segment is not None:
            readers.append(_ring_reader(segment.slots[i].out))
            continue
        pull = ctx.socket(zmq.PULL)
        configure(pull)
        pull.bind(cfg.audio_endpoint(i))
        pulls.append(pull)
        readers.append(_socket_reader(pull))
    streams = [_Stream(i) for i in range(cfg.sessions)]
    sock_index = {s: i for i, s in enumerate(pulls)}
    heap: list[tuple[float, int, int]] = []
    idle: set[int] = set()  # rings variant: sessions waiting for a frame
    poller = zmq.Poller()
    poller.register(ctl.sock, zmq.POLLIN)
    sink = os.open(os.devnull, os.O_WRONLY)  # "send": one write syscall per frame
    running = True

    def on_pause(s: _Stream, epoch: int) -> None:
        t_seen = time.monotonic()
        if epoch <= s.paused:
            return
        s.paused = epoch
        if s.held is not None and s.held[0] <= epoch:
            s.held = None
            s.token += 1
            wait(s)
        sent = s.sent[-MAX_REPORTED_SENDS:] if s.epoch == epoch else []
        event = {"type": "paused", "epoch": epoch, "t_seen": t_seen, "sent": sent}
        ctl.send(ClientEvent(session=str(s.index), event=event))

    def serve_control() -> None:
        nonlocal running
        for msg in ctl.drain():
            if isinstance(msg, Hold):
                on_pause(streams[int(msg.session)], msg.epoch)
            elif isinstance(msg, Shutdown):
                running = False

    def pull_next(s: _Stream) -> tuple[int, bytes] | None:
        """The session's next live frame; stale frames are dropped, in-band pauses served."""
        while (item := readers[s.index]()) is not None:
            kind, epoch, data = item
            if kind == "pause":
                on_pause(s, epoch)
            elif epoch > s.paused:
                return epoch, data
        return None

    def wait(s: _Stream) -> None:
        if segment is not None:
            idle.add(s.index)
        else:
            poller.register(pulls[s.index], zmq.POLLIN)

    def arm(s: _Stream, now: float) -> None:
        """A frame is held: schedule it on the utterance's 20 ms grid."""
        assert s.held is not None
        if s.held[0] != s.epoch:
            s.epoch, s.t0, s.k, s.sent = s.held[0], now, 0, []
        heapq.heappush(heap, (s.t0 + s.k * cfg.frame_s, s.index, s.token))

    def refill(s: _Stream, now: float) -> None:
        s.held = pull_next(s)
        if s.held is not None:
            arm(s, now)
        else:
            wait(s)

    for s in streams:
        wait(s)
    next_idle = 0.0
    try:
        while running:
            now = time.monotonic()
            wake = heap[0][0] if heap else now + 0.1
            if idle:
                wake = min(wake, next_idle)
            events = dict(poller.poll(poll_ms(wake - now)))
            serve_control()  # control first, always
            now = time.monotonic()
            for sock in events:
                index = sock_index.get(sock)
                if index is not None and streams[index].held is None:
                    poller.unregister(sock)
                    refill(streams[index], now)
            if idle and now >= next_idle:
                next_idle = now + IDLE_POLL_S
                for i in list(idle):
                    idle.discard(i)
                    refill(streams[i], now)
            while heap and heap[0][0] <= time.monotonic():
                _, i, token = heapq.heappop(heap)
                s = streams[i]
                serve_control()  # a PAUSE that arrived since the poll wins over this frame
                if token != s.token or s.held is None:
                    continue
                data, s.held = s.held[1], None
                os.write(sink, data)
                s.sent.append(time.monotonic())
                s.k += 1
                refill(s, time.monotonic())
    finally:
        os.close(sink)
        for sock in [*pulls, ctl.sock]:
            sock.close(linger=0)
        if segment is not None:
            segment.close()
        ctx.term()


ROLES: dict[str, Callable[[PlanesConfig], None]] = {
    "producer": producer_main,
    "consumer": consumer_main,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](PlanesConfig(**json.loads(sys.argv[2])))
