"""Which actors a mesh runs, and the spec each one is started with.

The router first (it binds the control socket), then transport, vad, asr and the TTS
actors: one per GPU with ``CUDA_VISIBLE_DEVICES`` pinned, or a single ``tts0`` on the CPU.
The router learns which actors to expect from ``config["router"]["expected"]`` (the names of
every other actor), so it can tell the transport when the whole mesh is up.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .spec import ActorSpec

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
    """``tts.devices``: "auto" (every GPU, else the CPU), "cpu", or GPU indices "0,1"."""
    value = setting.strip().lower()
    if value == "cpu":
        return [None]
    if value == "auto":
        gpus = detect_gpus()
        return list(gpus) if gpus else [None]
    indices = [part.strip() for part in value.split(",") if part.strip()]
    if not indices or not all(part.isdigit() for part in indices):
        raise ConfigError(
            f'tts.devices must be "auto", "cpu" or GPU indices like "0,1": {setting!r}'
        )
    return list(indices)


def plan(config: Config, run_dir: Path, segment: str, secret: str = "") -> list[ActorSpec]:
    """Every actor's spec, in start order (the router first)."""
    mesh = config["mesh"]
    tts: list[tuple[str, dict[str, str]]] = []
    for i, device in enumerate(tts_devices(str(config["tts"]["devices"]))):
        env = {"CUDA_VISIBLE_DEVICES": device if device is not None else ""}
        tts.append((f"tts{i}", env))
    names = [ROUTER, *FIXED_ACTORS, *(name for name, _ in tts)]
    shared: dict[str, Any] = copy.deepcopy(config)
    shared["router"]["expected"] = names[1:]

    def spec(kind: str, name: str, env: dict[str, str] | None = None) -> ActorSpec:
        return ActorSpec(
            kind=kind,
            name=name,
            router=f"ipc://{run_dir}/router.sock",
            supervisor=f"ipc://{run_dir}/supervisor.sock",
            segment=segment,
            heartbeat_s=mesh["heartbeat_ms"] / 1000.0,
            liveness=int(mesh["liveness"]),
            config=shared,
            env=dict(env or {}),
            secret=secret,
            hold_s=float(mesh["hold_s"]),
        )

    return [
        spec(ROUTER, ROUTER),
        *(spec(kind, kind) for kind in FIXED_ACTORS),
        *(spec("tts", name, env) for name, env in tts),
    ]
