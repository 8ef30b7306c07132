"""``voxmesh bench``: run the scenarios, write JSON + PNG per figure and SUMMARY.md.

    voxmesh bench [--quick] [--only planes,fal] [--out DIR] [--sessions 1,4,16] [--tts mock]

The scenarios, their registry and the report writers live in ``voxmesh.bench``; this is only
the command line (``python -m voxmesh.bench.cli`` runs the same command standalone).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import CliError

if TYPE_CHECKING:
    from voxmesh.bench.report import Figure

DEFAULT_OUT = Path("bench/results")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _split_names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    return _names(value) if value is not None else []


def _split_ints(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int]:
    if value is None:
        return []
    try:
        counts = [int(n) for n in _names(value)]
    except ValueError:
        raise click.BadParameter(f"expected numbers like 1,4,16, got {value!r}") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("session counts must be positive")
    return counts


@click.command("bench", help="run the benchmarks (latency, jitter, scale)")
@click.option("--quick", is_flag=True, help="a small version of every scenario (< 2 minutes)")
@click.option(
    "--only", metavar="SCENARIO[,..]", callback=_split_names, help="run only these scenarios"
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    metavar="DIR",
    help=f"default {DEFAULT_OUT}",
)
@click.option(
    "--sessions",
    metavar="1,4,16,...",
    callback=_split_ints,
    help="session counts to run (default: each scenario's own ladder)",
)
@click.option(
    "--tts",
    type=click.Choice(("mock", "piper")),
    default=None,
    help="TTS engine for the mesh scenarios that take one (default: each scenario's own)",
)
@click.option("--list", "list_only", is_flag=True, help="list the scenarios and exit")
def bench(
    quick: bool,
    only: list[str],
    out: Path,
    sessions: list[int],
    tts: str | None,
    list_only: bool,
) -> int:
    # What the run computes itself (offline Whisper, the turns bench's reference for the mesh's
    # words) must come out as in the actors: their BLAS threads (supervisor/process.py). A
    # threaded sgemm sums the mel filters in another order, and a borderline clip decodes to
    # other words ("the lights in the kitchen" / "the live syndication"). Before numpy loads.
    from voxmesh.supervisor.process import THREAD_DEFAULTS

    for key, value in THREAD_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from voxmesh.bench import registry
    from voxmesh.bench.report import write_json, write_summary

    known = registry.load_all()
    if list_only:
        for name, sc in known.items():
            print(f"{name:10s} {sc.title}")
        return 0
    names = only or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CliError(f"unknown scenario(s) {unknown}; known: {list(known)}", code=2)
    plots = can_plot()
    if not plots:  # said before the run, which goes on: the figures are the JSON files
        print(f"voxmesh bench: {NO_PLOTS}", file=sys.stderr)
    ctx = registry.BenchContext(quick=quick, out=out, sessions=sessions or None, tts=tts or "")
    t0 = time.monotonic()
    # A SIGTERM (a cancelled job, `kill`) unwinds like Ctrl-C, so the meshes the run started
    # are stopped (registry.run closes them) instead of outliving it in their own sessions.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        outcome = registry.run(names, ctx)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # What was measured is written first (JSON, SUMMARY.md); plots come after and may fail
    # without losing any of it.
    for fig in outcome.figures:
        write_json(fig, out)
    mode = "quick" if quick else "full"
    notes = list(outcome.notes)
    if not plots:
        notes.append(f"no PNG plots: {NO_PLOTS}")
    summary = write_summary(outcome.figures, out, skipped=outcome.skipped, notes=notes, mode=mode)
    pngs = write_plots(outcome.figures, out) if plots else 0
    print(summary.read_text(encoding="utf-8"))
    print(
        f"wrote {len(outcome.figures)} figures to {out} (JSON, {pngs} PNG) "
        f"in {time.monotonic() - t0:.0f} s"
    )
    failed = [name for name, why in outcome.skipped if why.startswith("failed")]
    return 1 if failed else 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


NO_PLOTS = (
    "matplotlib is not installed, so this run writes JSON and SUMMARY.md but no PNG plots "
    "(pip install 'voxmesh[bench]', or make dev)"
)


def can_plot() -> bool:
    """Whether matplotlib can be imported (looked up without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_plots(figures: Sequence[Figure], out: Path) -> int:
    """A PNG per figure; one that fails is reported in one line and the rest go on."""
    from voxmesh.bench.report import write_png

    written = 0
    for fig in figures:
        try:
            write_png(fig, out)
            written += 1
        except Exception as exc:  # a plot is a view of the JSON, which is already written
            print(f"voxmesh bench: no plot for {fig.name}: {exc!r}", file=sys.stderr)
    return written
