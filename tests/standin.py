"""A stand-in actor for testing the supervisor on its own (test use only).

Select it per kind with ``VOXMESH_FACTORIES='{"vad": "standin:build"}'`` and this directory
on ``PYTHONPATH`` (``STANDIN_ENV`` in tests/test_supervisor.py).
It attaches the ring segment, links to the router and the supervisor like a real actor and
heartbeats. As the ``router`` kind it binds the router's hub (and routes nothing); as the
``transport`` kind it serves ``GET /health`` (always 200) on ``server.port``.
``VOXMESH_STANDIN_FAIL=<name>,...`` makes those actors fail at start, and
``VOXMESH_STANDIN_HANG=<name>,...`` makes them hang there (never READY), and
``VOXMESH_STANDIN_BUSY=<name>:<seconds>`` makes that one, once up, hog its loop with CPU
work for that long (a starved actor: alive, busy, silent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.hub import Hub
from voxmesh.mesh.ring import RingSegment
from voxmesh.mesh.settings import ServerSettings
from voxmesh.mesh.spec import ActorSpec

log = logging.getLogger("voxmesh.standin")

FAIL_ENV = "VOXMESH_STANDIN_FAIL"
HANG_ENV = "VOXMESH_STANDIN_HANG"
BUSY_ENV = "VOXMESH_STANDIN_BUSY"


def _named_in(env: str, name: str) -> bool:
    return name in os.environ.get(env, "").split(",")


class StandinActor(Actor):
    def __init__(self, spec: ActorSpec) -> None:
        place = spec.place
        super().__init__(
            spec.name, dataclasses.replace(place, router=None) if spec.kind == "router" else place
        )
        self.spec = spec
        self.kind = spec.kind  # type: ignore[misc]  # per instance: one class, many kinds
        self._segment: RingSegment | None = None
        self._web: Any = None
        self._hub: Hub | None = None

    async def on_start(self) -> None:
        if _named_in(FAIL_ENV, self.name):
            raise RuntimeError(f"{self.name}: failing on purpose ({FAIL_ENV})")
        if _named_in(HANG_ENV, self.name):
            # Said once the SIGTERM handler is in place: a test that wants the hang to
            # outlive a SIGTERM waits for this line (before it, SIGTERM just kills).
            log.info("%s: hanging in start-up (%s)", self.name, HANG_ENV)
            await asyncio.Event().wait()  # a model load that never finishes
        self._segment = RingSegment.attach(self.spec.place.segment)
        if self.spec.kind == "router":
            self._hub = Hub(
                self.context,
                self.spec.place.router or "",
                lambda peer, msg: None,
                secret=self.spec.place.secret,
            )
            self.every(self.heartbeat_s / 2, self._hub.tick)
        if self.spec.kind == "transport":
            from aiohttp import web

            async def health(request: web.Request) -> web.Response:
                return web.json_response({"ready": True})

            app = web.Application()
            app.router.add_get("/health", health)
            runner = web.AppRunner(app)
            await runner.setup()
            server = self.spec.section(ServerSettings)
            await web.TCPSite(runner, server.host, server.port).start()
            self._web = runner

        name, _, seconds = os.environ.get(BUSY_ENV, "").partition(":")
        if name == self.name:
            asyncio.get_running_loop().call_later(1.0, _spin, float(seconds))

    async def on_stop(self) -> None:
        if self._hub is not None:
            self._hub.close()
        if self._web is not None:
            await self._web.cleanup()
        if self._segment is not None:
            self._segment.close()

    def info(self) -> dict[str, Any]:
        return {"sessions": 0, "standin": True}


def _spin(seconds: float) -> None:
    """Burn CPU on the loop's thread: no heartbeat goes out meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def build(spec: ActorSpec) -> StandinActor:
    return StandinActor(spec)
