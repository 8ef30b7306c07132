"""The metrics (mesh/metrics.py, actors/transport/metrics.py, supervisor/metricsdir.py) and
the log setup (mesh/logsetup.py), without a mesh.

Multiprocess mode is chosen when prometheus_client is imported, so what needs it runs in
fresh interpreters (``python -c``) that write into a temp dir; this process reads the dir.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from promtext import sample

from voxmesh.actors.transport.metrics import TransportStats, families
from voxmesh.mesh import logsetup, metrics
from voxmesh.mesh.errors import ErrorCode


def transport_text(stats: TransportStats) -> str:
    own = families(stats, sessions=3, mesh_ready=True, router_alive=False, counters={"x": 2})
    return metrics.exposition(own).decode()


def test_the_transport_counters_keep_their_names() -> None:
    stats = TransportStats(frames_sent=7, underruns=1, held_requests=2)
    stats.client_errors[ErrorCode.BAD_JSON] += 2
    for lag in (0.0001, 0.003, 0.5):
        stats.observe_lag(lag)
    text = transport_text(stats)
    p = "voxmesh_transport_"
    assert sample(text, p + "sessions") == 3
    assert sample(text, p + "mesh_ready") == 1 and sample(text, p + "router_alive") == 0
    assert sample(text, p + "frames_sent_total") == 7
    assert sample(text, p + "underruns_total") == 1
    assert sample(text, p + "held_requests_total") == 2
    assert sample(text, p + "client_errors_total", code="bad_json") == 2
    assert sample(text, p + "events_total", name="x") == 2
    # cumulative buckets, +Inf = count
    assert sample(text, p + "send_lag_seconds_bucket", le="0.0005") == 1
    assert sample(text, p + "send_lag_seconds_bucket", le="0.005") == 2
    assert sample(text, p + "send_lag_seconds_bucket", le="+Inf") == 3
    assert sample(text, p + "send_lag_seconds_count") == 3
    assert sample(text, p + "send_lag_seconds_sum") == pytest.approx(0.5031)


def test_unsupervised_the_scrape_has_this_process_metrics() -> None:
    assert metrics.MULTIPROC_ENV not in os.environ  # the tests run unsupervised
    before = sample(
        transport_text(TransportStats()), "voxmesh_turns_total", source="say", outcome="done"
    )
    metrics.TURNS.labels(source="say", outcome="done").inc()
    text = transport_text(TransportStats())
    assert sample(text, "voxmesh_turns_total", source="say", outcome="done") == (before or 0) + 1
    assert "# TYPE voxmesh_voice_to_voice_seconds histogram" in text


def python(code: str, env: dict[str, str] | None = None) -> None:
    """Run ``code`` in a fresh interpreter (it must exit 0)."""
    full_env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**full_env, **(env or {})},
        check=True,
        timeout=60,
    )


def test_processes_add_up_and_the_dead_stay_counted(tmp_path: Path) -> None:
    env = {metrics.MULTIPROC_ENV: str(tmp_path)}
    for source in ("voice", "voice", "text"):  # three processes, each gone when it returns
        python(
            f"""
            from voxmesh.mesh import metrics
            metrics.TURNS.labels(source="{source}", outcome="done").inc()
            metrics.VOICE_TO_VOICE.labels(source="{source}").observe(0.3)
            metrics.TTS_FIRST_AUDIO.observe(0.004)
            """,
            env,
        )
    text = metrics.exposition(directory=str(tmp_path)).decode()
    assert sample(text, "voxmesh_turns_total", source="voice", outcome="done") == 2
    assert sample(text, "voxmesh_turns_total", source="text", outcome="done") == 1
    assert sample(text, "voxmesh_voice_to_voice_seconds_count", source="voice") == 2
    assert sample(text, "voxmesh_voice_to_voice_seconds_sum", source="voice") == pytest.approx(0.6)
    assert sample(text, "voxmesh_voice_to_voice_seconds_bucket", source="voice", le="0.25") == 0
    assert sample(text, "voxmesh_voice_to_voice_seconds_bucket", source="voice", le="0.3") == 2
    assert sample(text, "voxmesh_tts_first_audio_seconds_bucket", le="0.005") == 3


def test_the_supervisor_dir_starts_empty_and_counts_restarts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stale = run_dir / "metrics"
    stale.mkdir(parents=True)
    python(  # an earlier run's files
        """
        from voxmesh.mesh import metrics
        metrics.ACTOR_RESTARTS.labels(actor="vad").inc(5)
        """,
        {metrics.MULTIPROC_ENV: str(stale)},
    )
    assert list(stale.iterdir())
    python(
        f"""
        import os
        from pathlib import Path
        from voxmesh.supervisor.metricsdir import MULTIPROC_ENV, MetricsDir
        d = MetricsDir(Path({str(run_dir)!r}))
        d.open(["router", "vad"])
        assert os.environ[MULTIPROC_ENV] == str(d.path)
        d.restarted("vad", 999999)
        """
    )
    text = metrics.exposition(directory=str(stale)).decode()
    assert sample(text, "voxmesh_actor_restarts_total", actor="vad") == 1  # not 6
    assert sample(text, "voxmesh_actor_restarts_total", actor="router") == 0


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (configure replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_go_to_stderr_and_the_file(
    tmp_path: Path, root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.log"
    logsetup.configure("info", "json", str(path), process="router")
    log = logging.getLogger("voxmesh.router.turns")
    log.debug("not at INFO")
    log.info("turn %s", "session=ab", extra={"fields": {"event": "turn", "v2v_ms": 350.0}})
    for handler in root_logging.handlers:
        handler.flush()
    [line] = path.read_text().splitlines()
    got = json.loads(line)
    assert got == {
        **got,
        "level": "INFO",
        "process": "router",
        "pid": os.getpid(),
        "logger": "voxmesh.router.turns",
        "message": "turn session=ab",
        "event": "turn",
        "v2v_ms": 350.0,
    }
    assert json.loads(capsys.readouterr().err.strip()) == got


def test_text_logs_name_the_process(
    root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logsetup.configure("WARNING", "text", None, process="supervisor")
    logging.getLogger("voxmesh.supervisor").info("quiet")
    logging.getLogger("voxmesh.supervisor").warning("vad exited")
    err = capsys.readouterr().err
    assert "quiet" not in err
    assert f"supervisor[{os.getpid()}] WARNING voxmesh.supervisor: vad exited" in err


def test_the_grafana_dashboard_asks_only_for_metrics_and_labels_that_exist() -> None:
    """docs/grafana-dashboard.json: every series it queries is in a real scrape."""
    import re

    dash = json.loads((Path(__file__).parent.parent / "docs/grafana-dashboard.json").read_text())
    metrics.TURNS.labels(source="say", outcome="done").inc(0)  # labelled families show up
    metrics.BARGE_INS.labels(action="pause").inc(0)
    metrics.ACTOR_RESTARTS.labels(actor="asr").inc(0)
    metrics.ASR.labels(kind="final").observe(0.1)
    metrics.ASR_REMEMBERED.labels(kind="final").inc(0)
    metrics.VOICE_TO_VOICE.labels(source="say").observe(0.1)
    stats = TransportStats()
    stats.client_errors["bad_json"] += 1
    text = transport_text(stats)  # the transport's families and this process's metrics
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        for name in re.findall(r"voxmesh_\w+", expr):
            assert re.search(rf"^{name}[{{ ]", text, re.M), f"{name} is in no scrape ({expr})"
        for label in re.findall(r"by \(([\w, ]+)\)", expr):
            for key in (k.strip() for k in label.split(",") if k.strip() != "le"):
                assert f"{key}=" in text, f"label {key!r} of {expr} is in no scrape"
