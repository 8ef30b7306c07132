"""``server.realtime_priority``: the transport's thread runs SCHED_RR, or says why not.

In a child process: SCHED_RR would outlive the test in this one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_RR"), reason="Linux scheduling")

CHILD = """
import logging, os, sys, threading
from voxmesh.mesh.realtime import use_round_robin
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
ok = use_round_robin(int(sys.argv[1]), "transport")
seen = []
t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
t.start(); t.join()
print(ok, os.sched_getscheduler(0), os.sched_getparam(0).sched_priority, seen[0])
"""


def run_child(priority: int) -> tuple[list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(priority)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split(), done.stderr


def test_a_permitted_priority_is_round_robin_for_later_threads_too_else_a_warning() -> None:
    (ok, policy, prio, thread_policy), err = run_child(7)
    if ok == "True":
        assert int(policy) == os.SCHED_RR and int(prio) == 7
        assert int(thread_policy) == os.SCHED_RR  # the loop's helper threads inherit it
        assert "SCHED_RR at priority 7" in err
    else:  # not root, no CAP_SYS_NICE: it runs on, and the log says what it needs
        assert int(policy) == os.SCHED_OTHER
        assert "realtime_priority 7 refused" in err and "WARNING" in err


def test_priority_zero_leaves_the_scheduler_alone() -> None:
    (ok, policy, _, _), err = run_child(0)
    assert ok == "False" and int(policy) == os.SCHED_OTHER and err == ""
