"""Client-facing error events: ``{"type": "error", "code": ..., "message": ...}``.

Every bad input a client can send gets one of these codes (the session and the server live
on unless the code says the connection closes):

| code              | when                                                               |
|-------------------|--------------------------------------------------------------------|
| `bad_json`        | a text message that is not valid JSON                              |
| `bad_message`     | JSON that is not an object, or has no string `type`                |
| `unknown_type`    | a `type` the server does not know                                  |
| `missing_field`   | a required field is absent (`text` of text/say, `samples` of played)|
| `bad_field`       | a field has the wrong type or value                                |
| `hello_required`  | binary audio or any other message before `hello`                   |
| `already_hello`   | a second `hello` on a session                                      |
| `bad_rate`        | `hello.sample_rate` not an integer in 8000..48000                  |
| `too_large`       | a message over `server.max_message_bytes`: dropped, the session lives |
|                   | on (past 4x the limit aiohttp itself closes the socket with 1009)  |
| `text_too_long`   | `text`/`say` text over MAX_TEXT_CHARS characters                   |
| `unauthorized`    | auth is on and `hello.token` is missing or wrong (socket closed, 1008) |
| `no_slot`         | every session slot is taken (socket closed, 1013: try again later) |
| `unavailable`     | the mesh (router) is not reachable, so text/say/interrupt is lost  |
| `internal`        | a bug on our side while serving the message (logged)               |
| `not_found`       | `POST /session` without LiveKit configured (HTTP 404)              |
| `livekit_failed`  | `POST /session` could not create the room (HTTP 502)               |
"""

from __future__ import annotations

from typing import Any, Final

MAX_TEXT_CHARS: Final = 8000  # keeps CLIENT_TEXT far below the 64 KiB control-message cap

CODES: Final = frozenset(
    {
        "bad_json",
        "bad_message",
        "unknown_type",
        "missing_field",
        "bad_field",
        "hello_required",
        "already_hello",
        "bad_rate",
        "too_large",
        "text_too_long",
        "unauthorized",
        "no_slot",
        "unavailable",
        "internal",
        "not_found",
        "livekit_failed",
    }
)


class ClientError(Exception):
    """Bad client input; becomes an ``error`` event, never a crash."""

    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message

    def event(self) -> dict[str, Any]:
        return error_event(self.code, self.message)


def error_event(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def field(msg: dict[str, Any], name: str, kind: type, what: str) -> Any:
    """``msg[name]`` checked to be a ``kind`` (bool is never an int here)."""
    if name not in msg:
        raise ClientError("missing_field", f"{what} needs a {name!r} field")
    value = msg[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ClientError("bad_field", f"{what}.{name} must be {kind.__name__}")
    return value
