"""One supervised actor process: spawn, state, restart bookkeeping, stop and kill.

Actors start as fresh interpreters (``python -m voxmesh.supervisor.child SPEC``: spawn
semantics, never fork), in the supervisor's process group so that a terminal's Ctrl-C and a
test's kill of the group reach them too (they ignore SIGINT; the supervisor decides).
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Any

from .child import PARENT_ENV
from .spec import ActorSpec


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
        self.state = State.STOPPED
        self.restarts = 0
        self.recent_restarts: deque[float] = deque()  # monotonic times, for the intensity limit
        self.started_at = 0.0  # monotonic time of the last spawn
        self.ready_at = 0.0  # monotonic time of the last READY
        self.restart_at = 0.0  # when BACKOFF ends
        self.failed_at = 0.0  # when the last failure was seen
        self.last_exit: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> None:
        env = {**os.environ, **self.spec.env, PARENT_ENV: str(os.getpid())}
        # The spec (config with any API keys) goes through a pipe, not argv: argv is
        # world-readable in ps; the name in argv is what a human looking at ps needs.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voxmesh.supervisor.child", self.spec.name],
            env=env,
            stdin=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None
        with self.proc.stdin:
            self.proc.stdin.write(self.spec.to_json().encode())
        self.state = State.STARTING
        self.started_at = time.monotonic()
        self.ready_at = 0.0

    def poll(self) -> int | None:
        """The exit status if the process has exited (reaped), else None."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            self.last_exit = code
        return code

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

    def note_restart(self, now: float, window_s: float) -> int:
        """Record a restart; how many fell within the last ``window_s`` (this one included)."""
        self.restarts += 1
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
        if self.spec.env.get("CUDA_VISIBLE_DEVICES"):
            row["gpu"] = self.spec.env["CUDA_VISIBLE_DEVICES"]
        return row
