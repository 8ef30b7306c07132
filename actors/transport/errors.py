"""Client-facing errors: ``{"type": "error", "code": ..., "message": ...}``.

The codes, and what each means, are ``voxmesh.mesh.errors.ErrorCode`` (the one table for
the whole mesh; actors/transport/README.md shows it). This module adds the exception the
transport raises for bad client input and the checked field reader.
"""

from __future__ import annotations

from typing import Any, Final

from voxmesh.mesh.errors import ErrorCode, error_event

__all__ = ["MAX_TEXT_CHARS", "ClientError", "ErrorCode", "error_event", "field"]

MAX_TEXT_CHARS: Final = 8000  # keeps CLIENT_TEXT far below the 64 KiB control-message cap


class ClientError(Exception):
    """Bad client input; becomes an ``error`` event, never a crash."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode.of(code)  # a plain string that is no code fails here, loudly
        self.message = message

    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = error_event(self.code, self.message)
        return event


def valid_text(value: str) -> bool:
    """False for a string with a lone surrogate (JSON ``"\\udfff"`` parses to one): it is
    not Unicode, cannot be encoded as UTF-8 and must not travel further."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def field(msg: dict[str, Any], name: str, kind: type, what: str) -> Any:
    """``msg[name]`` checked to be a ``kind`` (bool is never an int here; a str must be
    valid Unicode)."""
    if name not in msg:
        raise ClientError(ErrorCode.MISSING_FIELD, f"{what} needs a {name!r} field")
    value = msg[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ClientError(ErrorCode.BAD_FIELD, f"{what}.{name} must be {kind.__name__}")
    if isinstance(value, str) and not valid_text(value):
        raise ClientError(ErrorCode.BAD_FIELD, f"{what}.{name} is not valid Unicode")
    return value
