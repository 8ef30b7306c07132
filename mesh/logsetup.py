"""How every process of the mesh logs (``[log]`` in mesh/settings.py): one line per record,
as text or as a JSON object, to stderr and, if ``file`` is set, appended to that file too.

The supervisor and each actor process append to the same file; each record is one line
(newlines in a JSON message are escaped), so lines of different processes never mix.
A record's ``extra={"fields": {...}}`` (the router's per-turn lines, actors/router/turnlog.py)
become keys of its JSON object; the text format shows the message only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, process, pid, logger, message, fields."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(fmt: LogFormat, process: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(process)
    return logging.Formatter(
        f"%(asctime)s {process}[%(process)d] %(levelname)s %(name)s: %(message)s"
    )


def configure(level: str, fmt: LogFormat, file: str | None, *, process: str = "voxmesh") -> None:
    """Set up the root logger of this process (``process``: the name its lines carry, e.g.
    ``supervisor`` or ``tts0``). Replaces any handlers set up before."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        handlers.append(logging.FileHandler(Path(file).expanduser(), encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter(fmt, process))
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=handlers, force=True
    )
