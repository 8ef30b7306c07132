"""Figures and how they are written: one JSON and one PNG per figure, one SUMMARY.md per run.

A ``Figure`` is a set of rows; each row is one series of raw trial values (in the figure's
unit) plus the parameters that produced it (variant, sessions...) and extra measurements
(CPU per session, underruns...). Summaries are computed here, from the raw values, so the
JSON, the plot and the table can never disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .stats import Summary, machine_info, machine_line, summarize

PlotKind = Literal["distribution", "timeline", "scale"]
MAX_RAW_VALUES = 20_000  # per row in the JSON; longer series are evenly thinned


@dataclass
class Row:
    label: str
    values: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    times: list[float] | None = None  # timeline rows: seconds since the row started

    @property
    def summary(self) -> Summary:
        return summarize(self.values)


@dataclass
class Figure:
    name: str  # file stem: bench/results/<name>.json and .png
    title: str
    definition: str  # what one trial measures, from what to what
    unit: str = "ms"
    plot: PlotKind = "distribution"
    rows: list[Row] = field(default_factory=list)
    target: str = ""  # the docs/bench.md target, as text
    notes: list[str] = field(default_factory=list)
    x_key: str = "sessions"  # scale plots: x axis parameter...
    group_key: str = "variant"  # ...and one line per value of this one
    in_summary: bool = True  # False for another view of rows already in the table
    machine: dict[str, Any] = field(default_factory=machine_info)  # taken when measured

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "definition": self.definition,
            "unit": self.unit,
            "target": self.target,
            "notes": self.notes,
            "machine": self.machine,
            "rows": [_row_json(r) for r in self.rows],
        }


def _thin(values: Sequence[float]) -> list[float]:
    step = max(1, math.ceil(len(values) / MAX_RAW_VALUES))
    return [round(float(v), 4) for v in values[::step]]


def _clean(x: Any) -> Any:
    """JSON has no NaN: an empty summary is written as nulls."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _row_json(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": row.label,
        "params": row.params,
        "summary": row.summary.as_dict(),
        "extra": row.extra,
        "values": _thin(row.values),
        "values_thinned": len(row.values) > MAX_RAW_VALUES,
    }
    if row.times is not None:
        out["times"] = _thin(row.times)
    cleaned: dict[str, Any] = _clean(out)
    return cleaned


def write_json(fig: Figure, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{fig.name}.json"
    path.write_text(json.dumps(fig.to_json(), indent=1) + "\n", encoding="utf-8")
    return path


# --- plots -----------------------------------------------------------------------------------


def write_png(fig: Figure, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{fig.name}.png"
    f, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    try:
        {"distribution": _plot_cdf, "timeline": _plot_timeline, "scale": _plot_scale}[fig.plot](
            ax, fig
        )
        ax.set_title(fig.title, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        if any(r.values for r in fig.rows):
            ax.legend(fontsize=8)
        f.text(0.01, 0.01, machine_line(fig.machine), fontsize=7, alpha=0.7)
        f.tight_layout(rect=(0, 0.03, 1, 1))
        f.savefig(path)
    finally:
        plt.close(f)
    return path


def _log_worthy(values: list[float]) -> bool:
    pos = [v for v in values if v > 0]
    return bool(pos) and max(pos) / min(pos) > 100


def _plot_cdf(ax: Any, fig: Figure) -> None:
    import numpy as np

    everything: list[float] = []
    for row in fig.rows:
        if not row.values:
            continue
        x = np.sort(np.asarray(row.values, dtype=float))
        y = np.arange(1, x.size + 1) / x.size
        s = row.summary
        ax.step(x, y, where="post", label=f"{row.label} (p50 {s.median:.3g}, p99 {s.p99:.3g})")
        everything.extend(row.values)
    if _log_worthy(everything):
        ax.set_xscale("log")
    ax.set_xlabel(fig.unit)
    ax.set_ylabel("fraction of trials ≤ x")


def _plot_timeline(ax: Any, fig: Figure) -> None:
    for row in fig.rows:
        if row.values and row.times is not None:
            ax.plot(row.times, row.values, ".", markersize=2, label=row.label)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel(fig.unit)


def _plot_scale(ax: Any, fig: Figure) -> None:
    from matplotlib import ticker

    groups: dict[str, list[Row]] = {}
    for row in fig.rows:
        groups.setdefault(str(row.params.get(fig.group_key, row.label)), []).append(row)
    everything: list[float] = []
    for name, rows in groups.items():
        rows = sorted((r for r in rows if r.values), key=lambda r: r.params.get(fig.x_key, 0))
        if not rows:
            continue
        xs = [r.params.get(fig.x_key, 0) for r in rows]
        med = [r.summary.median for r in rows]
        p99 = [r.summary.p99 for r in rows]
        (line,) = ax.plot(xs, med, "o-", label=f"{name} median")
        ax.plot(xs, p99, "^--", color=line.get_color(), label=f"{name} p99")
        everything.extend(med + p99)
    if _log_worthy(everything):
        ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())  # 16, not 2^4
    ax.set_xlabel(fig.x_key)
    ax.set_ylabel(fig.unit)


# --- the run's summary -------------------------------------------------------------------------


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.1f}"
    return f"{x:.3f}"


def _extra_text(extra: dict[str, Any]) -> str:
    parts = []
    for k, v in extra.items():
        if isinstance(v, float):
            parts.append(f"{k} {_fmt(v)}")
        elif isinstance(v, (int, str, bool)):
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def summary_markdown(
    figures: Sequence[Figure],
    *,
    skipped: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
    mode: str = "",
) -> str:
    machine = machine_info()
    lines = [
        "# voxmesh bench summary",
        "",
        f"- date: {machine['date']}" + (f" ({mode} run)" if mode else ""),
        f"- machine: {machine_line(machine)}",
        "- all times monotonic on this host; definitions in docs/bench.md",
        "",
        "| figure | series | n | median | p95 | p99 | max | unit | target | also |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for fig in (f for f in figures if f.in_summary):
        for row in fig.rows:
            s = row.summary
            lines.append(
                f"| {fig.name} | {row.label} | {s.n} | {_fmt(s.median)} | {_fmt(s.p95)} | "
                f"{_fmt(s.p99)} | {_fmt(s.max)} | {fig.unit} | {fig.target} | "
                f"{_extra_text(row.extra)} |"
            )
    if skipped:
        lines += ["", "## Not run", ""]
        lines += [f"- **{name}**: {why}" for name, why in skipped]
    fig_notes = [f"- {fig.name}: {n}" for fig in figures for n in fig.notes]
    if notes or fig_notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes] + fig_notes
    return "\n".join(lines) + "\n"


def write_summary(
    figures: Sequence[Figure],
    out: Path,
    *,
    skipped: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
    mode: str = "",
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "SUMMARY.md"
    path.write_text(
        summary_markdown(figures, skipped=skipped, notes=notes, mode=mode), encoding="utf-8"
    )
    return path
