"""``voxmesh up``: start the whole mesh and serve until Ctrl-C (and ``up_config``, the config
it runs with, refused before anything binds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import click

from voxmesh.mesh.settings import EngineName

from .common import CliError, MeshOptions, load_config, mesh_options

if TYPE_CHECKING:
    from voxmesh.mesh.settings import Settings

TTS_ENGINES = get_args(EngineName)  # mesh/settings.py: the one list


@dataclass(frozen=True, kw_only=True)
class UpOptions(MeshOptions):
    tts: str | None = None
    livekit: bool = False
    allow_unauthenticated: bool = False
    listen: str | None = None


@click.command(
    "up",
    help="Start the supervisor and every actor (router, transport, vad, asr, one TTS actor per "
    "GPU or one on the CPU), print where to connect, and serve until SIGINT/SIGTERM; then stop "
    "everything and clean up (exit code 0).",
)
@mesh_options
@click.option(
    "--tts", type=click.Choice(TTS_ENGINES), help="TTS engine (default: tts.engine, piper)"
)
@click.option(
    "--livekit",
    is_flag=True,
    help="also serve LiveKit clients, starting livekit-server unless livekit.url is set",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="serve a non-loopback server.host without server.auth_token "
    "(server.allow_unauthenticated)",
)
@click.option(
    "--listen",
    metavar="tcp://HOST:PORT",
    help="also take actors of other hosts there, CURVE-authenticated (remote.listen; needs "
    "remote.key and remote.allowed: see `voxmesh keys`)",
)
def up(
    config: str | None,
    port: int | None,
    tts: str | None,
    livekit: bool,
    allow_unauthenticated: bool,
    listen: str | None,
) -> int:
    options = UpOptions(
        config=config,
        port=port,
        tts=tts,
        livekit=livekit,
        allow_unauthenticated=allow_unauthenticated,
        listen=listen,
    )
    return run_up(options)


def parse_up(argv: Sequence[str]) -> UpOptions:
    """The options ``voxmesh up ARGV`` would run with (parsed by click, nothing started)."""
    with up.make_context("voxmesh up", list(argv)) as ctx:
        return UpOptions(**ctx.params)


def up_config(options: UpOptions) -> Settings:
    """The config ``voxmesh up`` runs with, checked before anything binds (CliError, 2)."""
    from voxmesh.supervisor.config import ConfigError, check_exposure, check_remote

    config = load_config(
        options,
        tts={"engine": options.tts} if options.tts else {},
        server={"allow_unauthenticated": True} if options.allow_unauthenticated else {},
        remote={"listen": options.listen} if options.listen else {},
    )
    try:
        check_exposure(config)
        check_remote(config)
    except ConfigError as exc:
        raise CliError(str(exc), code=2) from None
    return config


def run_up(options: UpOptions) -> int:
    from voxmesh.mesh import logsetup
    from voxmesh.supervisor.services import ServiceUnavailable, load_service
    from voxmesh.supervisor.supervisor import Supervisor

    config = up_config(options)
    logsetup.configure(config.log.level, config.log.format, config.log.file, process="supervisor")
    services = []
    if options.livekit:
        try:
            services.append(load_service("livekit", config))
        except ServiceUnavailable as exc:
            raise CliError(f"--livekit: {exc}", code=2) from None
    code: int = Supervisor(config, services=services).run()
    return code
