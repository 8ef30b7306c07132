"""The router actor: the mesh's control hub, sessions, turn-taking and dialogue.

It binds the ROUTER socket every other actor connects to, keeps one ``Session`` per client,
and routes each utterance to a TTS actor (sticky per session; the least-loaded live one
that has the voice resident). It attaches the ring segment read-only in spirit: only to
read mic and out heads for partial transcripts and the watchdog.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.hub import Hub, Peer
from voxmesh.mesh.protocol import (
    ClientEvent,
    ClientInterrupt,
    ClientText,
    MeshHealth,
    Message,
    PlaybackEnded,
    PlaybackStarted,
    SessionClose,
    SessionOpen,
    SpeakDone,
    Transcript,
    VadEvent,
)
from voxmesh.mesh.ring import MIC_FRAME_SAMPLES, RingSegment
from voxmesh.mesh.sockets import log
from voxmesh.supervisor.spec import ActorSpec

from .responder import Responder, make_responder
from .session import Session
from .turns import TurnConfig, TurnEngine

SESSION_PEERS = ("vad", "asr")  # kinds that read the mic ring and must know every session


class RouterActor(Actor):
    kind = "router"

    def __init__(
        self,
        name: str = "router",
        *,
        bind: str,
        supervisor: str | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        segment: str | None = None,
        expected: list[str] | None = None,
        responder: Responder,
        turn: TurnConfig | None = None,
        heartbeat_s: float = 0.5,
        liveness: int = 3,
    ) -> None:
        super().__init__(
            name, supervisor=supervisor, context=context, heartbeat_s=heartbeat_s, liveness=liveness
        )
        self.bind = bind
        self.segment_name = segment
        self.expected = list(expected or [])
        self.sessions: dict[str, Session] = {}
        self.engine = TurnEngine(self, responder, turn or TurnConfig())
        self.responder = responder
        self.hub: Hub | None = None
        self.segment: RingSegment | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def on_start(self) -> None:
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
        )
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
        return {"sessions": len(self.sessions), "states": states, "peers": peers}

    def _tick(self, now: float) -> None:
        assert self.hub is not None
        self.hub.tick(now)
        for s in list(self.sessions.values()):
            self.engine.poll_partials(s, now)
            self.engine.watchdog(s, now, lambda s=s: self._out_mark(s))

    # --- Outbox for the turn engine --------------------------------------------------------

    def to_transport(self, msg: Message) -> None:
        self._send("transport", msg)

    def to_asr(self, msg: Message) -> None:
        self._send("asr", msg)

    def to_tts(self, session: Session, msg: Message) -> bool:
        if session.tts is None or self.hub is None or session.tts not in self.hub.peers:
            session.tts = self._pick_tts()
        if session.tts is None:
            self.counters.bump("no_tts")
            return False
        return self._send(session.tts, msg)

    def event(self, session: Session, event: dict[str, Any]) -> None:
        self._send("transport", ClientEvent(session=session.id, event=event))

    def mic_head(self, session: Session) -> int:
        if self.segment is None:
            return 0
        return self.segment.slots[session.slot].mic.head * MIC_FRAME_SAMPLES

    def _send(self, peer: str, msg: Message) -> bool:
        if self.hub is None:
            return False
        return self.hub.send(peer, msg)

    def _out_mark(self, s: Session) -> tuple[int, int]:
        if self.segment is None:
            return (0, 0)
        out = self.segment.slots[s.slot].out
        return (out.head, out.tail)

    def _pick_tts(self) -> str | None:
        assert self.hub is not None
        live = [p for p in self.hub.peers.values() if p.kind == "tts"]
        if not live:
            return None
        return min(live, key=lambda p: (float(p.info.get("load", 0) or 0), p.name)).name

    # --- peers -----------------------------------------------------------------------------

    def _on_ready(self, peer: Peer) -> None:
        log.info("router: %s (%s, pid %d) ready", peer.name, peer.kind, peer.pid)
        if peer.kind == "transport":
            # A transport (re)introducing itself re-announces the sessions it still holds
            # right after READY; whatever it does not re-announce is gone with it.
            for s in list(self.sessions.values()):
                self._close(s, "transport restarted")
        if peer.kind in SESSION_PEERS:  # a restarted reader must pick the sessions up again
            for s in self.sessions.values():
                self._send(
                    peer.name,
                    SessionOpen(
                        session=s.id, slot=s.slot, generation=s.generation, client=s.client
                    ),
                )
        self._publish_health()

    def _on_lost(self, peer: Peer) -> None:
        log.warning("router: lost %s (%s)", peer.name, peer.kind)
        if peer.kind == "transport":
            for s in list(self.sessions.values()):
                self._close(s, "transport lost")
        elif peer.kind == "tts":
            for s in self.sessions.values():
                if s.tts == peer.name:
                    s.tts = None
                    if s.reply is not None:
                        self.event(
                            s,
                            {
                                "type": "error",
                                "code": "tts_lost",
                                "message": "the speech engine restarted; say it again",
                            },
                        )
                        self.engine.recover(s)
        self._publish_health()

    def _publish_health(self) -> None:
        if self.hub is None or "transport" not in self.hub.peers:
            return
        names = set(self.hub.peers)
        actors = {n: ("up" if n in names else "down") for n in self.expected}
        ready = all(state == "up" for state in actors.values())
        self._send("transport", MeshHealth(ready=ready, actors=actors))

    # --- messages --------------------------------------------------------------------------

    def _on_hub_message(self, peer: Peer, msg: Message) -> None:
        try:
            self._dispatch_message(peer, msg)
        except Exception:  # a bad message must never take the router down
            self.counters.bump("handler_errors")
            log.exception("router: error handling %s from %s", type(msg).__name__, peer.name)

    def _dispatch_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, SessionOpen):
            self._open(msg)
            return
        session = self.sessions.get(getattr(msg, "session", ""))
        if session is None:
            self.counters.bump("unknown_session")
            return
        engine = self.engine
        if isinstance(msg, VadEvent):
            engine.on_vad(session, msg)
        elif isinstance(msg, Transcript):
            engine.on_transcript(session, msg)
        elif isinstance(msg, ClientText):
            engine.say(session, msg.text, as_user=msg.mode != "say")
        elif isinstance(msg, ClientInterrupt):
            engine.interrupt_now(session)
        elif isinstance(msg, SpeakDone):
            engine.on_speak_done(session, msg)
        elif isinstance(msg, PlaybackStarted):
            engine.on_playback_started(session, msg)
        elif isinstance(msg, PlaybackEnded):
            engine.on_playback_ended(session, msg)
        elif isinstance(msg, SessionClose):
            self._close(session, msg.reason)
        else:
            self.counters.bump("unexpected")

    def _open(self, msg: SessionOpen) -> None:
        if self.segment is not None and not 0 <= msg.slot < len(self.segment.slots):
            self.counters.bump("bad_slot")
            return
        old = self.sessions.get(msg.session)
        if old is not None and old.generation == msg.generation:
            return  # a re-announcement after we reconnected: nothing changed
        session = Session(msg.session, msg.slot, msg.generation, msg.client)
        session.last_progress = time.monotonic()
        self.sessions[msg.session] = session
        assert self.hub is not None
        for peer in list(self.hub.peers.values()):
            if peer.kind in SESSION_PEERS:
                self._send(peer.name, msg)
        self.event(session, {"type": "state", "state": session.state.value})

    def _close(self, s: Session, reason: str) -> None:
        s.cancel_timer()
        if s.reply_task is not None:
            s.reply_task.cancel()
        self.sessions.pop(s.id, None)
        assert self.hub is not None
        close = SessionClose(session=s.id, reason=reason)
        for peer in list(self.hub.peers.values()):
            if peer.kind in (*SESSION_PEERS, "tts"):
                self._send(peer.name, close)


def build(spec: ActorSpec) -> RouterActor:
    cfg = spec.section("router")
    tts = spec.section("tts")
    turn = TurnConfig(
        interrupt_min_ms=int(cfg.get("interrupt_min_ms", 300)),
        partial_interval_ms=int(spec.section("asr").get("partial_interval_ms", 600)),
        watchdog_ms=int(cfg.get("watchdog_ms", 2000)),
        first_chunk_words=int(tts.get("first_chunk_words", 6)),
    )
    return RouterActor(
        spec.name,
        bind=spec.router,
        supervisor=spec.supervisor,
        segment=spec.segment,
        expected=[str(x) for x in cfg.get("expected", [])],
        responder=make_responder(cfg),
        turn=turn,
        heartbeat_s=spec.heartbeat_s,
        liveness=spec.liveness,
    )
