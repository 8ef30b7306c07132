"""The router actor: the mesh's control hub, sessions, turn-taking and dialogue.

It binds the ROUTER socket every other actor connects to, keeps one ``Session`` per client,
and routes each utterance to a TTS actor (sticky per session; the least-loaded live one
that has the voice resident). It attaches the ring segment read-only in spirit: only to
read mic and out heads for partial transcripts and the watchdog.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import time
from typing import Any

import zmq

from voxmesh.mesh import events
from voxmesh.mesh.actor import Actor
from voxmesh.mesh.clock import LoopClock
from voxmesh.mesh.errors import ErrorCode, error_event
from voxmesh.mesh.hub import Hub, Peer, RemoteBind
from voxmesh.mesh.protocol import (
    ClientEvent,
    ClientInterrupt,
    ClientText,
    ClientVoice,
    MeshHealth,
    Message,
    ModelInfo,
    ModelList,
    ModelLoad,
    ModelUnload,
    PeerGone,
    PlaybackEnded,
    PlaybackStarted,
    SessionClose,
    SessionOpen,
    Speak,
    SpeakDone,
    SpeakProgress,
    Transcript,
    VadEvent,
)
from voxmesh.mesh.ring import MIC_FRAME_SAMPLES, RingSegment
from voxmesh.mesh.settings import AsrSettings, RemoteSettings, RouterSettings, TtsSettings
from voxmesh.mesh.sockets import log
from voxmesh.mesh.spec import ActorSpec, MeshPlace

from . import turnlog
from .responder import Responder, make_responder
from .session import Session
from .turns import TurnConfig, TurnEngine

# Kinds that read the mic ring. Each session has one of each (``readers``), on this host or
# on another (through the bridge): two VADs would both judge it, and their events fight.
SESSION_PEERS = ("vad", "asr")
# Who may send what: a message from any other kind of peer is refused and counted, so that
# (for instance) only the transport speaks for clients.
SENDERS: dict[type[Message], str] = {
    SessionOpen: "transport",
    SessionClose: "transport",
    ClientText: "transport",
    ClientInterrupt: "transport",
    ClientVoice: "transport",
    PlaybackStarted: "transport",
    PlaybackEnded: "transport",
    VadEvent: "vad",
    Transcript: "asr",
    SpeakDone: "tts",
    SpeakProgress: "tts",
}
LOST_AFTER_S = 10.0  # an actor away this long is reported "lost", before that "restarting"
# Client requests for a session we do not know yet: after we restart, the transport's
# requests can reach us before it has re-announced its sessions. Held this long (hold_s),
# at most this many sessions and requests each.
EARLY_SESSIONS = 256
EARLY_PER_SESSION = 16


class RouterActor(Actor):
    kind = "router"

    def __init__(
        self,
        name: str,
        place: MeshPlace,
        *,
        responder: Responder,
        turn: TurnConfig | None = None,
        expected: list[str] | None = None,
        remote: RemoteBind | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.remote = remote  # a tcp endpoint for actors on other hosts (mesh/hub.py)
        # The router binds ``place.router``: it does not link to a router itself.
        super().__init__(name, dataclasses.replace(place, router=None), context=context)
        assert place.router is not None, "the router needs an endpoint to bind"
        self.bind = place.router
        self.segment_name = place.segment or None
        self.expected = list(expected or [])
        self.hold_s = hold_s = place.hold_s
        self.sessions: dict[str, Session] = {}
        # The real clock, on time.monotonic(): the base of the `now` _tick hands the engine.
        self.engine = TurnEngine(
            self, responder, turn or TurnConfig(hold_s=hold_s), clock=LoopClock()
        )
        # name -> (state, since): "starting" until first READY, "up", then "restarting"/"lost"
        self.actor_states: dict[str, tuple[str, float]] = {
            n: ("starting", time.monotonic()) for n in self.expected
        }
        self._transport_pid: int | None = None
        self._pids: dict[str, int] = {}  # the process each peer name last READYed from
        self._early: dict[str, list[tuple[float, Message]]] = {}  # session -> held requests
        self._tts_up: asyncio.Event | None = None
        self.readers: dict[tuple[str, str], str] = {}  # (session, kind) -> the actor reading it
        self._asr_due: dict[str, float] = {}  # session -> when its owed final is given up
        self.responder = responder
        self.hub: Hub | None = None
        self.segment: RingSegment | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def on_start(self) -> None:
        self._tts_up = asyncio.Event()
        if self.segment_name:
            self.segment = RingSegment.attach(self.segment_name)
        self.hub = Hub(
            self.context,
            self.bind,
            self._on_hub_message,
            on_ready=self._on_ready,
            on_lost=self._on_lost,
            heartbeat_s=self.heartbeat_s,
            liveness=self.liveness,
            counters=self.counters,
            heartbeat_info=self.info,
            secret=self.secret,
            hold_s=self.hold_s,
            remote=self.remote,
        )
        if self.remote is not None:
            log.info("router: remote actors on %s (CURVE)", self.remote.endpoint)
        self.every(self.heartbeat_s / 5, self._tick)
        self.every(1.0, lambda now: self._publish_health())

    async def on_stop(self) -> None:
        await self.responder.aclose()
        if self.hub is not None:
            self.hub.close()
        if self.segment is not None:
            self.segment.close()

    def info(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for s in self.sessions.values():
            states[s.state.value] = states.get(s.state.value, 0) + 1
        peers = sorted(self.hub.peers) if self.hub else []
        return {
            "sessions": len(self.sessions),
            "states": states,
            "peers": peers,
            "health": self.health_states(time.monotonic()),  # voxmesh status shows it
            "remote": self.remote_peers(),
            "counters": dict(self.counters),  # refused, malformed...: what peers got wrong
        }

    def remote_peers(self) -> list[dict[str, Any]]:
        """The actors that joined over tcp, as `voxmesh status` lists them."""
        if self.hub is None:
            return []
        now = time.monotonic()
        return [
            {
                "name": p.name,
                "kind": p.kind,
                "pid": p.pid,
                "host": str(p.info.get("host", "")),
                "key": p.key,
                "uptime_s": round(now - p.ready_at, 3),
                "heartbeat_age_s": round(now - p.last_seen, 3),
                "info": p.info,
            }
            for p in self.hub.peers.values()
            if p.key
        ]

    def _tick(self, now: float) -> None:
        assert self.hub is not None
        self.hub.tick(now)
        self._expire_early(now)
        self._asr_overdue(now)
        for s in list(self.sessions.values()):
            self.engine.poll_partials(s, now)
            self.engine.watchdog(s, now, functools.partial(self._out_mark, s))

    # --- Outbox for the turn engine --------------------------------------------------------

    def to_transport(self, msg: Message) -> None:
        self._send("transport", msg)

    def to_asr(self, msg: Message) -> None:
        s = self.sessions.get(getattr(msg, "session", ""))
        asr = self._reader(s, "asr") if s is not None else None
        if asr is not None and self._send(asr, msg):
            return
        self.counters.bump("no_asr")
        if s is not None:
            self._owe_final(s)

    def asr_remembers(self, session: Session) -> bool:
        assert self.hub is not None
        peer = self.hub.peers.get(self.readers.get((session.id, "asr"), ""))
        return peer is not None and int(peer.info.get("remembers", 0) or 0) > 0

    def to_vad(self, session: Session, msg: Message) -> None:
        # Only to the VAD reading the session now: a hint for a pause is moot to another.
        vad = self.readers.get((session.id, "vad"))
        if vad is not None and self.hub is not None and vad in self.hub.peers:
            self._send(vad, msg)

    def _owe_final(self, s: Session) -> None:
        """A final transcript ``s`` waits for and no ASR can give now: it is held in the
        session and asked again when an ASR comes back (asr_back), within hold_s."""
        if s.final_request is not None:
            self._asr_due.setdefault(s.id, time.monotonic() + self.hold_s)

    def _reader(self, s: Session, kind: str) -> str | None:
        """The live ``kind`` actor that reads ``s``'s mic: the one it has, else the one with
        the fewest sessions (this host's first), which is sent the SESSION_OPEN now."""
        assert self.hub is not None
        name = self.readers.get((s.id, kind))
        if name is not None and name in self.hub.peers:
            return name
        pick = self._fewest(s, kind)
        if pick is None:
            return None
        # resume: a VAD taking over reads from the ring's head (an ASR always from its start)
        self._send(pick, self._session_open(s, resume=name is not None))
        return pick

    @staticmethod
    def _session_open(s: Session, *, resume: bool) -> SessionOpen:
        return SessionOpen(
            session=s.id, slot=s.slot, generation=s.generation, client=s.client, resume=resume
        )

    def _asr_overdue(self, now: float) -> None:
        """A final transcript no ASR came back to give within hold_s: the client is told, and
        the turn ends as one with nothing heard (never a silent wait)."""
        for sid, due in list(self._asr_due.items()):
            s = self.sessions.get(sid)
            req = s.final_request if s is not None else None
            if s is None or req is None:
                del self._asr_due[sid]
            elif now >= due:
                del self._asr_due[sid]
                self.counters.bump("asr_lost")
                why = f"no speech recognizer came back within {self.hold_s:g} s: say it again"
                self.event(s, error_event(ErrorCode.UNAVAILABLE, why))
                nothing = Transcript(session=sid, turn=req.turn, text="", final=True, end=req.end)
                self.engine.on_transcript(s, nothing)

    def to_tts(self, session: Session, msg: Message) -> bool:
        voice = msg.voice if isinstance(msg, Speak) else ""
        peer = self.hub.peers.get(session.tts) if self.hub and session.tts else None
        # A new utterance in a voice the sticky actor lacks moves the session.
        moved = (
            isinstance(msg, Speak) and msg.first and peer is not None and not _offers(peer, voice)
        )
        if peer is None or moved:
            session.tts = self._pick_tts(voice)
        if session.tts is None:
            self.counters.bump("no_tts")
            return False
        if self._send(session.tts, msg):
            return True
        session.tts = None  # gone (its send failed): pick again next time
        return False

    def event(self, session: Session, event: dict[str, Any]) -> None:
        self._send("transport", ClientEvent(session=session.id, event=event))

    def mic_head(self, session: Session) -> int:
        if self.segment is None:
            return 0
        return self.segment.slots[session.slot].mic.head * MIC_FRAME_SAMPLES

    def mic_time(self, session: Session, sample: int) -> float | None:
        if self.segment is None or sample <= 0:
            return None
        # The stamp of the frame holding the sample before ``sample``: when it arrived.
        frame = self.segment.slots[session.slot].mic.read_at((sample - 1) // MIC_FRAME_SAMPLES)
        return frame.t if frame is not None else None

    def _send(self, peer: str, msg: Message) -> bool:
        if self.hub is None:
            return False
        return self.hub.send(peer, msg)

    def _out_mark(self, s: Session) -> tuple[int, int]:
        if self.segment is None:
            return (0, 0)
        out = self.segment.slots[s.slot].out
        return (out.head, out.tail)

    def tts_serving(self, session: Session) -> str:
        peer = self.hub.peers.get(session.tts) if self.hub and session.tts else None
        return f"{peer.name}/{peer.pid}" if peer is not None else ""

    def tts_alive(self, process: str) -> bool:
        name, _, pid = process.partition("/")
        peer = self.hub.peers.get(name) if self.hub else None
        return peer is not None and str(peer.pid) == pid

    async def wait_tts(self, timeout_s: float) -> bool:
        if self._pick_tts() is not None:
            return True
        if self._tts_up is None:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tts_up.wait(), timeout_s)
        return self._pick_tts() is not None

    def _pick_tts(self, voice: str = "") -> str | None:
        """The TTS actor for an utterance in ``voice`` ("" any): one that has the voice
        resident, else the least loaded one that can load it."""
        if self.hub is None:
            return None
        live = [p for p in self.hub.peers.values() if p.kind == "tts" and _offers(p, voice)]
        if not live:
            return None

        def cost(p: Peer) -> tuple[bool, float, str]:
            cold = bool(voice) and voice not in p.info.get("resident", ())
            return (cold, float(p.info.get("load", 0) or 0), p.name)

        return min(live, key=cost).name

    def voices(self) -> set[str]:
        """Every voice a live TTS actor offers (``engine:voice``)."""
        peers = self.hub.peers.values() if self.hub is not None else ()
        return {str(v) for p in peers if p.kind == "tts" for v in p.info.get("voices", ())}

    def _set_voice(self, s: Session, voice: str) -> None:
        known = self.voices()
        if voice and voice not in known:
            listed = ", ".join(sorted(known)) or "none (no TTS actor is up)"
            msg = f"no TTS actor offers the voice {voice!r}; voices: {listed}"
            self.event(s, error_event(ErrorCode.UNKNOWN_VOICE, msg))
            return
        s.voice = voice  # from the next utterance: one utterance, one voice, one actor
        self.event(s, events.Voice(voice=voice).as_dict())

    # --- peers -----------------------------------------------------------------------------

    def handle_supervisor(self, msg: Message) -> None:
        if isinstance(msg, (ModelLoad, ModelUnload, ModelList)) and self.hub is not None:
            # `voxmesh models` for a TTS actor on another host: only we can reach it.
            target = self.hub.peers.get(getattr(msg, "actor", "") or "")
            if target is None or not target.key or target.kind != "tts":
                self._to_supervisor(ModelInfo([], [], error="no such remote TTS actor"))
            else:
                self._send(target.name, msg)
            return
        if not isinstance(msg, PeerGone) or self.hub is None:
            self.counters.bump("unhandled")
            return
        peer = self.hub.peers.get(msg.name)
        if peer is not None and peer.pid == msg.pid:  # not its replacement, already back
            self.hub.forget(msg.name)
            self._on_lost(peer)

    def _on_ready(self, peer: Peer) -> None:
        log.info("router: %s (%s, pid %d) ready", peer.name, peer.kind, peer.pid)
        self.actor_states[peer.name] = ("up", time.monotonic())
        old_pid = self._pids.get(peer.name)
        self._pids[peer.name] = peer.pid
        if peer.kind == "tts" and old_pid not in (None, peer.pid):
            # Restarted faster than its heartbeats could say it died: what the old process
            # owed its sessions is lost all the same.
            for s in self.sessions.values():
                if s.tts == peer.name:
                    self.engine.tts_lost(s)
        if peer.kind == "transport" and peer.pid != self._transport_pid:
            # A new transport process re-announces the sessions it holds right after READY
            # (none: it is new); whatever it does not re-announce is gone with the old one.
            # The same process announcing itself again (we restarted) keeps its sessions.
            self._transport_pid = peer.pid
            for s in list(self.sessions.values()):
                self._close(s, "transport restarted")
        if peer.kind in SESSION_PEERS:
            # A restarted reader picks its sessions up again, and any session without one.
            for s in self.sessions.values():
                reader = self.readers.get((s.id, peer.kind))
                busy = reader is not None and reader != peer.name
                if busy and self.hub is not None and reader in self.hub.peers:
                    continue
                self.readers[(s.id, peer.kind)] = peer.name
                self._send(peer.name, self._session_open(s, resume=True))
                if peer.kind == "asr":
                    self._asr_due.pop(s.id, None)
                    self.engine.asr_back(s)
        if peer.kind == "tts" and self._tts_up is not None:
            self._tts_up.set()
        self._publish_health()

    def _on_lost(self, peer: Peer) -> None:
        log.warning("router: lost %s (%s)", peer.name, peer.kind)
        self.actor_states[peer.name] = ("restarting", time.monotonic())
        if peer.kind == "transport":
            self._transport_pid = None
            for s in list(self.sessions.values()):
                self._close(s, "transport lost")
        elif peer.kind == "tts":
            if self._tts_up is not None and self._pick_tts() is None:
                self._tts_up.clear()
            for s in self.sessions.values():
                if s.tts == peer.name:
                    s.tts = None
                    self.engine.tts_lost(s)
        elif peer.kind in SESSION_PEERS:
            # Its sessions go to another reader of its kind now, if one is up (else to the
            # first that READYs); a final transcript it owed is asked of that one.
            for s in self.sessions.values():
                if self.readers.get((s.id, peer.kind)) != peer.name:
                    continue
                taken = self._reader(s, peer.kind)
                if peer.kind == "asr" and taken is not None:
                    self.engine.asr_back(s)
                elif peer.kind == "asr":
                    self._owe_final(s)
        self._publish_health()

    def health_states(self, now: float) -> dict[str, str]:
        """Each expected actor's state as this router sees it (GET /health shows it)."""
        states = {}
        for name in self.expected:
            state, since = self.actor_states.get(name, ("starting", now))
            if state == "restarting" and now - since > LOST_AFTER_S:
                state = "lost"
            states[name] = state
        return states

    def _publish_health(self) -> None:
        if self.hub is None or "transport" not in self.hub.peers:
            return
        actors = self.health_states(time.monotonic())
        ready = all(state == "up" for state in actors.values())
        model = getattr(self.responder, "model", "")  # the LLM's name; echo has none
        responder = f"{self.responder.name}:{model}" if model else self.responder.name
        self._send("transport", MeshHealth(ready=ready, actors=actors, responder=responder))

    # --- messages --------------------------------------------------------------------------

    def _on_hub_message(self, peer: Peer, msg: Message) -> None:
        try:
            self._dispatch_message(peer, msg)
        except Exception:  # a bad message must never take the router down
            self.counters.bump("handler_errors")
            log.exception("router: error handling %s from %s", type(msg).__name__, peer.name)

    def _to_supervisor(self, msg: Message) -> None:
        link = self.links.get("supervisor")
        if link is not None:
            link.send(msg)

    def _dispatch_message(self, peer: Peer, msg: Message) -> None:
        log.debug("router: %s from %s", type(msg).__name__, peer.name)
        if isinstance(msg, ModelInfo) and peer.key and peer.kind == "tts":
            self._to_supervisor(msg)  # the answer to a relayed `voxmesh models` command
            return
        sender = SENDERS.get(type(msg))
        if sender is None:
            self.counters.bump("unexpected")
            return
        if peer.kind != sender:
            self.counters.bump("refused_sender")
            return
        if isinstance(msg, SessionOpen):
            self._open(peer, msg)
            return
        session = self.sessions.get(getattr(msg, "session", ""))
        if session is None:
            if isinstance(msg, (ClientText, ClientInterrupt, ClientVoice)):
                self._hold_early(msg)
            else:
                self.counters.bump("unknown_session")
            return
        engine = self.engine
        if isinstance(msg, VadEvent):
            if self.readers.get((session.id, "vad"), peer.name) != peer.name:
                self.counters.bump("vad_not_reading")  # another VAD has this session now
                return
            engine.on_vad(session, msg)
        elif isinstance(msg, Transcript):
            engine.on_transcript(session, msg)
        elif isinstance(msg, ClientText):
            engine.say(session, msg.text, as_user=msg.mode != "say")
        elif isinstance(msg, ClientInterrupt):
            engine.interrupt_now(session)
        elif isinstance(msg, ClientVoice):
            self._set_voice(session, msg.voice)
        elif isinstance(msg, SpeakDone):
            engine.on_speak_done(session, msg)
        elif isinstance(msg, SpeakProgress):
            engine.on_speak_progress(session, msg)
        elif isinstance(msg, PlaybackStarted):
            engine.on_playback_started(session, msg)
        elif isinstance(msg, PlaybackEnded):
            engine.on_playback_ended(session, msg)
        elif isinstance(msg, SessionClose):
            self._close(session, msg.reason)

    def _open(self, transport: Peer, msg: SessionOpen) -> None:
        if self.segment is not None and not 0 <= msg.slot < len(self.segment.slots):
            self.counters.bump("bad_slot")
            return
        old = self.sessions.get(msg.session)
        if old is not None and old.generation == msg.generation:
            return  # a re-announcement after we reconnected: nothing changed
        session = Session(
            msg.session,
            msg.slot,
            msg.generation,
            msg.client,
            voice=msg.voice,
            partial_ms=msg.partial_ms,
        )
        session.last_progress = time.monotonic()
        self.engine.adopt(session, msg.epoch, msg.utterance, msg.utterances)
        self.sessions[msg.session] = session
        assert self.hub is not None
        for kind in SESSION_PEERS:
            self._open_reader(session, kind, msg)
        self.event(session, events.State(state=session.state.value).as_dict())
        turnlog.session_opened(session.id, session.client, session.slot)
        for _, early in self._early.pop(msg.session, []):
            self.counters.bump("early_served")
            self._dispatch_message(transport, early)

    def _open_reader(self, s: Session, kind: str, msg: SessionOpen) -> None:
        """Give the session to one reader of ``kind`` (none up: the first that READYs);
        every other one is told to let go of it (it may have read it for a router before
        us, and a session has one reader of each kind)."""
        assert self.hub is not None
        pick = self._fewest(s, kind)
        if pick is None:
            return
        self._send(pick, msg)
        for peer in list(self.hub.peers.values()):
            if peer.kind == kind and peer.name != pick:
                self._send(peer.name, SessionClose(session=s.id, reason="read elsewhere"))

    def _fewest(self, s: Session, kind: str) -> str | None:
        """The live ``kind`` actor reading the fewest sessions (this host's first), made the
        reader of ``s``; None if none is up."""
        assert self.hub is not None
        live = [p for p in self.hub.peers.values() if p.kind == kind]
        if not live:
            return None
        load = collections.Counter(n for (_, k), n in self.readers.items() if k == kind)
        pick = min(live, key=lambda p: (load[p.name], bool(p.key), p.name)).name
        self.readers[(s.id, kind)] = pick
        return pick

    def _hold_early(self, msg: ClientText | ClientInterrupt | ClientVoice) -> None:
        held = self._early.get(msg.session)
        if held is None:
            if len(self._early) >= EARLY_SESSIONS:
                self.counters.bump("early_dropped")
                return
            held = self._early[msg.session] = []
        if len(held) < EARLY_PER_SESSION:
            held.append((time.monotonic(), msg))
            self.counters.bump("early_held")
        else:
            self.counters.bump("early_dropped")

    def _expire_early(self, now: float) -> None:
        """Requests whose session never showed up: the client hears they were not served."""
        for sid in [sid for sid, held in self._early.items() if now - held[0][0] > self.hold_s]:
            del self._early[sid]
            self.counters.bump("unknown_session")
            self._send(
                "transport",
                ClientEvent(
                    session=sid,
                    event=error_event(ErrorCode.UNAVAILABLE, "the session was not known: retry"),
                ),
            )

    def _close(self, s: Session, reason: str) -> None:
        s.cancel_timer()
        for task in (s.reply_task, s.failover_task):
            if task is not None:
                task.cancel()
        self.sessions.pop(s.id, None)
        for kind in SESSION_PEERS:
            self.readers.pop((s.id, kind), None)
        self._asr_due.pop(s.id, None)
        self.engine.closed(s)
        turnlog.session_closed(s.id, reason, time.monotonic() - s.opened_at, s.utterances)
        assert self.hub is not None
        close = SessionClose(session=s.id, reason=reason)
        for peer in list(self.hub.peers.values()):
            if peer.kind in (*SESSION_PEERS, "tts"):
                self._send(peer.name, close)


def build(spec: ActorSpec) -> RouterActor:
    router = spec.section(RouterSettings)
    turn = TurnConfig.of(
        router, spec.section(AsrSettings), spec.section(TtsSettings), spec.place.hold_s
    )
    remote = spec.section(RemoteSettings)
    return RouterActor(
        spec.name,
        spec.place,
        responder=make_responder(router),
        turn=turn,
        expected=spec.expected,
        remote=RemoteBind(
            remote.listen,
            remote.key,
            remote.allowed,
            local_names=frozenset([spec.name, *spec.expected]),
        )
        if remote.listen
        else None,
    )


def _offers(peer: Peer, voice: str) -> bool:
    return not voice or voice in peer.info.get("voices", ())
