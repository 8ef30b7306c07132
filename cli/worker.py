"""``voxmesh worker KIND --connect tcp://HOST:PORT``: run one actor here for a mesh elsewhere.

The mesh runs ``voxmesh up --listen tcp://HOST:PORT`` with ``remote.key`` (its key pair) and
``remote.allowed`` (a directory holding this worker's public key). This host needs its own
key pair (``--key``, the ``.key_secret`` file) and the mesh's public key (``--server-key``).
The actor restarts when it exits (supervisor/worker.py) and shows in ``voxmesh status``.
A VAD or ASR here reads the session host's microphones through its bridge; the session
host may then run none of its own (``remote.only``).
"""

from __future__ import annotations

import click

from .common import CliError, MeshOptions, load_config


@click.command(
    "worker",
    help="run one actor (tts, asr or vad) on this host for the mesh at --connect, over tcp "
    "with CURVE; restart it when it exits; stop on Ctrl-C",
)
@click.argument("kind", type=click.Choice(["tts", "asr", "vad"]))
@click.option("--connect", metavar="tcp://HOST:PORT", help="the mesh's remote.listen")
@click.option("--key", metavar="FILE", help="this worker's secret key file (worker.key)")
@click.option("--server-key", metavar="FILE", help="the mesh's public key file")
@click.option("--name", help="the actor's name on the mesh (default: KIND@HOSTNAME)")
@click.option("--engine", help="TTS engine (tts.engine; tts only)")
@click.option("--device", help='"cpu" or a GPU index (tts.device; tts only)')
@click.option(
    "--config", metavar="FILE", help="a mesh.toml with [worker] and [tts], [asr] or [vad]"
)
def worker(
    kind: str,
    connect: str | None,
    key: str | None,
    server_key: str | None,
    name: str | None,
    engine: str | None,
    device: str | None,
    config: str | None,
) -> int:
    from voxmesh.mesh import logsetup
    from voxmesh.supervisor.worker import WorkerError, run_worker

    flags = {"connect": connect, "key": key, "server_key": server_key, "name": name}
    tts = {"engine": engine, "device": device}
    settings = load_config(
        MeshOptions(config=config, port=None),
        worker={k: v for k, v in flags.items() if v is not None},
        tts={k: v for k, v in tts.items() if v is not None},
    )
    logsetup.configure(settings.log.level, settings.log.format, settings.log.file, process="worker")
    try:
        return run_worker(kind, settings)
    except WorkerError as exc:
        raise CliError(str(exc), code=2) from None
