"""Transport counters and their Prometheus text rendering (``GET /metrics``)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Send lag: how late a frame went out against its scheduled send time (seconds).
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


@dataclass
class TransportStats:
    """Counters shared by every session of one transport actor."""

    sessions_opened: int = 0
    sessions_closed: int = 0
    frames_sent: int = 0
    underruns: int = 0  # the client ran dry mid-utterance (no frame when one was due)
    late_frames: int = 0  # a frame sent after the moment it should already be playing
    stale_frames: int = 0  # out-ring frames of an older epoch, dropped
    stale_control: int = 0  # HOLD/RELEASE/STOP of an older epoch, dropped
    resent_samples: int = 0  # samples sent again after a RELEASE
    mic_frames: int = 0  # 16 kHz frames written to mic rings
    held_requests: int = 0  # client requests held while the router was away
    client_errors: Counter[str] = field(default_factory=Counter)
    lag_counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    lag_sum: float = 0.0
    lag_max: float = 0.0

    def observe_lag(self, lag_s: float) -> None:
        self.lag_counts[bisect.bisect_left(LAG_BUCKETS, lag_s)] += 1
        self.lag_sum += lag_s
        if lag_s > self.lag_max:
            self.lag_max = lag_s

    def summary(self) -> dict[str, int]:
        return {
            "frames_sent": self.frames_sent,
            "underruns": self.underruns,
            "late_frames": self.late_frames,
        }


def _metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_num(value)}" for labels, value in samples]
    return "\n".join(lines)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(
    stats: TransportStats,
    *,
    sessions: int,
    mesh_ready: bool,
    router_alive: bool,
    counters: Mapping[str, int],
) -> str:
    p = "voxmesh_transport_"
    out = [
        _metric(p + "sessions", "gauge", "Live client sessions.", [("", sessions)]),
        _metric(
            p + "mesh_ready",
            "gauge",
            "1 when the router reports every actor up.",
            [("", int(mesh_ready))],
        ),
        _metric(
            p + "router_alive",
            "gauge",
            "1 while the router link is alive.",
            [("", int(router_alive))],
        ),
    ]
    totals = [
        ("sessions_opened", stats.sessions_opened, "Sessions opened."),
        ("sessions_closed", stats.sessions_closed, "Sessions closed."),
        ("frames_sent", stats.frames_sent, "20 ms output frames sent to clients."),
        ("underruns", stats.underruns, "Times a client ran out of audio mid-utterance."),
        ("late_frames", stats.late_frames, "Frames sent after their playout time."),
        ("stale_frames", stats.stale_frames, "Output frames of an older epoch dropped."),
        ("stale_control", stats.stale_control, "HOLD/RELEASE/STOP of an older epoch dropped."),
        ("resent_samples", stats.resent_samples, "Samples re-sent after a RELEASE."),
        ("mic_frames", stats.mic_frames, "16 kHz mic frames written to the rings."),
    ]
    out += [_metric(f"{p}{n}_total", "counter", h, [("", v)]) for n, v, h in totals]
    out.append(
        _metric(
            p + "client_errors_total",
            "counter",
            "Error events sent to clients, by code.",
            [(f'{{code="{_label(c)}"}}', n) for c, n in sorted(stats.client_errors.items())],
        )
    )
    out.append(
        _metric(
            p + "events_total",
            "counter",
            "Internal event counters (malformed, dropped, reconnects...).",
            [(f'{{name="{_label(c)}"}}', n) for c, n in sorted(counters.items())],
        )
    )
    cumulative, rows = 0, []
    for le, n in zip((*LAG_BUCKETS, float("inf")), stats.lag_counts, strict=True):
        cumulative += n
        rows.append((f'{{le="{"+Inf" if le == float("inf") else repr(le)}"}}', cumulative))
    hist = _metric(
        p + "send_lag_seconds",
        "histogram",
        "Frame send time minus its scheduled send time.",
        [(f"_bucket{lbl}", v) for lbl, v in rows],
    )
    hist += f"\n{p}send_lag_seconds_sum {stats.lag_sum!r}\n{p}send_lag_seconds_count {cumulative}"
    out.append(hist)
    return "\n".join(out) + "\n"
