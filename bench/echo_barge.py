"""Scenario ``echo_barge``: how fast does a real interruption stop the bot over its own echo?

The echo scenario (bench/echo.py) times 4 interruptions a condition, too few for a p95. Here
``VOXMESH_BENCH_ECHO_BARGE_N`` of them (default 16; ``--quick``: 4) at the speakerphone
target, echo -10 dB and 100 ms with server AEC, alternated with the same interruptions on a
headset (no echo), each a new room and speaking 1.5-2.5 s into the reply. Reaction: the
user's first voiced sample leaves -> the transport's last frame (clear's t_last_frame).
Beside it, offline on the same mixes (bench/echo.py's ``offline_mix``): audio time from the
user's first voiced sample to the VAD's speech_start, on the user alone and after the
canceller: what the echo costs before the mesh adds its own share.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np

from . import speech
from .baselines import vad_decisions
from .echo import (
    DELAY_MS,
    ECHO_DB,
    INTERRUPT,
    RATE,
    VOICES,
    VOICES_ARE,
    Mix,
    espeak,
    mesh_trial,
    offline_mix,
)
from .mesh import pool
from .registry import BenchContext, Outcome, require_tool, scenario
from .report import Figure, Row

TRIALS = int(os.environ.get("VOXMESH_BENCH_ECHO_BARGE_N", "16"))


def onset_ms(audio: np.ndarray, first: int) -> float | None:
    """Audio time from sample ``first`` to the VAD's speech_start decision on ``audio``."""
    start = vad_decisions(audio).get("speech_start")
    return None if start is None else (start.decided - first) * 1e3 / RATE


def offline_onsets(seed: int) -> tuple[float | None, float | None]:
    """(on the user alone, after the canceller) for the mix of ``seed``'s interruption."""
    clip = espeak(INTERRUPT, VOICES[seed % len(VOICES)])
    at_s = 2.0 + 0.37 * seed
    mixed = offline_mix(Mix(ECHO_DB, DELAY_MS, seed, clip, at_s))
    at = int(at_s * RATE)
    first = at + speech.voiced_bounds(clip / 32768.0)[0]
    alone = mixed.user.astype(np.int16)  # the user as mixed in, whole int16 samples
    return onset_ms(alone, first), onset_ms(mixed.out, first)


@scenario("echo_barge", "barge-in over the speakerphone echo: reaction, n interruptions", 37)
def echo_barge_scenario(ctx: BenchContext, out: Outcome) -> None:
    require_tool("espeak-ng", VOICES_ARE)
    n = 4 if ctx.quick else TRIALS
    mesh = pool(ctx).get("piper")
    fig = out.add(
        Figure(
            "echo_barge",
            f"Barge-in over the echo ({ECHO_DB:g} dB, {DELAY_MS:g} ms, server AEC) vs a "
            "headset (Piper)",
            "the user's first voiced sample leaves -> the transport's last frame (clear's "
            "t_last_frame); offline: first voiced sample -> the VAD's speech_start, in audio "
            "time, on the same mix",
            target="echo present: p95 <= 150 ms",
        )
    )
    conditions = {"echo": (ECHO_DB, DELAY_MS), "headset": (None, 0.0)}
    reactions: dict[str, list[float]] = {k: [] for k in conditions}
    stopped = dict.fromkeys(conditions, 0)
    # More than one clear: the bot paused, played on over the user, and paused again.
    paused_again = dict.fromkeys(conditions, 0)
    for seed in range(n):
        for name, (echo_db, delay) in conditions.items():  # alternated, seed by seed
            trial = asyncio.run(
                mesh_trial(mesh.ws_url, "server", "interrupt", echo_db, delay, seed)
            )
            stopped[name] += trial.stopped
            paused_again[name] += trial.clears > 1
            if trial.reaction_ms is not None:
                reactions[name].append(trial.reaction_ms)
            reaction = "-" if trial.reaction_ms is None else f"{trial.reaction_ms:.0f} ms"
            verdict = "stopped" if trial.stopped else "NOT stopped"
            ctx.log(
                f"   seed {seed} {name}: {verdict}, {reaction}, {trial.clears} clears, "
                f"heard {trial.heard!r}"
            )
    for name, (echo_db, delay) in conditions.items():
        fig.add(
            Row(
                f"{name}: reaction",
                reactions[name],
                {"echo_db": echo_db, "delay_ms": delay, "stage": "mesh"},
                {"interrupts": n, "stopped": stopped[name], "paused_again": paused_again[name]},
            )
        )
    offline = [offline_onsets(seed) for seed in range(n)]
    for k, label in enumerate(("user alone", "after the canceller")):
        values = [v for v in (o[k] for o in offline) if v is not None]
        fig.add(Row(f"offline VAD onset: {label}", values, {"stage": "vad", "input": label}))
