"""The supervisor: owns the ring segment and the run dir, starts, watches and restarts actors.

Uvicorn style: signal handlers only enqueue; one loop dispatches everything (signals,
process exits, heartbeats, restarts) so no decision is ever taken inside a handler.

Start: run dir, stale segments removed, ring segment created, the supervisor's hub bound
at ``ipc://<run_dir>/supervisor.sock``, extra services (``services.py``: the ``--livekit``
hook), the router, and once the router is READY every other actor. Each must send READY
within ``mesh.ready_timeout_s``.

Watch: an actor whose process exits, or that stops heartbeating for ``liveness`` intervals
while idle (hung, stopped), is killed (if still there) and restarted after
``restart_backoff_ms`` (doubling per restart within the window); more than ``restart_max``
such restarts of one actor within ``restart_window_s`` and the supervisor gives up: it
stops the mesh and exits 1. An actor that stops heartbeating while it is busy (using CPU,
runnable, or in a disk wait: starved, say by a flood from a bad peer, or by a loaded box) is
not a crash: it gets ``STARVED_GRACE_S`` to answer again, and if it must be restarted after
that the restart does not count towards ``restart_max``, so one bad peer cannot take the
whole mesh down.

Stop (SIGINT/SIGTERM): SHUTDOWN to every actor, SIGTERM to the ones still there after
``shutdown_deadline_s``, SIGKILL a moment later; then the hub closes, the segment is
unlinked and the run dir removed. Exit 0 after a stop asked for by a signal. A second
signal during the stop kills the stragglers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import zmq

from voxmesh.mesh import auth
from voxmesh.mesh.hub import Hub, Peer
from voxmesh.mesh.protocol import (
    Message,
    ModelInfo,
    ModelList,
    ModelLoad,
    ModelUnload,
    PeerGone,
    Shutdown,
    Status,
    StatusRequest,
)
from voxmesh.mesh.ring import Geometry, RingSegment, remove_stale_segments, segment_name
from voxmesh.mesh.settings import Settings

from . import statefile, topology
from .metricsdir import MetricsDir
from .process import ManagedProcess, State
from .services import Service

HOST = socket.gethostname()  # shown beside each local actor (remote ones say their own)
log = logging.getLogger("voxmesh.supervisor")

TICK_S = 0.05
KILL_GRACE_S = 1.5  # after SIGTERM, before SIGKILL
BACKOFF_MAX_S = 30.0  # the doubling restart delay stops growing here
IPC_PATH_MAX = 100  # sun_path holds 108 bytes on Linux; keep a margin for the socket name
CPU_SAMPLE_S = 1.0  # how often each actor's CPU use is sampled (to tell busy from hung)
BUSY_SHARE = 0.2  # an actor silent while using this share of a core is busy, not hung
MAX_MODEL_ASKERS = 16  # `voxmesh models` commands waiting on one TTS actor
STARVED_GRACE_S = 10.0  # a busy, silent actor gets this long to answer before a restart


class SupervisorError(RuntimeError):
    """The mesh cannot start (or must stop); the message is for the user."""


class Supervisor:
    def __init__(
        self, settings: Settings, *, services: Sequence[Service] = (), out: TextIO | None = None
    ) -> None:
        self.settings = settings
        self.mesh = settings.mesh
        self.host = settings.server.host
        self.port = settings.server.port
        self.services = list(services)
        self.out = out or sys.stdout
        self.procs: list[ManagedProcess] = []
        self.exit_code = 0
        self.error: str | None = None
        self._signals: deque[int] = deque()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._announced = False
        self._t0 = time.monotonic()
        self._run_dir: Path | None = None
        self._own_run_dir = False
        self._segment: RingSegment | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._hub: Hub | None = None
        self._metrics: MetricsDir | None = None
        self._started_services: list[Service] = []
        self._state_written = False
        self._secret = auth.new_secret()  # only the actors we start learn it (on stdin)
        self._standby_names = frozenset(self.mesh.standby)
        self._model_askers: dict[str, list[str]] = {}  # TTS actor -> clients awaiting it

    # --- entry point ------------------------------------------------------------------------

    def run(self) -> int:
        """Start the mesh, serve until a signal (or a fatal error), clean up; the exit code."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._enqueue, sig)
        loop.add_signal_handler(signal.SIGCHLD, self._wake.set)  # an exit: look now
        try:
            self._setup()
            await self._serve()
            await self._stop_actors()
        except SupervisorError as exc:
            self._fail(str(exc))
            await self._stop_actors()
        finally:
            self._teardown()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                loop.remove_signal_handler(sig)
        if self.error:
            print(f"voxmesh: error: {self.error}", file=sys.stderr, flush=True)
        else:
            self._say("voxmesh stopped")
        return self.exit_code

    def _enqueue(self, sig: int) -> None:
        self._signals.append(sig)
        if self._wake is not None:
            self._wake.set()

    # --- start --------------------------------------------------------------------------------

    def _setup(self) -> None:
        self._check_port_free()
        self._run_dir = self._make_run_dir()
        for name in remove_stale_segments():
            self._say(f"removed stale ring segment {name} (its supervisor is gone)")
        self._segment = self._create_segment()
        self._context = zmq.Context()
        self._hub = Hub(
            self._context,
            f"ipc://{self._run_dir}/supervisor.sock",
            self._on_message,
            on_ready=self._on_ready,
            on_lost=self._on_lost,
            heartbeat_s=self.mesh.heartbeat_ms / 1000.0,
            liveness=self.mesh.liveness,
            secret=self._secret,
            open_kinds=frozenset({"client"}),
        )
        self._write_state()
        # Hook: extra processes (e.g. livekit-server) start before any actor, so they may
        # still change the config the actors are planned from.
        for service in self.services:
            self._say(f"starting {service.name} ...")
            self._started_services.append(service)
            try:
                self.settings = service.start(self.settings, self._run_dir)
            except Exception as exc:
                raise SupervisorError(f"{service.name} failed to start: {exc}") from exc
        specs = topology.plan(self.settings, self._run_dir, self._segment.name, self._secret)
        self.procs = [ManagedProcess(spec) for spec in specs]
        self._metrics = MetricsDir(self._run_dir)
        self._metrics.open(p.name for p in self.procs)
        self._say(f"loading models: {self.procs[0].name} ...")
        self.procs[0].spawn()

    def _check_port_free(self) -> None:
        running = statefile.read(self.port)
        if running is not None:
            raise SupervisorError(
                f"a mesh is already running on port {self.port} (supervisor pid {running['pid']})"
            )
        if self.port == 0:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise SupervisorError(f"cannot listen on {self.host}:{self.port}: {exc}") from None

    def _make_run_dir(self) -> Path:
        configured = self.mesh.run_dir
        if configured:
            path = Path(configured).expanduser().absolute()
            self._own_run_dir = not path.exists()
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            path = Path(tempfile.mkdtemp(prefix="voxmesh-"))
            self._own_run_dir = True
        if len(str(path / "supervisor.sock")) > IPC_PATH_MAX:
            if self._own_run_dir:
                shutil.rmtree(path, ignore_errors=True)
            raise SupervisorError(
                f"mesh.run_dir {str(path)!r} is too long for ipc sockets "
                f"(at most {IPC_PATH_MAX - 16} characters)"
            )
        return path

    def _create_segment(self) -> RingSegment:
        name = segment_name(os.getpid())
        geometry = Geometry(
            slots=self.mesh.max_sessions,
            mic_capacity=self.mesh.mic_ring_frames,
            out_capacity=self.mesh.out_ring_frames,
        )
        try:
            return RingSegment.create(name, geometry)
        except FileExistsError:
            # Left by an earlier process that had our pid; nobody alive can be using it.
            os.unlink(RingSegment.path(name))
            return RingSegment.create(name, geometry)

    def _write_state(self) -> None:
        assert self._run_dir is not None and self._segment is not None
        statefile.write(
            self.port,
            {
                "pid": os.getpid(),
                "port": self.port,
                "host": self.host,
                "url": self.url,
                "ws_url": self.ws_url,
                "run_dir": str(self._run_dir),
                "endpoint": f"ipc://{self._run_dir}/supervisor.sock",
                "segment": self._segment.name,
                "started": time.time(),
            },
        )
        self._state_written = True

    @property
    def url(self) -> str:
        return f"http://{self._display_host()}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._display_host()}:{self.port}/ws"

    def _display_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    # --- the loop -----------------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._wake is not None and self._hub is not None
        while not self._stopping:
            self._dispatch_signals()
            now = time.monotonic()
            self._hub.tick(now)
            self._check_services()
            self._check_processes(now)
            self._start_after_router()
            self._announce_when_ready(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)

    def _dispatch_signals(self) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if not self._stopping:
                self._say(f"\n{signal.Signals(sig).name}: stopping the mesh ...")
                self._stopping = True
            else:  # a second signal while stopping: do not wait any longer
                self._say(f"{signal.Signals(sig).name} again: killing what is left")
                for proc in self.procs:
                    proc.kill()

    def _check_services(self) -> None:
        for service in self._started_services:
            if not service.alive() and not self._stopping:
                self._fail(f"{service.name} died")

    def _check_processes(self, now: float) -> None:
        timeout = self.mesh.ready_timeout_s
        for proc in self.procs:
            if proc.state in (State.STARTING, State.RUNNING):
                code = proc.poll()
                if code is not None:
                    self._restart(proc, now, f"exited ({_describe_exit(code)})")
                elif proc.state is State.STARTING and now - proc.started_at > timeout:
                    self._restart(proc, now, f"not ready after {timeout:g} s")
                elif proc.starved_since is not None:
                    self._check_starved(proc, now)
                elif proc.cpu_mark is None or now - proc.cpu_mark[0] >= CPU_SAMPLE_S:
                    proc.cpu_rate(now)
            elif proc.state is State.BACKOFF and now >= proc.restart_at:
                proc.spawn()

    def _restart(
        self, proc: ManagedProcess, now: float, reason: str, *, counted: bool = True
    ) -> None:
        """Kill what is left of ``proc`` and schedule its restart (or give up)."""
        gone = proc.pid
        proc.kill()
        self._forget_peer(proc)
        assert self._hub is not None
        if gone is not None and proc.name != topology.ROUTER and topology.ROUTER in self._hub.peers:
            # The router hears of it now, not after three missed heartbeats.
            self._hub.send(topology.ROUTER, PeerGone(name=proc.name, pid=gone))
        if self._stopping:
            proc.state = State.STOPPED
            return
        count = proc.note_restart(now, self.mesh.restart_window_s, counted=counted)
        limit = self.mesh.restart_max
        if counted and count > limit:
            proc.state = State.STOPPED
            self._fail(
                f"{proc.name} {reason}; restarted {count - 1} times within "
                f"{self.mesh.restart_window_s:g} s (restart_max {limit}): giving up"
            )
            return
        if self._metrics is not None:
            self._metrics.restarted(proc.name, gone)
        if proc.promote():  # a warm spare has its models loaded: no backoff, no load time
            log.warning("%s %s: its warm standby takes over", proc.name, reason)
            proc.failed_at = now
            return
        delay = min(self.mesh.restart_backoff_ms / 1000.0 * 2 ** (count - 1), BACKOFF_MAX_S)
        log.warning("%s %s: restarting in %.2f s", proc.name, reason, delay)
        proc.state = State.BACKOFF
        proc.failed_at = now
        proc.restart_at = now + delay

    def _check_starved(self, proc: ManagedProcess, now: float) -> None:
        assert self._hub is not None and proc.starved_since is not None
        peer = self._hub.peers.get(proc.name)
        if peer is not None and peer.pid == proc.pid:  # it answered again
            log.warning("%s is heartbeating again", proc.name)
            proc.starved_since = None
        elif now - proc.starved_since > STARVED_GRACE_S:
            self._restart(proc, now, "busy and silent", counted=False)

    def _forget_peer(self, proc: ManagedProcess) -> None:
        assert self._hub is not None
        peer = self._hub.peers.get(proc.name)
        if peer is not None and peer.pid == proc.pid:  # the process is gone; so is the peer
            self._hub.forget(proc.name)

    def _start_after_router(self) -> None:
        router, rest = self.procs[0], self.procs[1:]
        if router.state is State.RUNNING and all(p.proc is None for p in rest):
            self._say("loading models: " + ", ".join(p.name for p in rest) + " ...")
            for proc in rest:
                proc.spawn()

    def _announce_when_ready(self, now: float) -> None:
        if self._announced or not all(p.state is State.RUNNING for p in self.procs):
            return
        self._announced = True
        # Spares load only now: while the mesh starts they would take its CPU.
        for proc in self.procs:
            if proc.name in self._standby_names:
                proc.spawn_standby()
        self._say(
            f"voxmesh is up in {now - self._t0:.1f} s: open {self.url}  "
            f"(WebSocket {self.ws_url}); Ctrl-C stops it"
        )

    # --- hub callbacks --------------------------------------------------------------------------

    def _managed(self, peer: Peer) -> ManagedProcess | None:
        for proc in self.procs:
            if proc.name == peer.name and proc.pid == peer.pid and proc.spec.kind == peer.kind:
                return proc
        return None

    def _on_ready(self, peer: Peer) -> None:
        proc = self._managed(peer)
        if proc is None or proc.state is not State.STARTING:
            return  # a client (voxmesh status) or a late READY from a replaced process
        proc.state = State.RUNNING
        proc.ready_at = time.monotonic()
        if self._announced and proc.name in self._standby_names:
            proc.spawn_standby()  # the spare for its next failure
        if proc.restarts:
            took = proc.ready_at - proc.failed_at
            self._say(f"restarted: {proc.name} ({took:.2f} s after it failed)")
        else:
            self._say(f"ready: {proc.name} ({proc.ready_at - proc.started_at:.1f} s)")

    def _on_lost(self, peer: Peer) -> None:
        proc = self._managed(peer)
        if proc is None or self._stopping or proc.state is not State.RUNNING:
            return
        if peer.liveness <= 0:  # silent, not a GOODBYE (an exit is seen by poll())
            now = time.monotonic()
            busy, what = proc.busy(now, BUSY_SHARE)
            if busy:
                log.warning(
                    "%s stopped heartbeating while busy (%s): waiting up to %g s",
                    proc.name,
                    what,
                    STARVED_GRACE_S,
                )
                proc.starved_since = now
            else:
                log.warning("%s stopped heartbeating (%s)", proc.name, what)
                self._restart(proc, now, "stopped heartbeating")

    def _on_message(self, peer: Peer, msg: Message) -> None:
        assert self._hub is not None
        if isinstance(msg, StatusRequest):
            self._hub.send(peer.name, self.status())
        elif isinstance(msg, (ModelLoad, ModelUnload, ModelList)) and peer.kind == "client":
            self._relay_model_command(peer, msg)
        elif isinstance(msg, ModelInfo) and peer.kind in ("tts", topology.ROUTER):
            # (the router relays the answers of TTS actors on other hosts)
            askers = self._model_askers.get(
                msg.actor if peer.kind == topology.ROUTER else peer.name
            )
            if askers:  # answers come in the order asked (one command at a time per client)
                self._hub.send(askers.pop(0), msg)

    def _relay_model_command(self, asker: Peer, msg: ModelLoad | ModelUnload | ModelList) -> None:
        """``voxmesh models``: pass the command to the TTS actor it names, or the one it
        fits (load: the least loaded actor of the voice's engine; unload: one that has the
        voice resident); its ModelInfo goes back to the asker."""
        assert self._hub is not None
        tts = [p for p in self._hub.peers.values() if p.kind == "tts"]
        router = self._hub.peers.get(topology.ROUTER)
        remote = {str(r["name"]): r for r in router.info.get("remote", [])} if router else {}
        tts += [
            Peer(name, "tts", int(r.get("pid", 0)), dict(r.get("info") or {}))
            for name, r in remote.items()
            if r.get("kind") == "tts"
        ]
        wanted = getattr(msg, "actor", "")
        model = getattr(msg, "model", "")
        if wanted:
            fits = [p for p in tts if p.name == wanted]
        elif isinstance(msg, ModelUnload):
            fits = [p for p in tts if model in p.info.get("resident", ())]
        else:
            engine = model.partition(":")[0] if ":" in model else ""
            fits = [p for p in tts if not engine or p.info.get("engine") == engine]
        if not fits:
            why = f"no TTS actor named {wanted!r}" if wanted else f"no TTS actor fits {model!r}"
            known = ", ".join(sorted(p.name for p in tts)) or "none up"
            self._hub.send(asker.name, ModelInfo([], [], error=f"{why} (actors: {known})"))
            return
        target = min(fits, key=lambda p: (float(p.info.get("load", 0) or 0), p.name))
        askers = self._model_askers.setdefault(target.name, [])
        if len(askers) < MAX_MODEL_ASKERS:
            askers.append(asker.name)
            if target.name in remote:  # on another host: through the router, which reaches it
                msg = dataclasses.replace(msg, actor=target.name)
                self._hub.send(topology.ROUTER, msg)
            else:
                self._hub.send(target.name, msg)
        else:
            self._hub.send(asker.name, ModelInfo([], [], error=f"{target.name} is busy; retry"))

    def status(self) -> Status:
        assert self._hub is not None
        now = time.monotonic()
        rows = []
        router = self._hub.peers.get(topology.ROUTER)
        serving: dict[str, Any] = dict(router.info.get("health") or {}) if router else {}
        for proc in self.procs:
            peer = self._hub.peers.get(proc.name)
            ours = peer is not None and peer.pid == proc.pid
            row = proc.status(
                now,
                peer.info if ours and peer else None,
                now - peer.last_seen if ours and peer else None,
            )
            # What /health says: the actor as the router sees it (the router: as we see it).
            if proc.name == topology.ROUTER:
                row["serving"] = "up" if ours and proc.state is State.RUNNING else "restarting"
            else:
                row["serving"] = str(serving.get(proc.name, "restarting" if not router else "-"))
            row["host"] = HOST
            rows.append(row)
        # Actors of other hosts (`voxmesh worker`), as the router knows them.
        for peer in router.info.get("remote", []) if router else []:
            rows.append({**peer, "state": "remote", "serving": "up", "restarts": 0})
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "stopping" if self._stopping else "up" if self._announced else "starting",
            "uptime_s": round(now - self._t0, 3),
            "url": self.url,
            "ws_url": self.ws_url,
            "run_dir": str(self._run_dir),
            "segment": self._segment.name if self._segment else "",
            "services": [s.name for s in self._started_services],
        }
        return Status(actors=rows, info=info)

    # --- stop ---------------------------------------------------------------------------------

    async def _stop_actors(self) -> None:
        self._stopping = True
        for proc in self.procs:
            proc.drop_standby()
        deadline_s = self.mesh.shutdown_deadline_s
        for proc in self.procs:
            if not proc.alive():
                proc.state = State.STOPPED
                continue
            proc.state = State.STOPPING
            peer = self._hub.peers.get(proc.name) if self._hub else None
            if self._hub is not None and peer is not None and peer.pid == proc.pid:
                self._hub.send(proc.name, Shutdown(deadline_ms=int(deadline_s * 1000)))
            else:  # still loading (or never connected): it cannot hear SHUTDOWN
                proc.signal(signal.SIGTERM)
        if await self._wait_exit(deadline_s):
            return
        for proc in self._alive():
            log.warning("%s did not stop within %g s: SIGTERM", proc.name, deadline_s)
            proc.signal(signal.SIGTERM)
        if await self._wait_exit(KILL_GRACE_S):
            return
        for proc in self._alive():
            log.warning("%s still there: SIGKILL", proc.name)
            proc.kill()

    async def _wait_exit(self, seconds: float) -> bool:
        """Keep serving the hub and signals until every actor exited; False at the deadline."""
        deadline = time.monotonic() + seconds
        while self._alive() and time.monotonic() < deadline:
            self._dispatch_signals()
            if self._hub is not None:
                self._hub.tick(time.monotonic())
            await asyncio.sleep(TICK_S)
        for proc in self.procs:
            if not proc.alive():
                proc.state = State.STOPPED
        return not self._alive()

    def _alive(self) -> list[ManagedProcess]:
        return [p for p in self.procs if p.alive()]

    def _teardown(self) -> None:
        """Release everything this run took; safe after a partial start."""
        for proc in self._alive():  # only after a failure inside the stop itself
            proc.kill()
        for proc in self.procs:
            proc.drop_standby()
        if self._hub is not None:
            self._hub.close()
            self._hub = None
        if self._context is not None:
            self._context.term()
            self._context = None
        for service in reversed(self._started_services):
            try:
                service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
        if self._segment is not None:
            self._segment.close()
            self._segment.unlink()
            self._segment = None
        if self._metrics is not None:
            self._metrics.close()
        if self._run_dir is not None:
            if self._own_run_dir:
                shutil.rmtree(self._run_dir, ignore_errors=True)
            else:
                for sock in ("supervisor.sock", "router.sock"):
                    with contextlib.suppress(FileNotFoundError):
                        (self._run_dir / sock).unlink()
        if self._state_written:
            statefile.remove(self.port, os.getpid())

    # --- output -------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        """Stop the mesh with an error (the loop sees ``_stopping`` and winds down)."""
        log.error("%s", message)
        if self.error is None:
            self.error = message
        self.exit_code = 1
        self._stopping = True

    def _say(self, line: str) -> None:
        try:
            print(line, file=self.out, flush=True)
        except OSError:  # stdout closed (e.g. piped into head): the mesh keeps running
            pass


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"code {code}"
