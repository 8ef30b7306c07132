"""The bench framework on a tiny planes comparison: figures, JSON, PNG and summary."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from voxmesh.bench import cli, registry
from voxmesh.bench.planes import planes_figures, run_variant
from voxmesh.bench.report import Figure, Row, write_json, write_png, write_summary
from voxmesh.bench.stats import summarize

SUMMARY_KEYS = {"n", "median", "p95", "p99", "max"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_summary_statistics_are_the_order_statistics() -> None:
    s = summarize(range(1, 101))  # 1..100
    assert (s.n, s.median, s.max, s.min) == (100, 50.5, 100.0, 1.0)
    assert 95.0 <= s.p95 <= 96.0 and 99.0 <= s.p99 <= 100.0
    assert summarize([]).n == 0


@pytest.mark.timeout(60)
def test_rings_stop_sooner_than_one_ordered_socket(tmp_path: Path) -> None:
    # 2 sessions, 2 pauses each, 1.2 s utterances made 14x faster than real time.
    runs = [run_variant(v, 2, 2, frames=60) for v in ("one-socket", "rings")]
    one, rings = runs
    assert len(one.pause_ms) == len(rings.pause_ms) == 4 and one.lost == rings.lost == 0
    # The in-band PAUSE waits behind the frames already queued; the rings' HOLD does not.
    assert min(one.frames_after) > 0 and max(rings.frames_after) == 0
    assert summarize(rings.pause_ms).median * 10 < summarize(one.pause_ms).median
    assert summarize(rings.pause_ms).median < 50.0
    assert not list(Path("/dev/shm").glob(f"voxmesh-{os.getpid()}-bench*"))

    figures = planes_figures(runs)
    for fig in figures:
        write_json(fig, tmp_path)
        write_png(fig, tmp_path)
    summary = write_summary(figures, tmp_path, skipped=[("pause", "why not")], mode="quick")

    data = json.loads((tmp_path / "planes_pause.json").read_text())
    assert data["machine"]["cores_logical"] >= 1 and len(data["machine"]["load_avg"]) == 3
    by_variant = {row["params"]["variant"]: row for row in data["rows"]}
    assert set(by_variant) == {"one-socket", "rings"}
    for row in by_variant.values():
        assert set(row["summary"]) >= SUMMARY_KEYS and row["summary"]["n"] == 4
        assert row["extra"]["cpu_pct_per_session"] > 0
        assert len(row["values"]) == 4
    assert by_variant["rings"]["summary"]["median"] < by_variant["one-socket"]["summary"]["median"]
    for fig in figures:
        assert (tmp_path / f"{fig.name}.png").read_bytes()[:8] == PNG_MAGIC
    text = summary.read_text()
    assert "| planes_pause | (c) rings, 2 sess | 4 |" in text
    assert "cores" in text and "## Not run" in text and "why not" in text


def test_empty_rows_still_write_json_and_png(tmp_path: Path) -> None:
    fig = Figure("empty", "nothing measured", "none", rows=[Row("no trials", [])])
    data = json.loads(write_json(fig, tmp_path).read_text())
    assert data["rows"][0]["summary"]["n"] == 0 and data["rows"][0]["summary"]["median"] is None
    assert write_png(fig, tmp_path).read_bytes()[:8] == PNG_MAGIC


def test_cli_lists_scenarios_and_rejects_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    for name in ("planes", "pause", "barge-in", "fal", "v2v", "scale"):
        assert name in listed
    assert cli.main(["--only", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_failing_scenario_is_reported_and_the_others_run(tmp_path: Path) -> None:
    registry.load_all()

    def boom(ctx: registry.BenchContext, out: registry.Outcome) -> None:
        raise RuntimeError("exploded")

    def skip(ctx: registry.BenchContext, out: registry.Outcome) -> None:
        raise registry.Skip("not here")

    saved = dict(registry.SCENARIOS)
    try:
        registry.SCENARIOS.clear()
        registry.scenario("boom", "fails", 1)(boom)
        registry.scenario("skip", "skips", 2)(skip)
        outcome = registry.run(["boom", "skip"], registry.BenchContext(log=lambda _: None))
    finally:
        registry.SCENARIOS.clear()
        registry.SCENARIOS.update(saved)
    assert outcome.skipped == [("boom", "failed: RuntimeError: exploded"), ("skip", "not here")]


@pytest.mark.parametrize("broken", ["no matplotlib", "a plot fails"])
def test_a_run_is_never_lost_to_its_plots(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    broken: str,
) -> None:
    """Without matplotlib the bench says so before it starts and writes JSON and SUMMARY.md;
    a plot that fails costs that plot only."""
    from voxmesh.bench import report
    from voxmesh.cli import bench as bench_cli

    registry.load_all()

    def tiny(ctx: registry.BenchContext, out: registry.Outcome) -> None:
        out.add(Figure("tiny", "a tiny figure", "nothing", rows=[Row("x", [1.0, 2.0, 3.0])]))

    def no_png(fig: Figure, out: Path) -> Path:
        raise RuntimeError("no display")

    monkeypatch.setitem(registry.SCENARIOS, "tiny", registry.Scenario("tiny", "tiny", tiny, 999))
    if broken == "no matplotlib":
        monkeypatch.setattr(bench_cli, "can_plot", lambda: False)
    else:
        monkeypatch.setattr(report, "write_png", no_png)

    assert cli.main(["--only", "tiny", "--out", str(tmp_path)]) == 0

    err = capsys.readouterr().err
    assert json.loads((tmp_path / "tiny.json").read_text())["rows"][0]["summary"]["n"] == 3
    assert "| tiny | x | 3 |" in (tmp_path / "SUMMARY.md").read_text()
    assert not (tmp_path / "tiny.png").exists()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    if broken == "no matplotlib":
        assert "matplotlib is not installed" in err and "voxmesh[bench]" in err
        assert "no PNG plots" in (tmp_path / "SUMMARY.md").read_text()
    else:
        assert "no plot for tiny: RuntimeError('no display')" in err


def test_peers_without_its_venv_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No .venv-peers: `--only peers` is not run, says `make peers`, and fails nothing."""
    from voxmesh.bench import peers

    monkeypatch.setattr(peers, "PEERS_PYTHON", peers.ROOT / ".venv-peers-absent" / "bin" / "python")
    assert cli.main(["--only", "peers", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "## Not run" in summary and "**peers**" in summary
    assert "`make peers`" in summary and ".venv-peers-absent/bin/python is missing" in summary


def test_a_terminated_run_stops_the_meshes_it_started(tmp_path: Path) -> None:
    """`kill` of a bench run (a cancelled job) must not leave its meshes running: they live in
    their own sessions, so only the run's own unwinding stops them."""
    argv = [sys.executable, "-m", "voxmesh.bench.cli", "--quick", "--only", "pause"]
    run = subprocess.Popen(
        [*argv, "--out", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    meshes: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not meshes and time.monotonic() < deadline and run.poll() is None:
            kids = psutil.Process(run.pid).children(recursive=True)
            meshes = [p for p in kids if "up" in p.cmdline() and "voxmesh" in p.cmdline()]
            if not meshes:
                time.sleep(0.2)  # polling another process's children: nothing to wake on
        assert meshes, "the run started no mesh"
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(meshes, timeout=30)
        assert not alive, f"meshes outlived the run: {alive}"
    finally:
        for p in meshes:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if run.poll() is None:
            run.kill()
        run.wait(10)
