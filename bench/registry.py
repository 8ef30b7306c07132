"""The scenario registry: each scenario is a function that adds figures to an Outcome.

A scenario raises ``Skip`` when it cannot run here (no transport yet, no Piper voice...);
the reason lands in SUMMARY.md under "Not run". A scenario that measured part of what it
promised appends what it has and records the rest with ``Outcome.skip``.
"""

from __future__ import annotations

import importlib
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import Figure

SCENARIO_MODULES = (
    "planes",
    "mesh_scenarios",
    "pacing",
    "voice_scenarios",
    "turns",
    "turns_human",
    "tts_actors",
    "remote",
    "faults",
    "soak",
    "echo",
    "echo_soak",
    "echo_barge",
    "echo_human",
    "peers",
)


class Skip(Exception):
    """This scenario cannot run on this machine or in this tree; the message says why."""


def require_tool(tool: str, why: str) -> None:
    """Skip the scenario unless ``tool`` is on PATH; ``why`` says what it is for."""
    if shutil.which(tool) is None:
        raise Skip(f"{tool} is not installed ({why})")


@dataclass
class BenchContext:
    quick: bool = False
    out: Path = Path("bench/results")
    sessions: list[int] | None = None  # --sessions override of each scenario's own ladder
    tts: str = "mock"  # the mesh scenarios' TTS engine where a scenario lets you choose
    log: Callable[[str], None] = print
    shared: dict[str, Any] = field(default_factory=dict)  # kept across scenarios (meshes)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def on_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)

    def close(self) -> None:
        """Release what scenarios shared (stop meshes), newest first, whatever fails."""
        while self._closers:
            try:
                self._closers.pop()()
            except Exception:
                self.log(traceback.format_exc())

    def session_ladder(self, default: list[int]) -> list[int]:
        return list(self.sessions) if self.sessions else list(default)


@dataclass
class Outcome:
    figures: list[Figure] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, fig: Figure) -> Figure:
        self.figures.append(fig)
        return fig

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))


ScenarioFn = Callable[[BenchContext, Outcome], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fn: ScenarioFn
    order: int


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str, order: int) -> Callable[[ScenarioFn], ScenarioFn]:
    def register(fn: ScenarioFn) -> ScenarioFn:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, title, fn, order)
        return fn

    return register


def load_all() -> dict[str, Scenario]:
    for mod in SCENARIO_MODULES:
        importlib.import_module(f"voxmesh.bench.{mod}")
    return dict(sorted(SCENARIOS.items(), key=lambda kv: kv[1].order))


def run(names: list[str], ctx: BenchContext) -> Outcome:
    """Run the named scenarios in registry order; one failing never stops the others."""
    known = load_all()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown scenario(s) {unknown}; known: {list(known)}")
    outcome = Outcome()
    try:
        for name, sc in known.items():
            if name in names:
                _run_one(sc, ctx, outcome)
    finally:
        ctx.close()
    return outcome


def _run_one(sc: Scenario, ctx: BenchContext, outcome: Outcome) -> None:
    ctx.log(f"== {sc.name}: {sc.title}")
    t0 = time.monotonic()
    try:
        sc.fn(ctx, outcome)
    except Skip as why:
        outcome.skip(sc.name, str(why))
        ctx.log(f"   not run: {why}")
    except Exception as exc:  # report it and go on with the next scenario
        outcome.skip(sc.name, f"failed: {type(exc).__name__}: {exc}")
        ctx.log(traceback.format_exc())
    ctx.log(f"   {sc.name} took {time.monotonic() - t0:.1f} s")
