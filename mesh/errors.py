"""Every error code the mesh can send a client, in one place.

A client sees ``{"type": "error", "code": <code>, "message": <text>}``. The code is the
contract (scripts branch on it); the message is for people. ``actors/transport/README.md``
documents the same table, and ``tests/test_error_codes.py`` checks the two agree.
"""

from __future__ import annotations

import enum
from typing import Any

from voxmesh.mesh import events


class ErrorCode(enum.StrEnum):
    """A client-visible error code. ``retryable`` codes mean: nothing was lost, try again."""

    description: str

    def __new__(cls, value: str, description: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    # --- bad input (the session and the server live on unless noted) ---
    BAD_JSON = "bad_json", "a text message that is not valid JSON"
    BAD_MESSAGE = "bad_message", "JSON that is not an object, or without a string `type`"
    UNKNOWN_TYPE = "unknown_type", "a `type` the server does not know"
    MISSING_FIELD = "missing_field", "a required field is absent (`sample_rate`, `text`, `samples`)"
    BAD_FIELD = (
        "bad_field",
        "a field of the wrong type or value (empty text, a string that is not valid Unicode, "
        "`played.samples` negative or past what was sent)",
    )
    HELLO_REQUIRED = "hello_required", "audio or any other message before `hello`"
    ALREADY_HELLO = "already_hello", "a second `hello`"
    BAD_RATE = "bad_rate", "`sample_rate` not an integer in 8000-48000"
    TOO_LARGE = (
        "too_large",
        "a message over `server.max_message_bytes` (dropped); past 4 times the limit the socket "
        "is closed (1009)",
    )
    TEXT_TOO_LONG = "text_too_long", "`text`/`say` over 8000 characters"
    UNAUTHORIZED = (
        "unauthorized",
        "auth is on and the token is missing or wrong (WebSocket closed with 1008; HTTP 401)",
    )
    UNKNOWN_VOICE = (
        "unknown_voice",
        "a `voice` (in `hello` or a `voice` message) no TTS actor offers; the session keeps "
        "its voice",
    )
    NO_SLOT = "no_slot", "every session slot is taken; the socket is closed (1013, try again later)"
    SLOW_READER = (
        "slow_reader",
        "the client has not read its socket for `server.slow_reader_s` with audio queued; "
        "the socket is closed (1008)",
    )
    # --- the mesh could not serve (nothing the client did wrong) ---
    UNAVAILABLE = (
        "unavailable",
        "retry: an actor the request needs is restarting and did not come back within "
        "`mesh.hold_s`; the request was not served, nothing else was lost",
    )
    INTERNAL = "internal", "a bug on our side while serving the message (logged)"
    RESPONDER_FAILED = "responder_failed", "the responder (echo or the LLM endpoint) failed"
    TTS_FAILED = "tts_failed", "the TTS engine failed on the reply text"
    TTS_LOST = (
        "tts_lost",
        "the TTS actor speaking the reply died and no TTS actor came back within "
        "`mesh.hold_s`; the reply ends with `audio_end` reason `failed`",
    )
    STUCK_TURN = "stuck_turn", "no audio flowed for a released reply for `router.watchdog_ms`"
    # --- HTTP only ---
    NOT_FOUND = "not_found", "`POST /session` without LiveKit configured (HTTP 404)"
    LIVEKIT_FAILED = "livekit_failed", "`POST /session` could not create a room (HTTP 502)"

    @property
    def retryable(self) -> bool:
        return self is ErrorCode.UNAVAILABLE

    @classmethod
    def of(cls, value: str) -> ErrorCode:
        """The code whose value is ``value``; ValueError for anything else."""
        for code in cls:
            if code.value == value:
                return code
        raise ValueError(f"{value!r} is not an error code")


def error_event(code: ErrorCode, message: str) -> dict[str, Any]:
    """The client event for ``code`` (an ``events.Error``, as sent)."""
    return events.Error(code=code.value, message=message).as_dict()


def markdown_table() -> str:
    """The code table as docs show it (``tests/test_error_codes.py`` compares)."""
    rows = ["| code | when |", "|---|---|"]
    rows += [f"| `{code.value}` | {code.description} |" for code in ErrorCode]
    return "\n".join(rows)
