"""The ``voxmesh`` command line (also ``python -m voxmesh``), built on click.

One module per command, named in ``COMMANDS`` (name -> (``module:attribute`` of its
``click.Command``, one-line help for ``voxmesh --help``)): ``up``, ``status``, ``say``,
``talk``, ``console``, ``models``, ``bench``, ``keys``, ``worker``. A command's module is
imported only when that command runs (or shows its own ``--help``); keep its top-level
imports light anyway (click and the standard library): numpy, the mesh and the models are
imported inside the command functions. To add a command, write its module and add one line
to ``COMMANDS``.
``common`` holds what the modules share: ``CliError``, ``--config``/``--port``
(``mesh_options``), ``load_config``, ``running_mesh`` and ``output_file``.

``main(argv)`` returns the exit code. A user's mistake is one line ``voxmesh: error: ...`` on
stderr, never a traceback: exit 2 for a bad command line (unknown flag, bad value, missing
argument, unwritable ``-o`` path) and for config errors, 1 (or what the ``CliError`` says) for
what goes wrong while a command runs, such as no mesh running.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from .common import CliError, MeshOptions, load_config, running_mesh

__all__ = [
    "COMMANDS",
    "CliError",
    "MeshOptions",
    "load_config",
    "main",
    "run_command",
    "running_mesh",
    "version",
]

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("voxmesh.cli.up:up", "start the whole mesh and serve until Ctrl-C"),
    "status": ("voxmesh.cli.status:status", "show the actors of the running mesh"),
    "say": ("voxmesh.cli.say:say", "speak TEXT through the running mesh into a WAV file"),
    "talk": ("voxmesh.cli.talk:talk", "send a WAV file as the microphone, record the reply"),
    "console": (
        "voxmesh.cli.console:console",
        "talk with the mesh through this machine's microphone and speaker",
    ),
    "models": ("voxmesh.cli.models:models", "list, load and unload the TTS actors' voices"),
    "bench": ("voxmesh.cli.bench:bench", "run the benchmarks (latency, jitter, scale)"),
    "keys": ("voxmesh.cli.keys:keys", "make a CURVE key pair for a mesh or a worker"),
    "worker": ("voxmesh.cli.worker:worker", "run one actor here for a mesh on another host"),
}

USAGE_ERROR = 2


def version() -> str:
    """The installed distribution's version, else the checkout's ``pyproject.toml``'s."""
    from importlib import metadata

    try:
        return metadata.version("voxmesh")
    except metadata.PackageNotFoundError:
        pass
    import tomllib

    try:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        from voxmesh import __version__

        return str(__version__)


class LazyGroup(click.Group):
    """A group whose commands are imported from ``module:attribute`` when one runs; its
    ``--help`` lists them with their one-line help from the registry, importing none."""

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        eager = [name for name in super().list_commands(ctx) if name not in self.lazy_commands]
        return [*self.lazy_commands, *eager]  # the registry's order first

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        target = self.lazy_commands[cmd_name][0]
        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands:
                rows.append((name, self.lazy_commands[name][1]))
            elif not self.commands[name].hidden:
                rows.append((name, self.commands[name].get_short_help_str()))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # output piped into e.g. head, which has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"voxmesh {version()}")
        ctx.exit(0)


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    no_args_is_help=False,
    epilog="Config precedence: built-in mesh.toml < --config FILE < "
    "VOXMESH_<SECTION>_<KEY> environment variables < flags.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print 'voxmesh VERSION' and exit.",
)
def voxmesh() -> None:
    """Realtime full-duplex voice chat on a ZeroMQ + shared-memory mesh."""


def _one_line(exc: click.UsageError) -> str:
    """click's message as one line, with where to look for help."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    if exc.ctx is not None and type(exc) is not click.BadParameter:  # a bad value says enough
        message += f" (see '{exc.ctx.command_path} --help')"
    return message


def run_command(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click command as ``prog_name ARGV``; the exit code, errors as one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args, prog_name=prog_name, standalone_mode=False)
    except click.UsageError as exc:
        print(f"voxmesh: error: {_one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except click.ClickException as exc:
        print(f"voxmesh: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except CliError as exc:
        print(f"voxmesh: error: {exc}", file=sys.stderr)
        return exc.code
    except click.Abort:  # Ctrl-C outside `voxmesh up` (which handles SIGINT itself)
        return 130
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``voxmesh ARGV``; the exit code."""
    return run_command(voxmesh, argv, prog_name="voxmesh")
