"""What the command modules share: ``CliError``, the ``--config``/``--port`` options, the
config those select (``load_config``), the mesh running on that port (``running_mesh``) and
``output_file``, the check on a file to write (made before any work starts).

Light on purpose (click and the standard library): ``voxmesh --help`` imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from voxmesh.mesh.settings import Settings

FC = TypeVar("FC", bound=Callable[..., Any])


class CliError(Exception):
    """A user-facing error: printed as ``voxmesh: error: ...``, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class MeshOptions:
    """``--config`` and ``--port``: which config, and so which mesh, a command means."""

    config: str | None = None
    port: int | None = None


def mesh_options(f: FC) -> FC:
    """The ``--config FILE`` and ``--port N`` options (parameters ``config`` and ``port``)."""
    f = click.option(
        "--port", type=int, metavar="N", help="HTTP/WebSocket port (default: server.port, 8080)"
    )(f)
    return click.option(
        "--config", metavar="FILE", help="a TOML file overriding the built-in mesh.toml"
    )(f)


def load_config(options: MeshOptions, **overrides: dict[str, Any]) -> Settings:
    """defaults < --config < VOXMESH_* env < flags (``--port`` and ``overrides``)."""
    from voxmesh.supervisor import config

    layers: dict[str, dict[str, Any]] = {k: dict(v) for k, v in overrides.items() if v}
    if options.port is not None:
        layers.setdefault("server", {})["port"] = options.port
    try:
        return config.load(options.config, overrides=layers)
    except config.ConfigError as exc:
        raise CliError(str(exc), code=2) from None


def running_mesh(options: MeshOptions) -> dict[str, Any]:
    """The state file of the mesh on the configured port; CliError if none is running."""
    from voxmesh.supervisor import statefile

    port = load_config(options).server.port
    state: dict[str, Any] | None = statefile.read(port)
    if state is None:
        raise CliError(
            f"no voxmesh is running on port {port} "
            f"(no live state file at {statefile.state_path(port)}); start one with 'voxmesh up'"
        )
    return state


def wav_output(fn: FC) -> FC:
    """The ``-o/--output OUT.wav`` option of a command that records audio."""
    return click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(path_type=Path),
        callback=output_file,
        metavar="OUT.wav",
        help="WAV file to write",
    )(fn)


def output_file(_ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """The callback of an option naming a file the command will write: its directory must
    exist and be writable and it must not be a directory, so that a typo fails at once,
    while the command line is parsed, before any work (exit 2 like every usage error)."""
    if value is None:
        return None
    parent = value.parent
    if value.is_dir():
        raise click.BadParameter(f"cannot write {value}: it is a directory", param=param)
    if not parent.is_dir():
        raise click.BadParameter(
            f"cannot write {value}: there is no directory {parent}", param=param
        )
    writable = os.access(value, os.W_OK) if value.exists() else os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        raise click.BadParameter(f"cannot write {value}: permission denied", param=param)
    return value
