"""Which actors a mesh runs, and the spec each one is started with.

The router first (it binds the control socket), then transport, vad, asr and the TTS
actors: one per ``[[tts.actors]]`` table, else one per GPU, else a single ``tts0`` on the
CPU; each pinned to its device with ``CUDA_VISIBLE_DEVICES`` ("" on the CPU).
With ``remote.listen`` the audio ``bridge`` runs too (actors/bridge.py). The router learns
which actors to expect from its spec's ``expected`` (the names of every other actor), so it
can tell the transport when the whole mesh is up. Each actor is given
only its own settings sections (``mesh/settings.py`` ``SECTIONS``).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from voxmesh.mesh.settings import Settings, TtsActorSettings, TtsSettings, sections_for, to_dict
from voxmesh.mesh.spec import ActorSpec, MeshPlace

ROUTER = "router"
FIXED_ACTORS = ("transport", "vad", "asr")  # (name == kind) started after the router
BRIDGE = "bridge"  # (name == kind) only with remote.listen: actors on other hosts


def detect_gpus() -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (empty without the tool or without GPUs)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def tts_devices(setting: str) -> list[str]:
    """``tts.devices`` (checked by mesh/settings.py): "auto" (every GPU, else the CPU), "cpu",
    "none", or GPU indices "0,1"."""
    value = setting.strip().lower()
    if value in ("cpu", "none"):
        return ["cpu"] if value == "cpu" else []
    if value == "auto":
        return detect_gpus() or ["cpu"]
    return [part.strip() for part in value.split(",") if part.strip()]


def tts_actors(tts: TtsSettings) -> list[tuple[str, TtsActorSettings]]:
    """(name, table) of every local TTS actor: the [[tts.actors]] tables, else one actor per
    device of ``tts.devices``, all running ``tts.engine``."""
    if tts.actors:
        return [(a.name or f"tts{i}", a) for i, a in enumerate(tts.actors)]
    return [
        (f"tts{i}", dataclasses.replace(tts.own(), device=device))
        for i, device in enumerate(tts_devices(tts.devices))
    ]


def plan(settings: Settings, run_dir: Path, segment: str, secret: str = "") -> list[ActorSpec]:
    """Every actor's spec, in start order (the router first)."""
    mesh = settings.mesh
    tts = tts_actors(settings.tts)
    # remote.listen: the audio bridge takes the frames of TTS actors on other hosts
    extra = (BRIDGE,) if settings.remote.listen else ()
    # remote.only: the VAD or ASR lives on worker hosts only (they read through the bridge)
    fixed = [kind for kind in FIXED_ACTORS if kind not in settings.remote.only]
    names = [ROUTER, *fixed, *extra, *(name for name, _ in tts)]
    place = MeshPlace(
        router=f"ipc://{run_dir}/router.sock",
        supervisor=f"ipc://{run_dir}/supervisor.sock",
        segment=segment,
        heartbeat_s=mesh.heartbeat_ms / 1000.0,
        liveness=mesh.liveness,
        secret=secret or None,
        hold_s=mesh.hold_s,
    )

    def spec(kind: str, name: str, own: TtsActorSettings | None = None) -> ActorSpec:
        sections = sections_for(settings, kind)
        env: dict[str, str] = {}
        if own is not None:  # a TTS actor: its table only, pinned to its device
            sections["tts"] = to_dict(dataclasses.replace(settings.tts, actors=(own,)))
            env["CUDA_VISIBLE_DEVICES"] = "" if own.device == "cpu" else own.device
        return ActorSpec(
            kind=kind,
            name=name,
            place=place,
            settings=sections,
            env=env,
            expected=names[1:] if kind == ROUTER else [],
        )

    return [
        spec(ROUTER, ROUTER),
        *(spec(kind, kind) for kind in (*fixed, *extra)),
        *(spec("tts", name, own) for name, own in tts),
    ]
