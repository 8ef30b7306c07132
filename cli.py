"""The ``voxmesh`` command line (also ``python -m voxmesh``).

``up`` and ``status`` live here. Every other subcommand lives in its own module, named in
``COMMANDS`` (name -> (module, one-line help)); the module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...   # the exit code

and is imported only when its subcommand runs (keep its top-level imports light anyway).
To add a command, add one line to ``COMMANDS``. Helpers for those modules:
``add_config_arguments`` (``--config``/``--port``), ``load_config`` and ``running_mesh``
(the state of the mesh on that port, or a clear error).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "say": ("voxmesh.cli_say", "speak TEXT through the running mesh into a WAV file"),
    "talk": ("voxmesh.cli_talk", "send a WAV file as the microphone, record the reply"),
    "bench": ("voxmesh.bench.cli", "run the benchmarks (latency, jitter, scale)"),
    "models": ("voxmesh.cli_models", "list, load and unload TTS models"),
}

TTS_ENGINES = ("mock", "piper", "espeak")


class CliError(Exception):
    """A user-facing error: printed as ``voxmesh: error: ...``, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- helpers shared with the command modules ---------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="a TOML file overriding the built-in mesh.toml"
    )
    parser.add_argument(
        "--port", type=int, metavar="N", help="HTTP/WebSocket port (default: server.port, 8080)"
    )


def load_config(args: argparse.Namespace, **overrides: dict[str, Any]) -> dict[str, Any]:
    """defaults < --config < VOXMESH_* env < flags (``--port`` and ``overrides``)."""
    from voxmesh.supervisor import config

    layers: dict[str, dict[str, Any]] = {k: dict(v) for k, v in overrides.items() if v}
    if getattr(args, "port", None) is not None:
        layers.setdefault("server", {})["port"] = args.port
    try:
        return config.load(getattr(args, "config", None), overrides=layers)
    except config.ConfigError as exc:
        raise CliError(str(exc), code=2) from None


def running_mesh(args: argparse.Namespace) -> dict[str, Any]:
    """The state file of the mesh on the configured port; CliError if none is running."""
    from voxmesh.supervisor import statefile

    port = int(load_config(args)["server"]["port"])
    state = statefile.read(port)
    if state is None:
        raise CliError(
            f"no voxmesh is running on port {port} "
            f"(no live state file at {statefile.state_path(port)}); start one with 'voxmesh up'"
        )
    return state


# --- up and status -----------------------------------------------------------------------------


def up_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config ``voxmesh up`` runs with, checked before anything binds (CliError, 2)."""
    from voxmesh.supervisor.config import ConfigError, check_exposure

    config = load_config(
        args,
        tts={"engine": args.tts} if args.tts else {},
        server={"allow_unauthenticated": True} if args.allow_unauthenticated else {},
    )
    try:
        check_exposure(config)
    except ConfigError as exc:
        raise CliError(str(exc), code=2) from None
    return config


def cmd_up(args: argparse.Namespace) -> int:
    from voxmesh.supervisor.services import ServiceUnavailable, load_service
    from voxmesh.supervisor.supervisor import Supervisor

    config = up_config(args)
    logging.basicConfig(
        level=getattr(logging, os.environ.get("VOXMESH_LOG_LEVEL", "INFO").upper(), logging.INFO),
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    services = []
    if args.livekit:
        try:
            services.append(load_service("livekit", config))
        except ServiceUnavailable as exc:
            raise CliError(f"--livekit: {exc}", code=2) from None
    return Supervisor(config, services=services).run()


def cmd_status(args: argparse.Namespace) -> int:
    from voxmesh.supervisor.status import StatusUnavailable, format_table, query

    state = running_mesh(args)
    try:
        status = query(str(state["endpoint"]), timeout_s=args.timeout)
    except StatusUnavailable as exc:
        raise CliError(f"the mesh on port {state['port']} does not answer: {exc}") from None
    if args.json:
        print(json.dumps({"actors": status.actors, "info": status.info}, indent=1))
    else:
        print(format_table(status))
    return 0


# --- the parser --------------------------------------------------------------------------------


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` extra command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="voxmesh",
        description="Realtime full-duplex voice chat on a ZeroMQ + shared-memory mesh.",
        epilog="Config precedence: built-in mesh.toml < --config FILE < "
        "VOXMESH_<SECTION>_<KEY> environment variables < flags.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser(
        "up",
        help="start the whole mesh and serve until Ctrl-C",
        description="Start the supervisor and every actor (router, transport, vad, asr, one "
        "TTS actor per GPU or one on the CPU), print where to connect, and serve until "
        "SIGINT/SIGTERM; then stop everything and clean up (exit code 0).",
    )
    add_config_arguments(up)
    up.add_argument("--tts", choices=TTS_ENGINES, help="TTS engine (default: tts.engine, piper)")
    up.add_argument(
        "--livekit",
        action="store_true",
        help="also serve LiveKit clients, starting livekit-server unless livekit.url is set",
    )
    up.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback server.host without server.auth_token "
        "(server.allow_unauthenticated)",
    )
    up.set_defaults(func=cmd_up)

    status = sub.add_parser(
        "status",
        help="show the actors of the running mesh",
        description="Ask the running mesh's supervisor for the state, pid, restarts, "
        "sessions and last heartbeat of every actor. Exit 1 when no mesh is running.",
    )
    add_config_arguments(status)
    status.add_argument("--json", action="store_true", help="print the raw STATUS as JSON")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (3)")
    status.set_defaults(func=cmd_status)

    for name, (module_name, help_text) in COMMANDS.items():
        extra = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = _load_command(name, module_name)
            if module is not None:
                module.add_arguments(extra)
                extra.set_defaults(func=module.run)
                continue
        extra.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        extra.set_defaults(func=lambda args, _n=name: _unavailable(_n))
    return parser


def _load_command(name: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            return None  # the command's module is not there (yet)
        raise


def _unavailable(name: str) -> int:
    raise CliError(f"'voxmesh {name}' is not available in this build", code=2)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"voxmesh: error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # output piped into e.g. head, which has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
