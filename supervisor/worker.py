"""``voxmesh worker KIND``: one actor on another host, joined to a mesh over tcp with CURVE.

A small supervisor of its own: it builds the actor's spec (the mesh's tcp endpoint, the
worker's CURVE keys, its engine and device), starts it as a fresh interpreter
(supervisor/process.py, as ``voxmesh up`` does), and restarts it with a doubling backoff
when it exits, until ``worker.restart_max`` restarts fall within ``restart_window_s``.
SIGINT/SIGTERM only enqueue a stop (the handlers set an event); the loop sends the actor
SIGTERM, waits ``STOP_GRACE_S`` and kills it.

Audio crosses hosts through the session host's bridge (actors/bridge.py, docs/protocol.md
section 5): a TTS sends its frames there; a VAD or ASR (actors/remote_readers.py) reads a
ring of its own in this host's /dev/shm that the bridge's mic frames fill. That ring is
named after the actor's pid, so one left behind by an actor that was killed is removed
before the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import time

from voxmesh.mesh import curve
from voxmesh.mesh.ring import remove_stale_segments
from voxmesh.mesh.settings import Settings, sections_for, to_dict
from voxmesh.mesh.spec import ActorSpec, MeshPlace, data_endpoint

from .process import ManagedProcess

log = logging.getLogger("voxmesh.worker")

KINDS = ("tts", "asr", "vad")
MIC_READERS = ("asr", "vad")  # started as the remote-* factories (supervisor/child.py)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0
STOP_GRACE_S = 10.0


class WorkerError(RuntimeError):
    """A worker that cannot start (bad keys, no endpoint); the message says what to do."""


def worker_spec(kind: str, settings: Settings) -> ActorSpec:
    """The spec of the one actor a worker runs (its keys read now: a bad file fails here)."""
    if kind not in KINDS:
        raise WorkerError(f"a {kind} worker is not supported yet (only {', '.join(KINDS)})")
    w = settings.worker
    if not w.connect:
        raise WorkerError("worker.connect is empty: give --connect tcp://HOST:PORT")
    try:
        keys = curve.client_keys(w.key, w.server_key)
    except curve.KeyError_ as exc:
        raise WorkerError(str(exc)) from None
    place = MeshPlace(
        router=w.connect,
        heartbeat_s=settings.mesh.heartbeat_ms / 1000.0,
        liveness=settings.mesh.liveness,
        hold_s=settings.mesh.hold_s,
        curve_server=keys.server_public,
        curve_public=keys.public,
        curve_secret=keys.secret,
        data=data_endpoint(w.connect, w.data),
    )
    sections = sections_for(settings, kind)
    env: dict[str, str] = {}
    factory = kind
    if kind == "tts":  # one engine on one device, as one [[tts.actors]] table
        own = settings.tts.own()
        sections["tts"] = to_dict(dataclasses.replace(settings.tts, actors=(own,)))
        env["CUDA_VISIBLE_DEVICES"] = "" if own.device == "cpu" else own.device
    elif kind in MIC_READERS:  # its own ring: as many slots as sessions it may read
        sections["mesh"] = to_dict(settings.mesh)
        factory = f"remote-{kind}"
    name = w.name or f"{kind}@{socket.gethostname()}"
    return ActorSpec(kind=factory, name=name, place=place, settings=sections, env=env)


class Worker:
    def __init__(self, spec: ActorSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings.worker
        self.proc = ManagedProcess(spec)
        self._stop = asyncio.Event()
        self._exited = asyncio.Event()

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGCHLD, self._exited.set)
        backoff = BACKOFF_FIRST_S
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                remove_stale_segments()  # a killed reader's private mic ring
                self.proc.spawn()
                log.info(
                    "worker: %s (pid %s) joining %s",
                    self.spec.name,
                    self.proc.pid,
                    self.spec.place.router,
                )
                code = await self._wait_exit()
                if code is None:  # asked to stop
                    break
                now = time.monotonic()
                if now - started > BACKOFF_MAX_S * 2:
                    backoff = BACKOFF_FIRST_S  # it ran a good while: a fresh failure
                recent = self.proc.note_restart(now, self.settings.restart_window_s)
                if recent > self.settings.restart_max:
                    log.error(
                        "worker: %s failed %d times in %g s (last exit %d): giving up",
                        self.spec.name,
                        recent,
                        self.settings.restart_window_s,
                        code,
                    )
                    return 1
                log.warning(
                    "worker: %s exited (%d); restarting in %.1f s", self.spec.name, code, backoff
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            await self._stop_actor()
            remove_stale_segments()
        return 0

    async def _wait_exit(self) -> int | None:
        """The actor's exit status, or None once a stop was asked for."""
        while True:
            code = self.proc.poll()
            if code is not None:
                return code
            if self._stop.is_set():
                return None
            self._exited.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (self._exited, self._stop)]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    async def _stop_actor(self) -> None:
        if not self.proc.alive():
            return
        self.proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._exited.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), deadline - time.monotonic())
        if self.proc.alive():
            log.warning("worker: %s did not stop in %g s: killed", self.spec.name, STOP_GRACE_S)
            self.proc.kill()


def run_worker(kind: str, settings: Settings) -> int:
    return Worker(worker_spec(kind, settings), settings).run()
