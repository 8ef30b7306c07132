"""The transport's counters, and the metric families it reports at each ``GET /metrics``.

They are this actor's own state (tests and the heartbeat read ``TransportStats`` too), so
they are not prometheus-client objects counting a second time: ``families`` turns them into
metric families at scrape time, beside every other actor's metrics (``mesh/metrics.py``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# Send lag: how late a frame went out against its scheduled send time (seconds).
# Fine below 5 ms: the bench reads its pacing figure (p99 <= 2 ms) off this histogram.
LAG_BUCKETS = (0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1)
PREFIX = "voxmesh_transport_"


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
    # every error event sent to a client (ours and the router's), by code
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


TOTALS = {
    "sessions_opened": "Sessions opened.",
    "sessions_closed": "Sessions closed.",
    "frames_sent": "20 ms output frames sent to clients.",
    "underruns": "Times a client ran out of audio mid-utterance.",
    "late_frames": "Frames sent after their playout time.",
    "stale_frames": "Output frames of an older epoch dropped.",
    "stale_control": "HOLD/RELEASE/STOP of an older epoch dropped.",
    "resent_samples": "Samples re-sent after a RELEASE.",
    "mic_frames": "16 kHz mic frames written to the rings.",
    "held_requests": "Client requests held while the router was away.",
}


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _labelled(name: str, help_text: str, label: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(PREFIX + name, help_text, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


def families(
    stats: TransportStats,
    *,
    sessions: int,
    mesh_ready: bool,
    router_alive: bool,
    counters: Mapping[str, int],
) -> list[Metric]:
    out: list[Metric] = [
        _gauge("sessions", "Live client sessions.", sessions),
        _gauge("mesh_ready", "1 when the router reports every actor up.", int(mesh_ready)),
        _gauge("router_alive", "1 while the router link is alive.", int(router_alive)),
    ]
    out += [
        CounterMetricFamily(PREFIX + name, help_text, value=getattr(stats, name))
        for name, help_text in TOTALS.items()
    ]
    out.append(
        _labelled(
            "client_errors",
            "Error events sent to clients, by code (mesh/errors.py; 'dropped': not sent, the "
            "client was not reading).",
            "code",
            stats.client_errors,
        )
    )
    out.append(
        _labelled(
            "events",
            "Internal event counters (malformed, dropped, reconnects...).",
            "name",
            counters,
        )
    )
    cumulative, buckets = 0, []
    for le, n in zip((*LAG_BUCKETS, float("inf")), stats.lag_counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if le == float("inf") else repr(le), float(cumulative)))
    out.append(
        HistogramMetricFamily(
            PREFIX + "send_lag_seconds",
            "Frame send time minus its scheduled send time.",
            buckets=buckets,
            sum_value=stats.lag_sum,
        )
    )
    return out
