"""Scenario "planes": what splitting the control plane from the audio plane buys.

The driver below plays the router against the stand-ins of ``planes_proc``: for every
session it starts an utterance (SPEAK), waits a random 0.1-0.9 s into it, issues a PAUSE
(stamping ``t_issued``) and waits for the consumer's report. Pause latency is
``max(last frame sent, pause seen by the consumer) - t_issued``: the moment the consumer
has provably stopped. CPU is the producer's plus the consumer's, per session and per frame.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import zmq

from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import ClientEvent, Hold, Message, Pause, Ready, Shutdown, Speak
from voxmesh.mesh.ring import Geometry, RingSegment, segment_name
from voxmesh.mesh.sockets import configure, recv_all

from .planes_proc import (
    CONSUMER,
    PRODUCER,
    VARIANTS,
    PlanesConfig,
    poll_ms,
)
from .registry import BenchContext, Outcome, scenario
from .report import Figure, Row

START_TIMEOUT_S = 30.0


@dataclass
class VariantRun:
    variant: str
    sessions: int
    pause_ms: list[float] = field(default_factory=list)
    seen_ms: list[float] = field(default_factory=list)  # PAUSE issued -> consumer saw it
    frames_after: list[int] = field(default_factory=list)  # frames sent after t_issued
    grid_error_ms: list[float] = field(default_factory=list)  # |send - ideal 20 ms grid|
    lost: int = 0  # trials whose report never came
    frames_sent: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def cpu_pct_per_session(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s / self.sessions if self.wall_s else 0.0

    @property
    def cpu_us_per_frame(self) -> float:
        return 1e6 * self.cpu_s / self.frames_sent if self.frames_sent else 0.0


class _Driver:
    """The router's role: a ROUTER socket, per-session trial schedules, the reports."""

    def __init__(self, sock: zmq.Socket[bytes], cfg: PlanesConfig, trials: int, seed: int):
        self.sock = sock
        self.cfg = cfg
        self.trials = trials
        self.rng = random.Random(seed)
        self.events: list[tuple[float, int, str, int]] = []  # (when, tiebreak, what, session)
        self.epoch = [0] * cfg.sessions
        self.issued: dict[int, float] = {}  # session -> t_issued of the awaited pause
        self.done = [0] * cfg.sessions
        self._tie = 0

    def send(self, peer: str, msg: Message) -> None:
        self.sock.send_multipart([peer.encode(), *protocol.encode(msg)])

    def at(self, when: float, what: str, i: int) -> None:
        self._tie += 1
        heapq.heappush(self.events, (when, self._tie, what, i))

    def finished(self) -> bool:
        return all(d >= self.trials for d in self.done)

    def fire(self, what: str, i: int, res: VariantRun) -> None:
        now = time.monotonic()
        if what == "speak":
            self.epoch[i] += 1
            e = self.epoch[i]
            self.send(PRODUCER, Speak(session=str(i), slot=i, epoch=e, utterance=e, text="."))
            self.at(now + self.rng.uniform(0.1, 0.9), "pause", i)
        elif what == "pause":
            t_issued = time.monotonic()
            self.issued[i] = t_issued
            self.send(PRODUCER, Pause(session=str(i), epoch=self.epoch[i]))
            if self.cfg.variant != "one-socket":  # the split planes: HOLD straight to it
                self.send(CONSUMER, Hold(session=str(i), epoch=self.epoch[i], t_issued=t_issued))
            self.at(now + self.cfg.frames * self.cfg.frame_s + 5.0, f"timeout:{self.epoch[i]}", i)
        elif what == f"timeout:{self.epoch[i]}" and i in self.issued:
            del self.issued[i]
            res.lost += 1
            self.next_trial(i, now)

    def next_trial(self, i: int, now: float) -> None:
        self.done[i] += 1
        if self.done[i] < self.trials:
            self.at(now + self.rng.uniform(0.05, 0.15), "speak", i)

    def on_report(self, i: int, event: dict[str, Any], res: VariantRun) -> None:
        t_issued = self.issued.get(i)
        if t_issued is None or event.get("epoch") != self.epoch[i]:
            return
        del self.issued[i]
        sent: list[float] = event["sent"]
        t_stop = max([event["t_seen"], *sent])
        res.pause_ms.append((t_stop - t_issued) * 1e3)
        res.seen_ms.append((event["t_seen"] - t_issued) * 1e3)
        res.frames_after.append(sum(t > t_issued for t in sent))
        res.frames_sent += len(sent)
        if sent:
            f = self.cfg.frame_s
            res.grid_error_ms += [abs(t - sent[0] - k * f) * 1e3 for k, t in enumerate(sent)]
        self.next_trial(i, time.monotonic())

    def run(self, res: VariantRun, timeout_s: float) -> None:
        now = time.monotonic()
        for i in range(self.cfg.sessions):  # staggered: sessions do not move in lockstep
            self.at(now + self.rng.uniform(0.0, 0.3), "speak", i)
        deadline = now + timeout_s
        while not self.finished() and time.monotonic() < deadline:
            wait = self.events[0][0] - time.monotonic() if self.events else 0.05
            if self.sock.poll(poll_ms(min(wait, 0.05))):
                for frames in recv_all(self.sock):
                    msg = _decode(frames[1:])
                    if isinstance(msg, ClientEvent) and msg.event.get("type") == "paused":
                        self.on_report(int(msg.session), msg.event, res)
            while self.events and self.events[0][0] <= time.monotonic():
                _, _, what, i = heapq.heappop(self.events)
                self.fire(what, i, res)


