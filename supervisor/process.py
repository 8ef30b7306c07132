"""One supervised actor process: spawn, state, restart bookkeeping, stop and kill.

Actors start as fresh interpreters (``python -m voxmesh.supervisor.child SPEC``: spawn
semantics, never fork), in the supervisor's process group so that a terminal's Ctrl-C and a
test's kill of the group reach them too (they ignore SIGINT; the supervisor decides).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Any

import psutil

from voxmesh.mesh.spec import ActorSpec

from .child import PARENT_ENV

# Each actor sizes its own model threads (asr.threads, Piper's onnxruntime pool); numpy's
# OpenBLAS would add a pool per process whose idle threads spin: measured on 2 cores, it
# doubled the ASR's CPU per transcript (92 -> 47 ms) for no gain in time. A user's own
# setting in the environment wins. `voxmesh bench` takes them too (cli/bench.py): the BLAS
# threads change Whisper's features in the last bits, and so a borderline clip's words.
THREAD_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1"}


class State(enum.Enum):
    STARTING = "starting"  # spawned, READY not yet received
    RUNNING = "running"  # READY received
    BACKOFF = "backoff"  # died; waiting to be restarted
    STOPPING = "stopping"  # asked to stop
    STOPPED = "stopped"  # exited after a stop (or never started)


class ManagedProcess:
    """An actor process and its history; the supervisor's loop drives every transition."""

    def __init__(self, spec: ActorSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.standby: subprocess.Popen[bytes] | None = None  # a warm spare (mesh.standby)
        self.state = State.STOPPED
        self.restarts = 0
        self.recent_restarts: deque[float] = deque()  # monotonic times, for the intensity limit
        self.started_at = 0.0  # monotonic time of the last spawn
        self.ready_at = 0.0  # monotonic time of the last READY
        self.restart_at = 0.0  # when BACKOFF ends
        self.failed_at = 0.0  # when the last failure was seen
        self.last_exit: int | None = None
        self.cpu_mark: tuple[float, float] | None = None  # (monotonic time, CPU seconds used)
        self.starved_since: float | None = None  # silent while busy: not (yet) restarted

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _start(self, *, standby: bool) -> subprocess.Popen[bytes]:
        env = {**THREAD_DEFAULTS, **os.environ, **self.spec.env, PARENT_ENV: str(os.getpid())}
        # The spec (config with any API keys, the mesh secret) goes through a pipe, not
        # argv: argv is world-readable in ps; the name in argv is what a human needs.
        proc = subprocess.Popen(
            [sys.executable, "-m", "voxmesh.supervisor.child", self.spec.name],
            env=env,
            stdin=subprocess.PIPE,
            close_fds=True,
        )
        assert proc.stdin is not None
        spec = dataclasses.replace(self.spec, standby=standby)
        proc.stdin.write(spec.to_json().encode() + b"\n")
        proc.stdin.flush()
        if not standby:
            proc.stdin.close()
        return proc

    def spawn(self) -> None:
        self.proc = self._start(standby=False)
        self._started()

    def spawn_standby(self) -> None:
        """Start a warm spare: it loads its models and waits to be promoted."""
        if self.standby is None or self.standby.poll() is not None:
            self.standby = self._start(standby=True)

    def promote(self) -> bool:
        """Replace the (dead) process by the warm spare, if there is a live one."""
        spare, self.standby = self.standby, None
        if spare is None or spare.poll() is not None or spare.stdin is None:
            return False
        try:
            with spare.stdin:
                spare.stdin.write(b"go\n")
        except OSError:
            return False
        self.proc = spare
        self._started()
        return True

    def drop_standby(self) -> None:
        """End the spare (at shutdown): end of its input tells it it is not needed."""
        spare, self.standby = self.standby, None
        if spare is None:
            return
        if spare.stdin is not None:
            with contextlib.suppress(OSError):
                spare.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            spare.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            spare.wait(timeout=5)

    def _started(self) -> None:
        self.state = State.STARTING
        self.started_at = time.monotonic()
        self.ready_at = 0.0
        self.cpu_mark = None
        self.starved_since = None

    def poll(self) -> int | None:
        """The exit status if the process has exited (reaped), else None."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            self.last_exit = code
        return code

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used (None if it is gone)."""
        if self.proc is None:
            return None
        try:
            times = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return None
        return float(times.user + times.system)

    def cpu_rate(self, now: float) -> float | None:
        """Share of a core used since ``cpu_mark``; moves the mark to now."""
        used = self.cpu_seconds()
        mark, self.cpu_mark = self.cpu_mark, None if used is None else (now, used)
        if used is None or mark is None or now <= mark[0]:
            return None
        return (used - mark[1]) / (now - mark[0])

    def busy(self, now: float, share: float) -> tuple[bool, str]:
        """Is a silent actor working (or waiting for a CPU or a disk) rather than hung?

        Busy: it used ``share`` of a core since the last sample, or it is runnable or in
        an uninterruptible wait right now (a starved actor gets little CPU, but it is ready
        to run). Hung: stopped, or asleep without using the CPU (a deadlock)."""
        rate = self.cpu_rate(now)
        try:
            status = psutil.Process(self.proc.pid).status() if self.proc else "gone"
        except psutil.Error:
            status = "gone"
        if status in (psutil.STATUS_RUNNING, psutil.STATUS_DISK_SLEEP):
            return True, f"{status}, {100 * (rate or 0):.0f}% of a core"
        if rate is not None and rate >= share:
            return True, f"{100 * rate:.0f}% of a core"
        return False, f"{status}, {100 * (rate or 0):.0f}% of a core"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL and reap (a dead or hung actor about to be replaced)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # unkillable (D state): leave it, report it
                pass
            self.poll()

    def note_restart(self, now: float, window_s: float, *, counted: bool = True) -> int:
        """Record a restart; how many counted ones fell within the last ``window_s`` (this
        one included). A restart of a starved actor is not ``counted``: it was not at fault."""
        self.restarts += 1
        if counted:
            self.recent_restarts.append(now)
        while self.recent_restarts and now - self.recent_restarts[0] > window_s:
            self.recent_restarts.popleft()
        return len(self.recent_restarts)

    def status(
        self, now: float, peer_info: dict[str, Any] | None, seen_ago: float | None
    ) -> dict[str, Any]:
        """One row of STATUS."""
        up = now - self.ready_at if self.state is State.RUNNING and self.ready_at else 0.0
        row: dict[str, Any] = {
            "name": self.name,
            "kind": self.spec.kind,
            "pid": self.pid if self.alive() else None,
            "state": self.state.value,
            "restarts": self.restarts,
            "uptime_s": round(up, 3),
            "info": peer_info or {},
        }
        if seen_ago is not None:
            row["heartbeat_age_s"] = round(seen_ago, 3)
        if self.last_exit is not None:
            row["last_exit"] = self.last_exit
        if self.standby is not None and self.standby.poll() is None:
            row["standby_pid"] = self.standby.pid
        if self.spec.env.get("CUDA_VISIBLE_DEVICES"):
            row["gpu"] = self.spec.env["CUDA_VISIBLE_DEVICES"]
        return row
