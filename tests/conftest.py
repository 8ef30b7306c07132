"""Shared fixtures, and a guard that fails loudly when a test leaves things behind.

After every test: a ``/dev/shm/voxmesh-*`` segment created during the test by this process
or by a process the tests started (``meshproc.STARTED_PIDS``, or any descendant) whose owner
is no longer running (or is this very process) is a leak: the test errors and the segment
is removed. At the end of the session: any child process still running, or any segment of
ours, fails the session the same way. (Segments of other programs on the machine, such as
another engineer's test run, are not ours and are left alone.)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import meshproc
import psutil
import pytest
from meshproc import SHM_DIR, MeshProc, mesh_up

__all__ = ["MeshProc", "mesh_up"]

CHILD_GRACE_S = 5.0

# Tests that need more than Python: a browser (headless Chromium + playwright) or a
# livekit-server binary (`make livekit`). `make test-quick` runs the others
# (-m "not browser and not livekit").
BROWSER_FILES = {"test_browser.py"}
LIVEKIT_PREFIX = "test_livekit_"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: needs headless Chromium and playwright")
    config.addinivalue_line("markers", "livekit: needs the livekit-server binary (make livekit)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        if name in BROWSER_FILES:
            item.add_marker(pytest.mark.browser)
        if name.startswith(LIVEKIT_PREFIX):
            item.add_marker(pytest.mark.livekit)


def _segments() -> set[str]:
    return {p.name for p in SHM_DIR.glob("voxmesh-*")}


def _owner(name: str) -> int | None:
    text = name.removeprefix("voxmesh-").split("-", 1)[0]
    return int(text) if text.isdigit() else None


def _our_pids() -> set[int]:
    me = psutil.Process()
    return {os.getpid(), *meshproc.STARTED_PIDS, *(c.pid for c in me.children(recursive=True))}


def _remove(names: set[str]) -> None:
    for name in names:
        try:
            (SHM_DIR / name).unlink()
        except FileNotFoundError:
            pass


@pytest.fixture(autouse=True)
def _no_leaked_segments(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _segments()
    yield
    ours = _our_pids()
    leaked = {
        name
        for name in _segments() - before
        if (owner := _owner(name)) in ours
        and (owner == os.getpid() or not meshproc.pid_running(owner))
    }
    if leaked:
        _remove(leaked)
        pytest.fail(f"{request.node.nodeid} left shared-memory segments: {sorted(leaked)}")


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers_at_exit() -> Iterator[None]:
    yield
    me = psutil.Process()
    deadline = time.monotonic() + CHILD_GRACE_S
    children: list[psutil.Process] = []
    while time.monotonic() < deadline:
        children = [c for c in me.children(recursive=True) if meshproc.pid_running(c.pid)]
        if not children:
            break
        time.sleep(0.1)
    ours = _our_pids()
    leaked = {name for name in _segments() if _owner(name) in ours}
    for child in children:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    _remove(leaked)
    problems = []
    if children:
        problems.append(
            "child processes left running: "
            + ", ".join(f"{c.pid} {' '.join(_cmdline(c))[:120]}" for c in children)
        )
    if leaked:
        problems.append(f"shared-memory segments left: {sorted(leaked)}")
    if problems:
        pytest.fail("the test session left things behind: " + "; ".join(problems))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return ["?"]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshProc]:
    """A whole mesh with the mock TTS, healthy, stopped and checked for leftovers after."""
    with mesh_up(tmp_path, tts="mock") as running:
        yield running
