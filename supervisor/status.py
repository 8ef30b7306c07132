"""Ask a running supervisor for its STATUS and print it as a table (``voxmesh status``).

The exchange, on a DEALER connected to the supervisor's ROUTER (its endpoint is in the
state file, see ``statefile.py``): READY (as a ``client``, so the hub knows us), then
STATUS_REQUEST; the answer is STATUS; GOODBYE ends it.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import zmq

from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import Goodbye, Hello, ProtocolError, Ready, Status, StatusRequest


class StatusUnavailable(RuntimeError):
    pass


def query(endpoint: str, timeout_s: float = 3.0) -> Status:
    """The supervisor's STATUS; raises StatusUnavailable if it does not answer in time."""
    name = f"status-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, name.encode())
    try:
        sock.connect(endpoint)

        def ask() -> None:
            for msg in (Ready(name=name, kind="client", pid=os.getpid()), StatusRequest()):
                sock.send_multipart(protocol.encode(msg))

        ask()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                break
            try:
                msg = protocol.decode(sock.recv_multipart())
            except ProtocolError:
                continue
            if isinstance(msg, Status):
                sock.send_multipart(protocol.encode(Goodbye(reason="done")))
                return msg
            if isinstance(msg, Hello):
                ask()
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
                _pids(actor),
                str(actor.get("state", "?")),
                str(actor.get("serving", "-")),
                str(actor.get("restarts", 0)),
                _duration(float(actor.get("uptime_s", 0.0))),
                str(info.get("sessions", "-")),
                f"{age:.1f}s ago" if isinstance(age, (int, float)) else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    meta = status.info
    lines.append("")
    lines.append(
        f"mesh {meta.get('state', '?')} (supervisor pid {meta.get('pid', '?')}, "
        f"up {_duration(float(meta.get('uptime_s', 0.0)))}): {meta.get('url', '')}  "
        f"{meta.get('ws_url', '')}"
    )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
