"""Every Prometheus metric of the mesh, defined here, and the scrape that reports them all.

One scrape for the whole mesh: the transport serves ``GET /metrics`` (``exposition``).
Under a supervisor every process writes its metrics into ``<run_dir>/metrics``
(prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``, set by
``supervisor/metricsdir.py`` before any actor imports prometheus_client, which picks the
mode once, at import) and the scrape adds them up: counters and histograms of a process
that died stay counted. An actor embedded without a supervisor (no such variable) keeps
them in its own process, the library's default registry.

The transport's own counters and gauges (``voxmesh_transport_*``) are the one exception:
they are that actor's state already (``actors/transport/metrics.py``, which tests and the
heartbeat read too), so the transport reports them at each scrape rather than counting twice:
sessions opened and closed, frames, underruns, the errors sent to clients by code, ...

Times are in seconds (Prometheus' base unit), with buckets from 5 ms to 10 s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latencies a person waits for: finest from 50 to 500 ms, where the voice-to-voice targets
# lie (docs/bench.md).
LATENCY_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5),
    *(0.75, 1.0, 1.5, 2.5, 5.0, 10.0),
)

# --- the router (actors/router/turns.py, actors/router/turnlog.py) ---------------------------

VOICE_TO_VOICE = Histogram(
    "voxmesh_voice_to_voice_seconds",
    "End of the user's turn -> first reply frame sent to the client. source=voice: from the "
    "last speech sample's arrival in the mic ring; text/say: from the request reaching the "
    "router.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
ASR = Histogram(
    "voxmesh_asr_seconds",
    "ASR time of one transcript the model made (as the ASR actor measured it), final or "
    "partial; those it remembered are voxmesh_asr_remembered_total.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
ASR_REMEMBERED = Counter(
    "voxmesh_asr_remembered_total",
    "Transcripts the ASR answered from its memory of the window, without the model (the turn "
    "was transcribed ahead of its pause, vad.quiet_ms).",
    ["kind"],
)
RESPONDER_FIRST_TOKEN = Histogram(
    "voxmesh_responder_first_token_seconds",
    "Reply asked of the responder (echo or the LLM endpoint) -> its first text.",
    buckets=LATENCY_BUCKETS,
)
TURNS = Counter(
    "voxmesh_turns",
    "Replies that ended, by what asked for them (voice, text, say) and how they ended "
    "(done, interrupted, failed, closed).",
    ["source", "outcome"],
)
BARGE_INS = Counter(
    "voxmesh_barge_ins",
    "User speech over the bot's reply: action=pause (the reply paused at the onset), "
    "action=stop (it was an interruption: the reply was dropped).",
    ["action"],
)

# --- the TTS actors (actors/tts/streamer.py) ------------------------------------------------

TTS_FIRST_AUDIO = Histogram(
    "voxmesh_tts_first_audio_seconds",
    "TTS actor: SPEAK received -> the utterance's first frame in the out ring.",
    buckets=LATENCY_BUCKETS,
)

# --- the supervisor (supervisor/metricsdir.py) -----------------------------------------------

ACTOR_RESTARTS = Counter(
    "voxmesh_actor_restarts",
    "Actor processes the supervisor replaced (a warm standby promoted counts too).",
    ["actor"],
)


class _Families:
    """A collector of metric families made at scrape time."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(extra: Iterable[Metric] = (), *, directory: str | None = None) -> bytes:
    """The Prometheus text of every metric of the mesh (``directory``: the multiprocess dir,
    by default the environment's), and the ``extra`` families."""
    registry = CollectorRegistry()
    path = directory or os.environ.get(MULTIPROC_ENV)
    if path:
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]  # unannotated
    else:
        registry.register(REGISTRY)  # this process's own metrics: embedded, unsupervised
    registry.register(_Families(extra))
    return generate_latest(registry)
