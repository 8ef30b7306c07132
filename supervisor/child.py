"""Actor process bootstrap: ``python -m voxmesh.supervisor.child NAME < spec.json``.

The ActorSpec JSON arrives as the first line of standard input (it may hold API keys and
the mesh secret; argv is public). A warm standby (``spec.standby``) loads its models and
then waits for a second line, ``go``, before it joins the mesh; end of input instead means
it is not needed: it exits 0.

The supervisor starts every actor this way (a fresh interpreter, never a fork). Here we:
die with the supervisor (PR_SET_PDEATHSIG), leave Ctrl-C to the supervisor (the terminal
sends SIGINT to the whole process group; the supervisor decides what stops), turn SIGTERM
into a clean ``actor.stop()``, name the log lines after the actor, build the actor from
``FACTORIES[spec.kind]`` and run it. Exit status: 0 after a clean stop, 1 if it failed,
3 if the supervisor was already gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from voxmesh.mesh import logsetup
from voxmesh.mesh.settings import LogSettings
from voxmesh.mesh.spec import ActorSpec

PR_SET_PDEATHSIG = 1
# kind -> "module:function" building the actor from an ActorSpec
FACTORIES: dict[str, str] = {
    "router": "voxmesh.actors.router.actor:build",
    "transport": "voxmesh.actors.transport.actor:build",
    "vad": "voxmesh.actors.vad:build",
    "asr": "voxmesh.actors.asr:build",
    "tts": "voxmesh.actors.tts.actor:build",
    "bridge": "voxmesh.actors.bridge:build",
    # `voxmesh worker vad|asr`: the same actors on a ring the bridge feeds from another host
    "remote-vad": "voxmesh.actors.remote_readers:build_vad",
    "remote-asr": "voxmesh.actors.remote_readers:build_asr",
}
PARENT_ENV = "VOXMESH_SUPERVISOR_PID"
# JSON {kind: "module:function"} adding to or replacing FACTORIES: actors of your own (the
# tests use it for stand-ins without models, tests/standin.py).
FACTORIES_ENV = "VOXMESH_FACTORIES"
# After SIGTERM, an actor that has not finished stopping by then exits hard.
STOP_GRACE_S = 10.0

log = logging.getLogger("voxmesh.supervisor.child")


def die_with_parent() -> bool:
    """Ask Linux for SIGTERM when the supervisor dies; False if it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    expected = os.environ.get(PARENT_ENV)
    # Checked after prctl: if the parent died before, we were re-parented already.
    return expected is None or os.getppid() == int(expected)


def load_factory(kind: str) -> Callable[[ActorSpec], Any]:
    factories = dict(FACTORIES)
    factories.update(json.loads(os.environ.get(FACTORIES_ENV) or "{}"))
    try:
        target = factories[kind]
    except KeyError:
        raise SystemExit(f"unknown actor kind {kind!r} (known: {', '.join(factories)})") from None
    module_name, _, function = target.partition(":")
    factory: Callable[[ActorSpec], Any] = getattr(importlib.import_module(module_name), function)
    return factory


async def promoted() -> bool:
    """A standby's wait: True once the supervisor writes ``go``, False at end of input."""
    line: str = await asyncio.to_thread(sys.stdin.readline)
    return line.strip() == "go"


async def serve(actor: Any, *, standby: bool = False) -> None:
    """Run the actor until it stops; SIGTERM asks it to stop from the loop's thread."""
    loop = asyncio.get_running_loop()
    # run() sets up its stop event on its first step
    task = asyncio.ensure_future(actor.run(promoted() if standby else None))

    def on_sigterm(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(actor.stop)
        # A stop stuck in a blocking call must still end: the supervisor may be gone.
        timer = threading.Timer(STOP_GRACE_S, os._exit, args=(1,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)
    await task


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != 1:
        print("usage: python -m voxmesh.supervisor.child NAME < spec.json", file=sys.stderr)
        return 2
    spec = ActorSpec.from_json(sys.stdin.readline())
    if spec.name != argv[0]:
        print(f"spec is for {spec.name!r}, not {argv[0]!r}", file=sys.stderr)
        return 2
    os.environ.update(spec.env)
    logs = spec.section(LogSettings)
    logsetup.configure(logs.level, logs.format, logs.file, process=spec.name)
    if not die_with_parent():
        log.error("%s: supervisor already gone; not starting", spec.name)
        return 3
    try:
        actor = load_factory(spec.kind)(spec)
        asyncio.run(serve(actor, standby=spec.standby))
    except Exception:
        log.exception("%s: actor failed", spec.name)
        return 1
    log.info("%s: stopped", spec.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
