"""Run a whole mesh (``python -m voxmesh up``) as a child process, and always stop it.

    mesh = MeshProcess(workdir, tts="mock", env={"VOXMESH_MESH_MAX_SESSIONS": "8"})
    try:
        mesh.wait_healthy()                 # GET /health == 200, else MeshError
        mesh.url, mesh.ws_url, mesh.actor_pids(), mesh.status()
    finally:
        problems = mesh.stop()              # what it had left behind; all gone now

This is how the tests (``tests/meshproc.py``) and the bench (``bench/mesh.py``) start a
mesh. It runs in its own session (process group) on a free port, with a private run dir
and a private state dir (``XDG_RUNTIME_DIR``) under ``workdir`` (a temp dir of its own when
none is given, removed by ``stop``); its output goes to a log file. ``stop`` sends SIGINT
(as Ctrl-C would) and gives every process ``STOP_TIMEOUT_S`` to exit; whatever is left
then is killed and removed: the process group, every actor it saw, the
``/dev/shm/voxmesh-<pid>-*`` segments, the run dir and the state file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from voxmesh.mesh.protocol import Status

from .status import StatusUnavailable, query

SHM_DIR = Path("/dev/shm")
HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
IPC_PATH_MAX = 100  # sun_path holds 108 bytes; leave room for the longest socket name

T = TypeVar("T")


class MeshError(RuntimeError):
    """The mesh did not get where it was asked to, in time; the message says where not."""


def free_port(count: int = 1, kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port (tcp, or ``kind``) on ``host`` nothing holds now, and the ``count - 1`` after
    it free too (a remote.listen port: the bridge takes the next one, mesh/settings.py)."""
    for _ in range(100):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket(socket.AF_INET, kind))
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            try:
                for k in range(1, count):
                    held.enter_context(socket.socket(socket.AF_INET, kind)).bind((host, port + k))
            except OSError:  # taken (or past 65535): try another
                continue
            return port
    raise OSError(f"no {count} free loopback ports in a row")


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str] | None:
    """(status, body) of GET ``url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (OSError, ValueError):
        return None


def wait_for(
    condition: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy; MeshError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MeshError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def segments_of(pid: int) -> list[str]:
    """The shared-memory segments of the supervisor ``pid``."""
    return sorted(p.name for p in SHM_DIR.glob(f"voxmesh-{pid}-*"))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class MeshProcess:
    """A running ``voxmesh up`` (see the module docstring); ``env`` adds to (or overrides)
    this process's environment, ``args`` go after ``up --port P [--tts T]``."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        tts: str | None = "mock",
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self._own_workdir = workdir is None  # a temp dir of ours: stop() removes it
        self.workdir = Path(tempfile.mkdtemp(prefix="vxm-")) if workdir is None else workdir
        self.tts = tts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.run_dir = _short_dir(self.workdir / "run")
        self.state_dir = self.workdir / "xdg"
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_path = self.workdir / f"mesh-{self.port}.log"
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.state_dir),
            "VOXMESH_MESH_RUN_DIR": str(self.run_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "voxmesh", "up", "--port", str(self.port)]
        cmd += ["--tts", tts] if tts else []
        self.seen_actor_pids: set[int] = set()
        self.returncode: int | None = None
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, *args],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    # --- where it is, what it says -------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def state_file(self) -> Path:
        """Where it says it runs (``statefile.py``, under the child's XDG_RUNTIME_DIR)."""
        return self.state_dir / "voxmesh" / f"{self.port}.json"

    @property
    def status_endpoint(self) -> str:
        return f"ipc://{self.run_dir}/supervisor.sock"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def healthy(self) -> bool:
        got = http_get(self.url + "health")
        return got is not None and got[0] == 200

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> float:
        """Wait for GET /health == 200; the seconds it took. MeshError (with the log's
        tail) if it exits first or is not healthy in time."""
        t0 = time.monotonic()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise MeshError(
                    f"voxmesh up exited with {self.proc.returncode} before it was healthy:\n"
                    f"{self.log_tail(5)}"
                )
            return self.healthy()

        wait_for(ready, timeout_s, f"GET {self.url}health == 200")
        return time.monotonic() - t0

    def status(self, timeout_s: float = 3.0) -> Status:
        """The supervisor's STATUS; StatusUnavailable if it does not answer."""
        return query(self.status_endpoint, timeout_s=timeout_s)

    def actor_pids(self) -> dict[str, int | None]:
        """name -> pid of every actor (None while one is down)."""
        pids = {str(a["name"]): a.get("pid") for a in self.status().actors}
        self.seen_actor_pids.update(p for p in pids.values() if p)
        return pids

    # --- stopping ----------------------------------------------------------------------------

    def interrupt(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Ctrl-C (SIGINT to the group); the exit code, or None if it did not exit in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
        return self._wait(timeout_s)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM to the supervisor alone (as ``kill PID`` or systemd would); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self._wait(timeout_s)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._wait(5.0)

    def leftovers(self) -> list[str]:
        """What a stopped mesh left behind (empty when clean)."""
        problems = []
        if self.proc.poll() is None:
            problems.append(f"supervisor {self.pid} still running")
        alive = self._running_pids()
        if alive:
            problems.append(f"processes left: {sorted(alive)}")
        if segments_of(self.pid):
            problems.append(f"segments left: {segments_of(self.pid)}")
        if self.run_dir.exists():
            problems.append(f"run dir left: {self.run_dir}")
        if self.state_file.exists():
            problems.append(f"state file left: {self.state_file}")
        return problems

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop however necessary and clean up; returns what had been left behind."""
        with contextlib.suppress(StatusUnavailable, OSError):
            if self.proc.poll() is None:
                self.actor_pids()  # remember the pids, to see them gone
        self.interrupt(timeout_s)
        # Actors exit by themselves (PDEATHSIG) when the supervisor dies; give them the time.
        # (Files and segments are final once the supervisor has exited.)
        with contextlib.suppress(MeshError):
            wait_for(self._all_exited, timeout_s, "every process to exit", 0.1)
        problems = self.leftovers()
        if problems:
            self._remove_leftovers()
        if self.run_dir.parent != self.workdir:  # the short temp dir made by _short_dir
            with contextlib.suppress(OSError):
                self.run_dir.parent.rmdir()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problems

    def _wait(self, timeout_s: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)
        self.returncode = self.proc.poll()
        return self.returncode

    def _running_pids(self) -> list[int]:
        alive = group_members(self.pid)
        return alive + [p for p in self.seen_actor_pids if pid_running(p) and p not in alive]

    def _all_exited(self) -> bool:
        return self.proc.poll() is not None and not self._running_pids()

    def _remove_leftovers(self) -> None:
        self.kill_group()
        for pid in self.seen_actor_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in segments_of(self.pid):
            with contextlib.suppress(FileNotFoundError):
                (SHM_DIR / name).unlink()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.state_file.unlink()


def _short_dir(preferred: Path) -> Path:
    """``preferred`` unless its ipc socket paths would be too long (then a short temp dir)."""
    if len(str(preferred / "supervisor.sock")) <= IPC_PATH_MAX:
        return preferred
    return Path(tempfile.mkdtemp(prefix="vxm-")) / "run"


class WorkerProcess:
    """``voxmesh worker KIND`` (tts by default) as if on another host: in a mount namespace
    with its own empty /dev/shm (no ring segment of this host is visible to it), optionally
    inside the network namespace ``netns`` (``ip netns``). Its own session, so ``kill()``
    takes every process of it at once, as a host going away would; ``kill()`` always reaps."""

    def __init__(
        self,
        workdir: Path,
        *,
        connect: str,
        key: Path,
        server_key: Path,
        name: str,
        engine: str = "mock",
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
        kind: str = "tts",
    ) -> None:
        self.name = name
        self.log_path = workdir / f"worker-{name}.log"
        argv = [sys.executable, "-m", "voxmesh", "worker", kind, "--connect", connect]
        argv += ["--key", str(key), "--server-key", str(server_key), "--name", name]
        if kind == "tts":
            argv += ["--engine", engine]
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.append("--map-root-user")  # an unprivileged user namespace allows the mount
        script = 'mount -t tmpfs tmpfs /dev/shm && exec "$@"'
        cmd = [*unshare, "--", "sh", "-c", script, "sh", *argv]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
