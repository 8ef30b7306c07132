"""Ask a running supervisor for its STATUS and print it as a table (``voxmesh status``).

The exchange, on a DEALER connected to the supervisor's ROUTER (its endpoint is in the
state file, see ``statefile.py``): READY (as a ``client``, so the hub knows us), then
STATUS_REQUEST; the answer is STATUS; GOODBYE ends it. ``voxmesh models`` asks the same way
with MODEL_LOAD / MODEL_UNLOAD (answer: MODEL_INFO).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import zmq

from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import (
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Ready,
    Status,
    StatusRequest,
)

M = TypeVar("M", bound=Message)
HEARTBEAT_S = 0.25  # well inside the supervisor's liveness (3 x mesh.heartbeat_ms)


class StatusUnavailable(RuntimeError):
    pass


def query(endpoint: str, timeout_s: float = 3.0) -> Status:
    """The supervisor's STATUS; raises StatusUnavailable if it does not answer in time."""
    return ask(endpoint, StatusRequest(), Status, timeout_s)


def ask(endpoint: str, request: Message, answer: type[M], timeout_s: float = 3.0) -> M:
    """Send ``request`` to the supervisor and wait for its ``answer`` (STATUS, MODEL_INFO)."""
    name = f"cli-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, name.encode())
    try:
        sock.connect(endpoint)

        def send() -> None:
            for msg in (Ready(name=name, kind="client", pid=os.getpid()), request):
                sock.send_multipart(protocol.encode(msg))

        send()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            # A heartbeat now and then, or a long wait (a voice load) looks like a dead peer.
            if not sock.poll(int(min(left, HEARTBEAT_S) * 1000) + 1):
                sock.send_multipart(protocol.encode(Heartbeat()))
                continue
            try:
                msg = protocol.decode(sock.recv_multipart())
            except ProtocolError:
                continue
            if isinstance(msg, answer):
                sock.send_multipart(protocol.encode(Goodbye(reason="done")))
                return msg
            if isinstance(msg, Hello):  # the supervisor did not know us (it restarted)
                send()
        raise StatusUnavailable(f"no answer from {endpoint} within {timeout_s:g} s")
    finally:
        sock.close(linger=0)


def _pids(actor: dict[str, Any]) -> str:
    """The actor's pid, and its warm spare's after a '+' (mesh.standby)."""
    pid = str(actor.get("pid") or "-")
    spare = actor.get("standby_pid")
    return f"{pid}+{spare}" if spare else pid


def format_table(status: Status) -> str:
    """A plain-text table of the actors, then the mesh-wide lines."""
    header = (
        "ACTOR",
        "KIND",
        "HOST",
        "PID",
        "STATE",
        "SERVING",
        "RESTARTS",
        "UPTIME",
        "SESSIONS",
        "HEARTBEAT",
    )
    rows = [header]
    for actor in status.actors:
        info: dict[str, Any] = actor.get("info") or {}
        age = actor.get("heartbeat_age_s")
        rows.append(
            (
                str(actor.get("name", "?")),
                str(actor.get("kind", "?")),
                str(actor.get("host", "") or "-"),
                _pids(actor),
                str(actor.get("state", "?")),
                str(actor.get("serving", "-")),
                str(actor.get("restarts", 0)),
                _duration(float(actor.get("uptime_s", 0.0))),
                str(info.get("sessions", "-")),
                f"{age:.1f}s ago" if isinstance(age, (int, float)) else "-",
            )
        )
    lines = columns(rows)
    meta = status.info
    lines.append("")
    lines.append(
        f"mesh {meta.get('state', '?')} (supervisor pid {meta.get('pid', '?')}, "
        f"up {_duration(float(meta.get('uptime_s', 0.0)))}): {meta.get('url', '')}  "
        f"{meta.get('ws_url', '')}"
    )
    return "\n".join(lines)


def columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows (the header first) as left-aligned text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
