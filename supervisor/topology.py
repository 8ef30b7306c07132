"""Which actors a mesh runs, and the spec each one is started with.

The router first (it binds the control socket), then transport, vad, asr and the TTS
actors: one per GPU with ``CUDA_VISIBLE_DEVICES`` pinned, or a single ``tts0`` on the CPU.
The router learns which actors to expect from its spec's ``expected`` (the names of every
other actor), so it can tell the transport when the whole mesh is up. Each actor is given
only its own settings sections (``mesh/settings.py`` ``SECTIONS``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from voxmesh.mesh.settings import Settings, sections_for
from voxmesh.mesh.spec import ActorSpec, MeshPlace

ROUTER = "router"
FIXED_ACTORS = ("transport", "vad", "asr")  # (name == kind) started after the router


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


def tts_devices(setting: str) -> list[str | None]:
    """``tts.devices`` (checked by mesh/settings.py): "auto" (every GPU, else the CPU), "cpu",
    or GPU indices "0,1"."""
    value = setting.strip().lower()
    if value == "cpu":
        return [None]
    if value == "auto":
        gpus = detect_gpus()
        return list(gpus) if gpus else [None]
    return [part.strip() for part in value.split(",") if part.strip()]


def plan(settings: Settings, run_dir: Path, segment: str, secret: str = "") -> list[ActorSpec]:
    """Every actor's spec, in start order (the router first)."""
    mesh = settings.mesh
    tts: list[tuple[str, dict[str, str]]] = []
    for i, device in enumerate(tts_devices(settings.tts.devices)):
        env = {"CUDA_VISIBLE_DEVICES": device if device is not None else ""}
        tts.append((f"tts{i}", env))
    names = [ROUTER, *FIXED_ACTORS, *(name for name, _ in tts)]
    place = MeshPlace(
        router=f"ipc://{run_dir}/router.sock",
        supervisor=f"ipc://{run_dir}/supervisor.sock",
        segment=segment,
        heartbeat_s=mesh.heartbeat_ms / 1000.0,
        liveness=mesh.liveness,
        secret=secret or None,
        hold_s=mesh.hold_s,
    )

    def spec(kind: str, name: str, env: dict[str, str] | None = None) -> ActorSpec:
        return ActorSpec(
            kind=kind,
            name=name,
            place=place,
            settings=sections_for(settings, kind),
            env=dict(env or {}),
            expected=names[1:] if kind == ROUTER else [],
        )

    return [
        spec(ROUTER, ROUTER),
        *(spec(kind, kind) for kind in FIXED_ACTORS),
        *(spec("tts", name, env) for name, env in tts),
    ]
