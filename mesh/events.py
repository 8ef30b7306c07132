"""Every JSON event the server sends a client, typed, in one place (docs/client-protocol.md).

An event is one JSON object ``{"type": <name>, <field>: <value>, ...}``: a WebSocket text
message, a LiveKit data packet, and (router -> transport) the ``event`` of a CLIENT_EVENT.
Each type is a frozen dataclass registered under its name. Senders build one and send
``as_dict()``, the wire shape; ``parse`` is its strict inverse (unknown type, unknown or
missing field, wrong type: ``EventError``), so tests can hold what the mesh sends to what
the doc says. ``voxmesh.client`` still hands its users plain dicts.

The error codes themselves are ``voxmesh.mesh.errors`` (which builds ``Error`` events).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform

from .fieldcheck import checker


class EventError(ValueError):
    """A JSON object that is not a well-formed event of a known type; all ``parse`` raises."""


class ServerEvent:
    """Base of every event; subclasses are frozen dataclasses with a unique ``TYPE``."""

    TYPE: ClassVar[str]

    def as_dict(self) -> dict[str, Any]:
        """The wire shape: ``type`` first, then the fields (an optional one only when set)."""
        out: dict[str, Any] = {"type": self.TYPE}
        optional = _OPTIONAL[type(self)]
        for name in _CHECKERS[type(self)]:
            value = getattr(self, name)
            if value is None and name in optional:
                continue  # absent, not null: clients test these with .get()
            out[name] = value
        return out


_REGISTRY: dict[str, type[ServerEvent]] = {}
_CHECKERS: dict[type[ServerEvent], dict[str, Callable[[Any], bool]]] = {}
_OPTIONAL: dict[type[ServerEvent], frozenset[str]] = {}

E = TypeVar("E", bound=type[ServerEvent])


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def event(name: str) -> Callable[[E], E]:
    """Class decorator: make a frozen dataclass and register it as event type ``name``."""

    def wrap(cls: E) -> E:
        if name in _REGISTRY:
            raise ValueError(f"event type {name!r} used twice")
        dc: Any = dataclasses.dataclass(frozen=True, slots=True)(cls)
        dc.TYPE = name
        hints = typing.get_type_hints(dc)
        fields = dataclasses.fields(dc)
        _REGISTRY[name] = dc
        _CHECKERS[dc] = {f.name: checker(hints[f.name]) for f in fields}
        _OPTIONAL[dc] = frozenset(f.name for f in fields if f.default is None)
        return typing.cast(E, dc)

    return wrap


def registry() -> dict[str, type[ServerEvent]]:
    """Every event type by name (a copy)."""
    return dict(_REGISTRY)


def field_names(cls: type[ServerEvent]) -> tuple[str, ...]:
    """The fields of an event type besides ``type``, in wire order."""
    return tuple(_CHECKERS[cls])


def optional_fields(cls: type[ServerEvent]) -> frozenset[str]:
    """The fields an event of this type may leave out."""
    return _OPTIONAL[cls]


def parse(obj: Mapping[str, Any]) -> ServerEvent:
    """The event ``obj`` is, exactly: anything else raises EventError."""
    kind = obj.get("type")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventError(f"unknown event type {kind!r}")
    checkers = _CHECKERS[cls]
    unknown = obj.keys() - checkers.keys() - {"type"}
    if unknown:
        raise EventError(f"{kind} has unknown fields {sorted(unknown)}")
    missing = checkers.keys() - _OPTIONAL[cls] - obj.keys()
    if missing:
        raise EventError(f"{kind} lacks {sorted(missing)}")
    for name, check in checkers.items():
        if name in obj and not check(obj[name]):
            raise EventError(f"{kind}.{name} has a wrong type or value: {obj[name]!r}")
    return cls(**{name: obj[name] for name in checkers if name in obj})


# --- the events, in the order docs/client-protocol.md lists them ---------------------------


@event("ready")
class Ready(ServerEvent):
    """The session is open (the answer to ``hello``); audio comes in these units."""

    session_id: str
    sample_rate: int
    frame_ms: int
    # What writes the replies, as the router announced it: ``echo``, or ``openai:<model>``
    # (absent while the transport has not heard from a router yet).
    responder: str | None = None


@event("state")
class State(ServerEvent):
    """The session's turn state changed (a ``voxmesh.actors.router.session.State`` value)."""

    state: str


@event("vad")
class Vad(ServerEvent):
    """The user started or stopped speaking, at 16 kHz mic sample ``sample``."""

    event: Literal["speech_start", "speech_end"]
    sample: int


@event("transcript")
class Transcript(ServerEvent):
    """What the user said: partial while ``final`` is false. ``continues`` (only when
    true): the user went on within router.continue_ms of the end of their turn, so this is
    that whole turn again and replaces the last final transcript (its reply was stopped)."""

    text: str
    final: bool
    continues: bool | None = None


@event("reply")
class Reply(ServerEvent):
    """The bot's text for the turn."""

    text: str


@event("audio_start")
class AudioStart(ServerEvent):
    """The first frame of utterance ``utterance_id`` follows."""

    utterance_id: int


@event("audio_end")
class AudioEnd(ServerEvent):
    """Utterance ``utterance_id`` ended: ``done``, ``interrupted`` or ``failed``."""

    utterance_id: int
    reason: str


@event("heard")
class Heard(ServerEvent):
    """After ``audio_end`` ``interrupted``: the part of utterance ``utterance_id``'s reply the
    user heard (what the bot remembers having said; ends in ``...`` when cut)."""

    utterance_id: int
    text: str


@event("clear")
class Clear(ServerEvent):
    """Drop buffered playback now. The WebSocket adds the bench's pause timing
    (``time.monotonic()`` on the server) where it has it."""

    t_issued: float | None = None
    t_last_frame: float | None = None


@event("voice")
class Voice(ServerEvent):
    """A voice switch was accepted (``""``: the mesh's default)."""

    voice: str


@event("error")
class Error(ServerEvent):
    """Something went wrong; ``code`` is a ``voxmesh.mesh.errors.ErrorCode`` value."""

    code: str
    message: str
