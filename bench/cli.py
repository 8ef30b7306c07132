"""``voxmesh bench``: run the scenarios, write JSON + PNG per figure and SUMMARY.md.

    voxmesh bench [--quick] [--only planes,fal] [--out DIR] [--sessions 1,4,16] [--tts mock]

Also ``python -m voxmesh.bench.cli``. The ``voxmesh`` command imports this module only for
its ``bench`` subcommand (``add_arguments`` / ``run``); ``main(argv)`` is the same thing
standalone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path("bench/results")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _ints(text: str) -> list[int]:
    try:
        values = [int(n) for n in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("session counts must be positive")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="a small version of every scenario (< 2 minutes)"
    )
    parser.add_argument(
        "--only", type=_names, metavar="SCENARIO[,..]", help="run only these scenarios"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help=f"default {DEFAULT_OUT}"
    )
    parser.add_argument(
        "--sessions",
        type=_ints,
        metavar="1,4,16,...",
        help="session counts to run (default: each scenario's own ladder)",
    )
    parser.add_argument(
        "--tts",
        choices=("mock", "piper"),
        default=None,
        help="TTS engine for the mesh scenarios that take one (default: each scenario's own)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")


def run(args: argparse.Namespace) -> int:
    from . import registry
    from .report import write_json, write_png, write_summary

    known = registry.load_all()
    if args.list:
        for name, sc in known.items():
            print(f"{name:10s} {sc.title}")
        return 0
    names = args.only or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"voxmesh bench: unknown scenario(s) {unknown}; known: {list(known)}", file=sys.stderr
        )
        return 2
    ctx = registry.BenchContext(
        quick=args.quick, out=args.out, sessions=args.sessions, tts=args.tts or ""
    )
    t0 = time.monotonic()
    outcome = registry.run(names, ctx)
    for fig in outcome.figures:
        write_json(fig, args.out)
        write_png(fig, args.out)
    mode = "quick" if args.quick else "full"
    summary = write_summary(
        outcome.figures, args.out, skipped=outcome.skipped, notes=outcome.notes, mode=mode
    )
    print(summary.read_text(encoding="utf-8"))
    print(f"wrote {len(outcome.figures)} figures to {args.out} in {time.monotonic() - t0:.0f} s")
    failed = [name for name, why in outcome.skipped if why.startswith("failed")]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxmesh bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
