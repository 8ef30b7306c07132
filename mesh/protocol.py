"""The voxmesh control protocol: one envelope, one byte per command, typed messages.

A message on the wire is three ZeroMQ frames (a ROUTER adds the peer identity in front):

    [b"VXM1", bytes([command]), msgpack(map of fields)]

Every message type is a frozen dataclass registered here with its one-byte id. Decoding is
strict: anything that is not a well-formed message of a known type raises ``ProtocolError``
and nothing else, so an actor can count and drop garbage without ever dying from it.
Unknown *fields* are ignored (a newer peer may add optional fields); missing required
fields, wrong types and unknown commands are errors. See docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, dataclass_transform

import msgpack

from .fieldcheck import checker

VERSION = b"VXM1"
MAX_BODY_BYTES = 64 * 1024


class ProtocolError(ValueError):
    """Raised for any input that is not a valid message; the only error decode() raises."""


class Message:
    """Base of every message; subclasses are frozen dataclasses with a unique ``ID``."""

    ID: ClassVar[int]

    def fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS[type(self)]}


_REGISTRY: dict[int, type[Message]] = {}
_FIELDS: dict[type[Message], tuple[str, ...]] = {}
_CHECKERS: dict[type[Message], dict[str, Callable[[Any], bool]]] = {}
_REQUIRED: dict[type[Message], frozenset[str]] = {}

M = TypeVar("M", bound=type[Message])


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def message(msg_id: int) -> Callable[[M], M]:
    """Class decorator: make a frozen dataclass and register it under ``msg_id``."""

    def wrap(cls: M) -> M:
        if not 0 < msg_id < 256:
            raise ValueError("message id must fit one byte")
        if msg_id in _REGISTRY:
            raise ValueError(f"message id {msg_id:#04x} used twice")
        dc: Any = dataclasses.dataclass(frozen=True, slots=True)(cls)
        dc.ID = msg_id
        hints = typing.get_type_hints(dc)
        fields = dataclasses.fields(dc)
        _REGISTRY[msg_id] = dc
        _FIELDS[dc] = tuple(f.name for f in fields)
        _CHECKERS[dc] = {f.name: checker(hints[f.name]) for f in fields}
        _REQUIRED[dc] = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        return typing.cast(M, dc)

    return wrap


def encode(msg: Message) -> list[bytes]:
    """The frames of ``msg`` (without any identity frame)."""
    body = msgpack.packb(msg.fields(), use_bin_type=True)
    return [VERSION, bytes((msg.ID,)), body]


def decode(frames: Sequence[bytes]) -> Message:
    """Parse the frames after any identity frame; raises ProtocolError on anything invalid."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    version, command, body = frames
    if version != VERSION:
        raise ProtocolError(f"bad version frame {bytes(version[:8])!r}")
    if len(command) != 1:
        raise ProtocolError("command frame must be one byte")
    cls = _REGISTRY.get(command[0])
    if cls is None:
        raise ProtocolError(f"unknown command {command[0]:#04x}")
    if len(body) > MAX_BODY_BYTES:
        raise ProtocolError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=MAX_BODY_BYTES)
    except Exception as exc:  # msgpack raises many types; callers see one
        raise ProtocolError(f"body is not msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("body must be a map")
    missing = _REQUIRED[cls] - data.keys()
    if missing:
        raise ProtocolError(f"{cls.__name__} lacks {sorted(missing)}")
    checkers = _CHECKERS[cls]
    kwargs = {}
    for name, check in checkers.items():
        if name in data:
            value = data[name]
            if not check(value):
                raise ProtocolError(f"{cls.__name__}.{name} has wrong type {type(value).__name__}")
            kwargs[name] = value
    return cls(**kwargs)


def registry() -> dict[int, type[Message]]:
    """Every registered message type by id (a copy)."""
    return dict(_REGISTRY)


# --- liveness and lifecycle (0x01-0x0f) -----------------------------------------------------


@message(0x01)
class Ready(Message):
    """An actor is up and serving. Sent on connect and after every reconnect."""

    name: str
    kind: str
    pid: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    token: str = ""  # mesh/auth.py: proves the sender was started by this run's supervisor


@message(0x02)
class Heartbeat(Message):
    """I am alive. ``info`` carries load, sessions and resident models for routing."""

    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@message(0x03)
class Shutdown(Message):
    """Stop cleanly within ``deadline_ms``; the sender kills you after that."""

    deadline_ms: int = 3000


@message(0x04)
class Goodbye(Message):
    """The sender is leaving on purpose (not a crash)."""

    reason: str = ""


@message(0x05)
class StatusRequest(Message):
    """Ask a supervisor or router for its view of the mesh."""


@message(0x06)
class Status(Message):
    """Answer to StatusRequest: one map per actor, plus mesh-wide figures."""

    actors: list[dict[str, Any]]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@message(0x07)
class MeshHealth(Message):
    """Router -> transport: each expected actor's state (drives GET /health).

    States: ``up``, ``starting`` (not seen yet), ``restarting`` (lost, expected back within
    the hold time), ``lost`` (gone for longer).
    """

    ready: bool
    actors: dict[str, Any] = dataclasses.field(default_factory=dict)
    responder: str = ""  # what writes the replies: "echo" or "openai:<model>" (the page shows it)


@message(0x08)
class Hello(Message):
    """Hub -> peer: "I do not know you" (e.g. the hub restarted); answer with Ready."""


@message(0x09)
class PeerGone(Message):
    """Supervisor -> router: the process of actor ``name`` (``pid``) has exited.

    The supervisor sees an exit at once (SIGCHLD); with this the router need not wait for
    missed heartbeats before it fails work over and /health says so.
    """

    name: str
    pid: int


# --- sessions and client input (0x10-0x1f) --------------------------------------------------


@message(0x10)
class SessionOpen(Message):
    """Transport -> router -> vad/asr: a client connected and owns ring slot ``slot``."""

    session: str
    slot: int
    generation: int
    client: str = "ws"
    # A re-announcement to a restarted router carries where the session stands, so its
    # turns go on fenced by the same epochs the TTS actors and the transport hold.
    epoch: int = 0
    utterance: int = 0  # the utterance being played now (0: none)
    utterances: int = 0  # the highest utterance id the session has seen
    # Router -> a restarted VAD/ASR: the session is older than you; read its mic ring from
    # the head, so audio judged before the restart is not taken for new speech.
    resume: bool = False
    voice: str = ""  # the session's voice, as the router last confirmed it (kept over restarts)
    partial_ms: int = 0  # partial transcripts while the user speaks, at most every N ms; 0 none


@message(0x11)
class SessionClose(Message):
    """The session is gone; its slot is free again."""

    session: str
    reason: str = ""


@message(0x12)
class ClientText(Message):
    """Client text: ``mode`` "text" (as if spoken) or "say" (speak exactly this)."""

    session: str
    text: str
    mode: str = "text"


@message(0x13)
class ClientInterrupt(Message):
    """The client asked to stop the bot now."""

    session: str


@message(0x15)
class ClientVoice(Message):
    """The client chose a voice (``hello.voice`` or a ``voice`` message): ``engine:voice``,
    or "" for the mesh's default; it applies from the next utterance."""

    session: str
    voice: str


@message(0x14)
class ClientEvent(Message):
    """Router -> transport: one JSON event (``mesh/events.py``) to forward to the client."""

    session: str
    event: dict[str, Any]


# --- turns and audio flow (0x20-0x2f); every one carries the turn's epoch -------------------


@message(0x20)
class Speak(Message):
    """Router -> TTS: synthesize ``text`` into the session's out ring.

    Chunks of one utterance share ``utterance``; ``last`` marks its final chunk.
    """

    session: str
    slot: int
    epoch: int
    utterance: int
    text: str
    first: bool = True
    last: bool = True
    voice: str = ""
    chunk: int = 0  # index of this chunk within the utterance (for SPEAK_PROGRESS)
    generation: int = 0  # the slot's generation: a remote TTS stamps its FRAMEs with it


@message(0x21)
class Pause(Message):
    """Router -> TTS: stop writing frames (keep state: a RESUME may follow)."""

    session: str
    epoch: int


@message(0x22)
class Resume(Message):
    """Router -> TTS: continue writing frames after a PAUSE."""

    session: str
    epoch: int


@message(0x23)
class Stop(Message):
    """Router -> TTS and transport: drop the turn; ``epoch`` is the new, bumped epoch.

    ``reason`` is what the client's ``audio_end`` says of a reply it cuts: ``interrupted``
    (the default) or ``failed`` (the reply could not be finished).
    """

    session: str
    epoch: int
    reason: str = "interrupted"


@message(0x24)
class Hold(Message):
    """Router -> transport: stop sending frames now and tell the client to clear."""

    session: str
    epoch: int
    t_issued: float = 0.0


@message(0x25)
class Release(Message):
    """Router -> transport: resume playback from the first sample the user has not heard."""

    session: str
    epoch: int


@message(0x26)
class SpeakDone(Message):
    """TTS -> router: an utterance's last frame is in the ring (or it failed: ``error``)."""

    session: str
    epoch: int
    utterance: int
    samples: int
    error: str = ""


@message(0x27)
class PlaybackStarted(Message):
    """Transport -> router: the first frame of an utterance went out at ``t``; again when a
    RELEASE lets one play on that a HOLD cut (its first frames may beat the HOLD)."""

    session: str
    epoch: int
    utterance: int
    t: float


@message(0x28)
class PlaybackEnded(Message):
    """Transport -> router: an utterance finished or was cut; what was sent and heard."""

    session: str
    epoch: int
    utterance: int
    sent_samples: int
    heard_samples: int
    reason: str
    t: float


@message(0x29)
class SpeakProgress(Message):
    """TTS -> router: chunk ``chunk`` (0-based) of an utterance is wholly in the out ring.

    With it the router can hand the rest of a reply to another TTS actor when this one dies.
    """

    session: str
    epoch: int
    utterance: int
    chunk: int


# --- speech (0x30-0x3f) ---------------------------------------------------------------------


@message(0x30)
class VadEvent(Message):
    """VAD -> router: speech_start | speech_pause | speech_resume | speech_end.

    ``sample`` is the absolute 16 kHz mic sample index; ``t`` when VAD decided.
    """

    session: str
    kind: str
    sample: int
    t: float


@message(0x31)
class AsrRequest(Message):
    """Router -> ASR: transcribe mic samples [start, end) of the session."""

    session: str
    turn: int
    start: int
    end: int
    final: bool


@message(0x32)
class Transcript(Message):
    """ASR -> router: the text of [start, end) for ``turn``."""

    session: str
    turn: int
    text: str
    final: bool
    end: int
    elapsed_ms: float = 0.0
    no_speech: float = 0.0  # Whisper's no-speech probability of the window (0: not known)
    logprob: float = 0.0  # Whisper's mean token log-probability of ``text`` (0: not known)
    remembered: bool = False  # answered from the ASR's memory of this window, not the model


@message(0x33)
class TurnWords(Message):
    """Router -> VAD: do the words ASR heard up to the pause at ``sample`` stop
    mid-sentence ("I would like to go to")? Then the VAD keeps the turn open."""

    session: str
    sample: int
    mid_sentence: bool


# --- models (0x40-0x4f) ---------------------------------------------------------------------


@message(0x40)
class ModelLoad(Message):
    """Load (and warm up) a voice on a TTS actor; ``voxmesh models load`` sends it to the
    supervisor, which picks the actor (``actor``, or one that has the voice) and relays."""

    model: str
    actor: str = ""


@message(0x41)
class ModelUnload(Message):
    model: str
    actor: str = ""


@message(0x42)
class ModelList(Message):
    """Ask a TTS actor which models it knows and which are resident."""

    actor: str = ""  # (relayed through the router to a TTS actor on another host)


@message(0x43)
class ModelInfo(Message):
    """TTS -> asker: known and resident models, or an error for a failed LOAD."""

    available: list[str]
    resident: list[str]
    error: str = ""
    actor: str = ""  # who answers (set by the TTS actor)


# --- the data plane beyond one host (0x50-0x5f): on the bridge's data socket only ----------


@message(0x50)
class Frame(Message):
    """Remote TTS -> bridge: one 20 ms out frame for ``slot`` (docs/protocol.md section 5).

    ``seq`` counts this writer's frames of (slot, generation) from 0 on one connection; the
    writer sends ``seq < granted`` only (the last CREDIT, or ``INITIAL_CREDIT`` before one).
    """

    session: str
    slot: int
    generation: int
    epoch: int
    utterance: int
    flags: int
    seq: int
    pcm: bytes  # 960 samples, s16 little-endian, 48 kHz mono


@message(0x51)
class Credit(Message):
    """Bridge -> remote TTS: it may send the frames of (slot, generation) below ``granted``."""

    slot: int
    generation: int
    granted: int
    capacity: int = 0  # the out ring's size in frames (for the writer's bookkeeping)


INITIAL_CREDIT = 16  # frames a writer may send of a new (slot, generation) before any CREDIT


@message(0x52)
class MicSubscribe(Message):
    """Remote VAD/ASR -> bridge: stream the mic ring of (slot, generation) to this socket.

    ``kind`` is the reader the subscriber stands for (the bridge waits on the ring in that
    reader's entry); ``start`` the first frame seq wanted, -1 for only frames written from
    now on (older than the ring still holds: from its oldest frame).
    """

    session: str
    slot: int
    generation: int
    kind: str  # "vad" or "asr"
    start: int = -1


@message(0x53)
class Mic(Message):
    """Bridge -> remote VAD/ASR: consecutive 20 ms mic frames of (slot, generation), the
    first one ``seq`` (its absolute sample is ``seq * 320``). ``t`` is when the last of them
    was written into the ring, on the session host's monotonic clock: only the difference
    between two MICs' ``t`` and their arrival means anything to the receiver."""

    slot: int
    generation: int
    seq: int
    t: float
    pcm: bytes  # n * 320 samples, s16 little-endian, 16 kHz mono


@message(0x54)
class MicUnsubscribe(Message):
    """Remote VAD/ASR -> bridge: stop streaming (slot, generation) to this socket."""

    slot: int
    generation: int
