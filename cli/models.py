"""``voxmesh models``: the running mesh's TTS actors and their voices; load and unload.

``list`` reads the supervisor's STATUS (each TTS actor's heartbeat says its host, device,
engine, provider, voices, load and sessions); ``load``/``unload`` go through the supervisor
to one TTS actor (``--actor``, or the one that fits) and print what it then holds.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .common import CliError, MeshOptions, mesh_options, running_mesh

LOAD_TIMEOUT_S = 120.0  # loading a voice is a model load (seconds on a CPU)


@click.group("models", help="The TTS actors of the running mesh and their voices.")
def models() -> None:
    pass


def _endpoint(config: str | None, port: int | None) -> str:
    return str(running_mesh(MeshOptions(config=config, port=port))["endpoint"])


def tts_rows(actors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per TTS actor, from STATUS."""
    rows = []
    for actor in actors:
        if actor.get("kind") != "tts":
            continue
        info: dict[str, Any] = actor.get("info") or {}
        rows.append(
            {
                "name": actor.get("name"),
                "state": actor.get("state"),
                "host": info.get("host", ""),
                "device": info.get("device", ""),
                "engine": info.get("engine", ""),
                "provider": info.get("provider", ""),
                "default": info.get("default", ""),
                "resident": list(info.get("resident", [])),
                "voices": list(info.get("voices", [])),
                "load": info.get("load", 0),
                "sessions": info.get("sessions", 0),
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ("ACTOR", "HOST", "DEVICE", "ENGINE", "PROVIDER", "LOAD", "SESSIONS", "RESIDENT")
    table = [head] + [
        (
            str(r["name"]),
            str(r["host"]),
            str(r["device"]),
            str(r["engine"]),
            str(r["provider"]),
            f"{float(r['load'] or 0):.2f}",
            str(r["sessions"]),
            ", ".join(r["resident"]) or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    voices = sorted({v for r in rows for v in r["voices"]})
    return "\n".join([*lines, "", "available voices: " + (", ".join(voices) or "none")])


@models.command("list", help="Every TTS actor: host, device, engine, provider, voices, load.")
@mesh_options
@click.option("--json", "as_json", is_flag=True, help="print JSON (a list of actors)")
@click.option("--timeout", type=float, default=3.0, metavar="S", help="seconds to wait (3)")
def list_models(config: str | None, port: int | None, as_json: bool, timeout: float) -> int:
    from voxmesh.supervisor.status import StatusUnavailable, query

    try:
        rows = tts_rows(query(_endpoint(config, port), timeout_s=timeout).actors)
    except StatusUnavailable as exc:
        raise CliError(f"the mesh does not answer: {exc}") from None
    print(json.dumps(rows, indent=1) if as_json else format_rows(rows))
    return 0


def _command(
    load: bool,
    voice: str,
    actor: str,
    config: str | None,
    port: int | None,
    as_json: bool,
    timeout: float,
) -> int:
    from voxmesh.mesh.protocol import ModelInfo, ModelLoad, ModelUnload
    from voxmesh.supervisor.status import StatusUnavailable, ask

    msg = ModelLoad(voice, actor) if load else ModelUnload(voice, actor)
    try:
        info = ask(_endpoint(config, port), msg, ModelInfo, timeout)
    except StatusUnavailable as exc:
        raise CliError(f"no answer about {voice!r}: {exc}") from None
    if info.error:
        raise CliError(info.error)
    if as_json:
        print(
            json.dumps(
                {"actor": info.actor, "resident": info.resident, "available": info.available},
                indent=1,
            )
        )
    else:
        print(f"{info.actor}: resident {', '.join(info.resident) or '-'}")
    return 0


def _voice_command(load: bool) -> click.Command:
    verb = "load" if load else "unload"
    helps = {
        "load": "Load (and warm up) VOICE (engine:voice) on a TTS actor: --actor, else the "
        "least loaded actor of that engine.",
        "unload": "Unload VOICE from a TTS actor: --actor, else one that has it resident "
        "(never mid-utterance: a voice in use is kept until its utterance ends).",
    }

    @click.command(verb, help=helps[verb])
    @click.argument("voice")
    @click.option("--actor", default="", metavar="NAME", help="the TTS actor (e.g. tts1)")
    @mesh_options
    @click.option("--json", "as_json", is_flag=True, help="print JSON")
    @click.option(
        "--timeout",
        type=float,
        default=LOAD_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait ({LOAD_TIMEOUT_S:g})",
    )
    def command(
        voice: str, actor: str, config: str | None, port: int | None, as_json: bool, timeout: float
    ) -> int:
        return _command(load, voice, actor, config, port, as_json, timeout)

    return command


models.add_command(_voice_command(True))
models.add_command(_voice_command(False))
