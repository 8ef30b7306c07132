"""Summary statistics and a description of the machine a figure was measured on.

Every figure reports median, p95, p99, max and the trial count (docs/bench.md), so the
reader can judge a p99 taken over 12 trials for what it is.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psutil


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    median: float
    p95: float
    p99: float
    max: float
    mean: float
    min: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(values: Iterable[float]) -> Summary:
    """Order statistics of ``values``; all NaN (n = 0) when there are none."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan)
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return Summary(
        n=int(x.size),
        median=float(p50),
        p95=float(p95),
        p99=float(p99),
        max=float(x.max()),
        mean=float(x.mean()),
        min=float(x.min()),
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, load average, memory and the date: what a timing depends on."""
    load1, load5, load15 = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores_logical": psutil.cpu_count(logical=True) or 0,
        "cores_physical": psutil.cpu_count(logical=False) or 0,
        "cpu_model": cpu_model(),
        "load_avg": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line for tables and plot captions."""
    load = info.get("load_avg", [0, 0, 0])
    return (
        f"{info.get('cpu_model', '?')}, {info.get('cores_logical', '?')} cores, "
        f"load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, {info.get('date', '?')}"
    )
