"""Start a whole mesh (``python -m voxmesh up``) for a test, and make sure it leaves nothing.

    with mesh_up(tmp_path, tts="mock") as mesh:
        mesh.url, mesh.ws_url, mesh.port, mesh.pid, mesh.actor_pids(), mesh.log_text()

The mesh runs in its own session (process group) on a free port, with a private run dir and
a private state dir (``XDG_RUNTIME_DIR``) under ``tmp_path``; its output goes to a log file
that is printed when something fails. ``mesh_up`` waits for ``GET /health`` == 200. On exit
it sends SIGINT (as Ctrl-C would), waits 10 s, SIGKILLs the process group, and asserts that
nothing is left: no process of the group, no ``/dev/shm/voxmesh-<pid>-*`` segment, no run dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
SHM_DIR = Path("/dev/shm")
HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

# Every supervisor pid a test started, so conftest can attribute leftovers to the tests.
STARTED_PIDS: set[int] = set()


class MeshError(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; MeshError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MeshError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def toml_text(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML file for the flat sections a mesh config has."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(v)}" for key, v in values.items())
        lines.append("")
    return "\n".join(lines)


def segments_of(pid: int) -> list[str]:
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


class MeshProc:
    """A running ``voxmesh up`` (see the module docstring)."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        tts: str = "mock",
        extra_env: Mapping[str, str] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.run_dir = _short_dir(tmp_path / "run")
        self.state_dir = tmp_path / "xdg"
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_path = tmp_path / f"mesh-{self.port}.log"
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.state_dir),
            "VOXMESH_MESH_RUN_DIR": str(self.run_dir),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        cmd = [sys.executable, "-m", "voxmesh", "up", "--port", str(self.port), "--tts", tts]
        if config:
            config_path = tmp_path / "mesh-test.toml"
            config_path.write_text(toml_text(config))
            cmd += ["--config", str(config_path)]
        cmd += args or []
        self.seen_actor_pids: set[int] = set()
        self.returncode: int | None = None
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        STARTED_PIDS.add(self.proc.pid)

    # --- what a test uses ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self) -> bool:
        return http_status(self.url + "health") == 200

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> float:
        """Wait for GET /health == 200; the seconds it took."""
        t0 = time.monotonic()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise MeshError(f"voxmesh up exited with {self.proc.returncode} before healthy")
            return self.healthy()

        wait_for(ready, timeout_s, f"GET {self.url}health == 200", interval_s=0.05)
        return time.monotonic() - t0

    def status(self, timeout_s: float = 3.0) -> dict[str, Any]:
        """The supervisor's STATUS as {"actors": [...], "info": {...}}."""
        from voxmesh.supervisor.status import query

        endpoint = f"ipc://{self.run_dir}/supervisor.sock"
        status = query(endpoint, timeout_s=timeout_s)
        return {"actors": status.actors, "info": status.info}

    def actor_pids(self) -> dict[str, int | None]:
        """name -> pid of every actor (None while one is down)."""
        pids = {a["name"]: a.get("pid") for a in self.status()["actors"]}
        self.seen_actor_pids.update(p for p in pids.values() if p)
        return pids

    def cli(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m voxmesh ARGS`` against this mesh (same state dir and port)."""
        return subprocess.run(
            [sys.executable, "-m", "voxmesh", *args],
            env=self.env,
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    # --- stopping -----------------------------------------------------------------------------

    def interrupt(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Ctrl-C (SIGINT to the group); the exit code, or None if it did not exit in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
        self.returncode = self.proc.poll()
        return self.returncode

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM to the supervisor alone (as ``kill PID`` or systemd would); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
        self.returncode = self.proc.poll()
        return self.returncode

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def _all_exited(self) -> bool:
        return self.proc.poll() is not None and not self._running_pids()

    def _running_pids(self) -> list[int]:
        alive = group_members(self.pid)
        return alive + [p for p in self.seen_actor_pids if pid_running(p) and p not in alive]

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
        state = self.state_dir / "voxmesh" / f"{self.port}.json"
        if state.exists():
            problems.append(f"state file left: {state}")
        return problems

    def shutdown(self) -> list[str]:
        """Stop however necessary and clean up; returns what had been left behind."""
        with contextlib.suppress(MeshError, OSError):
            if self.proc.poll() is None:
                self.actor_pids()  # remember the pids to check they are gone
        self.interrupt()
        # Actors exit by themselves (PDEATHSIG) when the supervisor dies; give them the time.
        # (Files and segments are final once the supervisor has exited.)
        with contextlib.suppress(MeshError):
            wait_for(self._all_exited, STOP_TIMEOUT_S, "every process to exit", 0.1)
        problems = self.leftovers()
        if self.run_dir.parent != self.tmp_path:  # the short temp dir made by _short_dir
            with contextlib.suppress(OSError):
                self.run_dir.parent.rmdir()
        if problems:
            self.kill_group()
            for pid in self.seen_actor_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for name in segments_of(self.pid):
                with contextlib.suppress(FileNotFoundError):
                    (SHM_DIR / name).unlink()
        return problems


@contextlib.contextmanager
def mesh_up(
    tmp_path: Path,
    *,
    tts: str = "mock",
    extra_env: Mapping[str, str] | None = None,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    args: list[str] | None = None,
) -> Iterator[MeshProc]:
    """A healthy mesh for the ``with`` body; asserts it stops leaving nothing behind."""
    mesh = MeshProc(tmp_path, tts=tts, extra_env=extra_env, config=config, args=args)
    failed = True
    try:
        mesh.wait_healthy()
        yield mesh
        failed = False
    finally:
        problems = mesh.shutdown()
        if failed or problems:
            sys.stderr.write(f"\n----- voxmesh up log ({mesh.log_path}) -----\n{mesh.log_text()}\n")
        if problems and not failed:
            raise MeshError("the mesh left things behind: " + "; ".join(problems))


def _short_dir(preferred: Path) -> Path:
    """``preferred`` unless its ipc socket paths would be too long (then a short temp dir)."""
    if len(str(preferred / "supervisor.sock")) <= 100:
        return preferred
    return Path(tempfile.mkdtemp(prefix="vxm-")) / "run"
