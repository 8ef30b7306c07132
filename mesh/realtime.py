"""Real-time scheduling for a process whose timing is its job (the transport's frame clock).

On a box shared with model actors, a frame is late when the pacer's thread waits for a core
behind an ASR or TTS run; SCHED_RR lets it take the core at once (the pacer sleeps between
frames, so it leaves the others their cores: ~0.1 ms of CPU per frame, README "CPU and
capacity").
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("voxmesh.realtime")


def use_round_robin(priority: int, who: str) -> bool:
    """Run the calling thread (and the threads it starts from now on) SCHED_RR at
    ``priority`` (1-99; 0: leave it as it is). False, with a warning saying what is missing,
    where the system refuses."""
    if priority <= 0:
        return False
    if not hasattr(os, "sched_setscheduler"):
        log.warning("%s: realtime_priority %d: no SCHED_RR on this system", who, priority)
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except PermissionError:
        log.warning(
            "%s: realtime_priority %d refused: it needs root, CAP_SYS_NICE or an rtprio limit "
            "(limits.conf: '<user> - rtprio %d'); running at normal priority",
            who,
            priority,
            priority,
        )
        return False
    except OSError as exc:  # e.g. a container's cgroup without real-time runtime
        log.warning("%s: realtime_priority %d refused (%s)", who, priority, exc.strerror)
        return False
    log.info("%s: SCHED_RR at priority %d", who, priority)
    return True