def _decode(frames: list[bytes]) -> Message | None:
    try:
        return protocol.decode(frames)
    except protocol.ProtocolError:
        return None


def _wait_ready(sock: zmq.Socket[bytes], procs: list[subprocess.Popen[bytes]]) -> None:
    ready: set[str] = set()
    deadline = time.monotonic() + START_TIMEOUT_S
    while ready != {PRODUCER, CONSUMER}:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"planes stand-ins did not start (ready: {sorted(ready)})")
        if sock.poll(100):
            for frames in recv_all(sock):
                if isinstance(_decode(frames[1:]), Ready):
                    ready.add(frames[0].decode())


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def run_variant(
    variant: str,
    sessions: int,
    trials: int,
    *,
    frames: int = 100,
    speed: float = 14.0,
    seed: int = 1,
) -> VariantRun:
    """Start the two stand-ins for ``variant``, run ``trials`` pauses per session, stop."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    res = VariantRun(variant, sessions)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    segment: RingSegment | None = None
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="vxbench-") as run_dir:
        sock = ctx.socket(zmq.ROUTER)
        try:
            configure(sock)
            sock.bind(f"ipc://{run_dir}/ctl")
            if variant == "rings":
                name = segment_name(os.getpid(), f"bench{sessions}")
                segment = RingSegment.create(name, Geometry(slots=sessions))
            cfg = PlanesConfig(
                variant, sessions, f"ipc://{run_dir}/ctl", run_dir,
                segment.name if segment else "", frames=frames, speed=speed,
            )  # fmt: skip
            procs = [
                subprocess.Popen(cfg.command(role), start_new_session=True)
                for role in ("consumer", "producer")
            ]
            _wait_ready(sock, procs)
            watched = [psutil.Process(p.pid) for p in procs]
            cpu0, t0 = _cpu_s(watched), time.monotonic()
            budget = trials * (frames * cfg.frame_s + 2.0) + 30.0
            _Driver(sock, cfg, trials, seed).run(res, budget)
            res.cpu_s, res.wall_s = _cpu_s(watched) - cpu0, time.monotonic() - t0
            for peer in (PRODUCER, CONSUMER):
                sock.send_multipart([peer.encode(), *protocol.encode(Shutdown())])
        finally:
            for p in procs:
                _stop(p)
            sock.close(linger=0)
            ctx.term()
            if segment is not None:
                segment.close()
                segment.unlink()
    return res


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a clean exit (Shutdown was sent), else kill its process group."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3.0)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5.0)


# --- the scenario ----------------------------------------------------------------------------

PAUSE_DEF = (
    "PAUSE issued by the router stand-in -> the transport stand-in has stopped (its last frame "
    "sent, or the moment it saw the pause if later); producer 14x real time, consumer paced at "
    "20 ms, one process each for all sessions"
)
LABELS = {
    "one-socket": "(a) one ordered socket",
    "two-sockets": "(b) two sockets",
    "rings": "(c) rings",
}


def planes_figures(runs: list[VariantRun]) -> tuple[Figure, Figure, Figure]:
    """The pause distributions, pause vs sessions (with CPU), and the pacing error."""
    dist = Figure(
        "planes_pause", "Pause latency by plumbing (TTS 14x real time)", PAUSE_DEF,
        target="p99 <= 1 ms at 16 sessions (rings)",
    )  # fmt: skip
    scale = Figure(
        "planes_pause_vs_sessions", "Pause latency vs sessions, by plumbing", PAUSE_DEF,
        plot="scale", target="p99 <= 1 ms at 16 sessions (rings)", in_summary=False,
    )  # fmt: skip
    grid = Figure(
        "planes_grid_error", "Frame send time vs the ideal 20 ms grid (stand-in consumer)",
        "|send time of frame k - (send time of frame 0 + k x 20 ms)| over every frame sent",
        target="jitter p99 <= 2 ms at 16 sessions",
    )  # fmt: skip
    for r in runs:
        params = {"variant": r.variant, "sessions": r.sessions}
        extra = {
            "cpu_pct_per_session": round(r.cpu_pct_per_session, 3),
            "cpu_us_per_frame": round(r.cpu_us_per_frame, 1),
            "frames_after_pause_median": sorted(r.frames_after)[len(r.frames_after) // 2]
            if r.frames_after
            else 0,
            "lost_trials": r.lost,
        }
        label = f"{LABELS[r.variant]}, {r.sessions} sess"
        dist.add(Row(label, r.pause_ms, params, extra))
        scale.add(Row(label, r.pause_ms, params, extra))
        grid.add(Row(label, r.grid_error_ms, params))
    return dist, scale, grid


def profile_note(runs: list[VariantRun]) -> str:
    """Where pause latency goes, from the stage stamps: the frames sent after t_issued (a
    queue ahead of the PAUSE) versus the PAUSE's own trip to the consumer."""
    parts = []
    for r in runs:
        if not r.pause_ms:
            continue
        med = _median(r.pause_ms)
        seen = _median(r.seen_ms)
        after = _median([float(n) for n in r.frames_after])
        if after > 0:
            why = f"{after:.0f} frames queued ahead of the PAUSE, paced out at 20 ms"
        else:
            why = f"the PAUSE's trip to the consumer (issued -> seen {seen:.3g} ms), 0 frames after"
        parts.append(f"{r.variant}@{r.sessions}: median {med:.3g} ms = {why}")
    return "pause latency by stage (planes): " + "; ".join(parts)


@scenario("planes", "one socket vs two sockets vs rings (pause latency, CPU)", order=10)
def planes_scenario(ctx: BenchContext, out: Outcome) -> None:
    ladder = ctx.session_ladder([1, 16] if ctx.quick else [1, 4, 16, 64])
    runs = []
    for sessions in ladder:
        # Aim at ~40 trials per point (the one-socket variant pays ~1.5 s per trial).
        trials = max(2, (6 if ctx.quick else 40) // sessions)
        for variant in VARIANTS:
            r = run_variant(variant, sessions, trials, seed=sessions)
            ctx.log(
                f"   {variant:11s} {sessions:3d} sess: n={len(r.pause_ms)} "
                f"median {_median(r.pause_ms):.3f} ms, cpu {r.cpu_pct_per_session:.2f} %/sess"
            )
            runs.append(r)
    for fig in planes_figures(runs):
        out.add(fig)
    out.notes.append(profile_note(runs))


def _median(x: list[float]) -> float:
    return sorted(x)[len(x) // 2] if x else float("nan")
