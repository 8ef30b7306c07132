"""A voxmesh TTS actor hosted inside a program of your own (docs/protocol.md section 5).

The program owns the process: its own ``zmq.Context``, its own asyncio loop, its own work
(here a ticker that prints what the actor is doing), its own Ctrl-C. voxmesh's ``TtsActor``
is one more task in that loop: it joins a running mesh over tcp with CURVE as a remote TTS
worker, the way ``voxmesh worker tts`` does, but without a process of its own.

    voxmesh keys keys/ --name embedded           # then copy keys/embedded.key into the
                                                 # mesh's remote.allowed directory
    python examples/embed_tts.py --connect tcp://MESH-HOST:7000 \\
        --key keys/embedded.key_secret --server-key server.key [--engine espeak]

Ctrl-C (or SIGTERM) stops the actor cleanly (a GOODBYE to the router, its sockets closed),
then the program's own task, then the context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from typing import get_args

import zmq

from voxmesh.actors.tts.actor import TtsActor
from voxmesh.mesh import curve
from voxmesh.mesh.settings import EngineName, TtsSettings
from voxmesh.mesh.spec import MeshPlace, data_endpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connect", required=True, help="the mesh's remote.listen, tcp://HOST:PORT")
    p.add_argument("--data", default="", help="the audio bridge (default: connect's port + 1)")
    p.add_argument("--key", required=True, help="this program's NAME.key_secret")
    p.add_argument("--server-key", required=True, help="the mesh's server.key")
    p.add_argument("--name", default=f"embedded@{socket.gethostname()}", help="actor name")
    p.add_argument("--engine", default="mock", choices=get_args(EngineName), help="TTS engine")
    p.add_argument("--tick-s", type=float, default=1.0, help="the program's own ticker period")
    return p.parse_args(argv)


def make_actor(args: argparse.Namespace, context: zmq.Context[zmq.Socket[bytes]]) -> TtsActor:
    """The actor's place in the mesh, built by hand (supervisor/worker.py does the same)."""
    keys = curve.client_keys(args.key, args.server_key)  # a bad key file fails here, loudly
    place = MeshPlace(
        router=args.connect,
        curve_server=keys.server_public,
        curve_public=keys.public,
        curve_secret=keys.secret,
        data=data_endpoint(args.connect, args.data),  # frames go to the bridge, not a ring
    )
    return TtsActor(args.name, place, TtsSettings(engine=args.engine), context=context)


async def ticker(actor: TtsActor, period_s: float) -> None:
    """The host program's own work: it shares the loop with the actor and never blocks it."""
    n = 0
    while True:
        info = actor.info() if actor.started else {}
        frames = info.get("counters", {}).get("frames", 0)
        print(
            f"tick {n}: {actor.name} sessions={info.get('sessions', 0)} "
            f"load={info.get('load', 0)} frames={frames}",
            flush=True,
        )
        n += 1
        await asyncio.sleep(period_s)


async def main(args: argparse.Namespace) -> int:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()  # ours: the actor only borrows it
    try:
        actor = make_actor(args, context)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, actor.stop)  # the actor winds down in its own loop
        tick = asyncio.create_task(ticker(actor, args.tick_s))
        try:
            await actor.run()  # returns after stop(): GOODBYE sent, sockets closed
        finally:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        print(f"{actor.name}: stopped", flush=True)
        return 0
    except curve.KeyError_ as exc:
        print(f"embed_tts: {exc}", file=sys.stderr)
        return 2
    finally:
        context.term()  # every socket is closed by now (linger 0): this returns at once


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(asyncio.run(main(parse_args())))
