"""The transport actor: clients in (WebSocket, LiveKit), sessions and their rings, the router.

Embeddable like every actor: explicit endpoints and settings, an optional zmq.Context,
no config reading (``build(spec)`` maps mesh.toml's ``[server]`` and ``[livekit]``).
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import zmq

from voxmesh.mesh import events, metrics
from voxmesh.mesh.actor import Actor
from voxmesh.mesh.errors import ErrorCode
from voxmesh.mesh.protocol import ClientEvent, Hold, MeshHealth, Message, Release, Stop
from voxmesh.mesh.realtime import use_round_robin
from voxmesh.mesh.ring import FRAME_MS, OUT_RATE, RingSegment
from voxmesh.mesh.settings import LiveKitSettings, ServerSettings
from voxmesh.mesh.spec import ActorSpec, MeshPlace

from .errors import ClientError
from .links import ClientLink
from .metrics import TransportStats, families
from .pacer import RingWatcher
from .server import WebServer
from .session import Session

if TYPE_CHECKING:
    from .livekit_bridge import LiveKitBridge
    from .livekit_dispatch import DispatchWorker


log = logging.getLogger("voxmesh.transport")

MAX_HELD = 1024  # client requests held, all sessions together, while the router is away
# A request sent this shortly before we saw the router die may have died with it (in its
# socket, or unread): it is sent again to the new router. (A router that did serve it just
# before dying serves it twice: a repeated reply, rather than silence.)
RESEND_WINDOW_S = 0.1
HELD_EXPIRY_S = 0.25  # how often held requests are checked for their hold_s


class TransportActor(Actor):
    kind = "transport"

    def __init__(
        self,
        name: str,
        place: MeshPlace,
        settings: ServerSettings | None = None,
        livekit: LiveKitSettings | None = None,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        super().__init__(name, place, context=context)
        cfg = settings or ServerSettings()
        self.segment_name = place.segment
        self.lead_s = cfg.lead_ms / 1000
        self.max_message_bytes = cfg.max_message_bytes
        self.auth_token = cfg.auth_token
        self.metrics_auth = cfg.metrics_auth  # GET /metrics needs the token too
        self.slow_reader_s = cfg.slow_reader_s
        self.settings = cfg  # read per session: echo cancellation (server.aec*)
        self.livekit = livekit if livekit is not None and livekit.url else None
        host, port = cfg.host, cfg.port
        hold_s = place.hold_s
        self.stats = TransportStats()
        self.watcher = RingWatcher()
        self.server = WebServer(self, host, port)
        self.sessions: dict[str, Session] = {}
        self.segment: RingSegment | None = None
        self.bridge: LiveKitBridge | None = None
        self.dispatch: DispatchWorker | None = None  # an agent worker of LiveKit's dispatch
        self.mesh_health: MeshHealth | None = None
        self.hold_s = hold_s
        # Client requests waiting for the router to come back: (when, session, message).
        self._held: deque[tuple[float, Session, Message]] = deque()
        self._recent: deque[tuple[float, Session, Message]] = deque()  # sent, maybe lost
        self._free_slots: list[int] = []

    @property
    def port(self) -> int:
        """The bound HTTP port (the real one after start, when asked for port 0)."""
        return self.server.port

    # --- lifecycle --------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.segment = RingSegment.attach(self.segment_name)
        # The transport is the only one that claims slots: after a restart all are ours.
        self._free_slots = list(range(len(self.segment.slots)))
        self.spawn(self.watcher.run(self.segment.doorbell()))
        self.every(HELD_EXPIRY_S, self._expire_held)
        if self.livekit is not None:
            from .livekit_bridge import LiveKitBridge  # optional: only with LiveKit configured

            lk = self.livekit
            self.bridge = LiveKitBridge(
                self._livekit_opener,
                lk.url,
                lk.api_key,
                lk.api_secret,
                public_url=lk.public_url or None,
            )
            await self.bridge.warm_up()
        try:
            await self.server.start()
        except BaseException:
            await self.on_stop()
            raise
        if self.bridge is not None and self.livekit is not None and self.livekit.dispatch:
            from .livekit_dispatch import DispatchWorker

            node = f"{socket.gethostname()}:{self.port}"  # the port is bound only now
            self.dispatch = DispatchWorker(
                self.bridge, self, agent_name=self.livekit.agent_name, node=node
            )
            self.spawn(self.dispatch.run())

    async def on_stop(self) -> None:
        if self.dispatch is not None:  # first: no new rooms while the others end
            await self.dispatch.aclose()
            self.dispatch = None
        if self.bridge is not None:
            await self.bridge.aclose()
            self.bridge = None
        for session in list(self.sessions.values()):
            await session.close("shutdown", tell_router=False)  # our GOODBYE said it all
        await self.server.stop()
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    # --- sessions ---------------------------------------------------------------------------

    async def open_session(
        self,
        link: ClientLink,
        *,
        client: str,
        greet: bool,
        reserved: int | None = None,
        partial_ms: int | None = None,
    ) -> Session:
        """Claim a slot (or take the ``reserved`` one), tell the router, start pacing.
        Raises ClientError(NO_SLOT)."""
        if self.segment is None or (reserved is None and not self._free_slots):
            raise ClientError(ErrorCode.NO_SLOT, "every session slot is in use; try again later")
        index = self._free_slots.pop(0) if reserved is None else reserved
        slot = self.segment.slots[index]
        generation = slot.claim()
        session_id = secrets.token_hex(4)
        while session_id in self.sessions:
            session_id = secrets.token_hex(4)
        session = Session(
            self,
            link,
            slot,
            generation,
            session_id,
            client=client,
            lead_s=self.lead_s,
            slow_reader_s=self.slow_reader_s,
            partial_ms=self.settings.partials_ms if partial_ms is None else partial_ms,
        )
        self.sessions[session_id] = session
        self.stats.sessions_opened += 1
        if greet:
            ready = events.Ready(
                session_id=session_id,
                sample_rate=OUT_RATE,
                frame_ms=FRAME_MS,
                responder=self.responder(),
            )
            session.send_event(ready.as_dict())
        session.start()
        self._slots_changed()
        return session

    async def _livekit_opener(self, link: ClientLink) -> Session:
        return await self.open_session(link, client="livekit", greet=False)

    def session_closed(self, session: Session) -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            self.stats.sessions_closed += 1
            self.release_slot(session.slot.index)

    # Slots for sessions still to come (livekit_dispatch.Slots): a room LiveKit offers us
    # takes one when we say yes, so the yes holds however many rooms are offered at once.

    def reserve_slot(self) -> int | None:
        if self.segment is None or not self._free_slots:
            return None
        index = self._free_slots.pop(0)
        self._slots_changed()
        return index

    def release_slot(self, index: int) -> None:
        self._free_slots.append(index)
        self._free_slots.sort()
        self._slots_changed()

    def slot_usage(self) -> tuple[int, int]:
        total = len(self.segment.slots) if self.segment is not None else 0
        return total - len(self._free_slots), total

    async def open_reserved(self, link: ClientLink, index: int) -> Session:
        return await self.open_session(link, client="livekit", greet=False, reserved=index)

    def _slots_changed(self) -> None:
        if self.dispatch is not None:
            self.dispatch.slots_changed()

    async def livekit_session(self) -> dict[str, str] | None:
        if self.bridge is None:
            return None
        return await self.bridge.create_session()

    # --- the mesh ---------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        if isinstance(msg, MeshHealth):
            self.mesh_health = msg
            return
        if not isinstance(msg, (Hold, Release, Stop, ClientEvent)):
            self.counters.bump("unhandled")
            return
        session = self.sessions.get(msg.session)
        if session is None:
            self.counters.bump("unknown_session")
            return
        if isinstance(msg, ClientEvent):
            session.forward(msg.event)
        else:
            session.on_router(msg)

    def on_router_connect(self) -> None:
        for session in self.sessions.values():
            self.send(session.open_message())
        self._flush_held()  # after the sessions they belong to, in order

    def router_alive(self) -> bool:
        """The router knows us and was heard from lately (ZeroMQ reports its death at once)."""
        link = self.links.get("router")
        if link is None or not link.welcomed:
            return False
        return time.monotonic() - link.last_inbound < self.heartbeat_s * self.liveness

    # --- client requests while the router is away ---------------------------------------------

    def to_router(self, session: Session, msg: Message) -> None:
        """Send a client's request, or hold it (up to hold_s) while the router is away."""
        now = time.monotonic()
        if not self._held and self.router_alive() and self.send(msg):
            while self._recent and now - self._recent[0][0] > RESEND_WINDOW_S:
                self._recent.popleft()
            self._recent.append((now, session, msg))
            return
        if len(self._held) >= MAX_HELD:
            session.report(ClientError(ErrorCode.UNAVAILABLE, "the voice mesh is restarting"))
            return
        self.stats.held_requests += 1
        log.info("transport: router away: holding %s of %s", type(msg).__name__, session.session_id)
        self._held.append((now, session, msg))

    def on_router_down(self) -> None:
        """What we sent just before the router died goes to the next one too."""
        now = time.monotonic()
        resend = [item for item in self._recent if now - item[0] <= RESEND_WINDOW_S]
        self._recent.clear()
        if resend:
            log.info("transport: router gone: %d recent request(s) will be sent again", len(resend))
            self._held.extendleft(reversed([(now, s, m) for _, s, m in resend]))

    def _flush_held(self) -> None:
        while self._held:
            _, session, msg = self._held[0]
            if not session.closed and not self.send(msg):
                return
            self._held.popleft()

    def on_router_welcome(self) -> None:
        self._flush_held()  # anything held since the announcement goes now

    def _expire_held(self, now: float) -> None:
        if self._held and self.router_alive():
            self._flush_held()
            return
        while self._held and now - self._held[0][0] > self.hold_s:
            _, session, _ = self._held.popleft()
            if not session.closed:
                session.report(
                    ClientError(
                        ErrorCode.UNAVAILABLE,
                        f"the voice mesh did not come back within {self.hold_s:g} s; "
                        "nothing was done: try again",
                    )
                )

    def responder(self) -> str | None:
        """What writes the replies, as the router last said (None: not heard from one yet)."""
        mesh = self.mesh_health
        return mesh.responder if mesh is not None and mesh.responder else None

    def info(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "port": self.port, **self.stats.summary()}

    # --- HTTP views -------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """200-worthy only while the router is live and sees every expected actor up."""
        mesh = self.mesh_health
        alive = self.router_alive()
        ok = alive and mesh is not None and mesh.ready
        actors: dict[str, Any] = {"router": "up" if alive else "restarting"}
        if mesh is not None:  # while the router is away, the last states it told us
            actors.update(mesh.actors)
        detail: dict[str, Any] = {
            "ok": ok,
            "router": "alive" if alive else "unreachable",
            "mesh_ready": bool(mesh is not None and mesh.ready),
            "actors": actors,
            "sessions": len(self.sessions),
            "responder": self.responder(),  # the page shows it (LiveKit has no ready event)
        }
        return ok, detail

    def metrics_text(self) -> str:
        """Every actor's metrics (mesh/metrics.py) and this transport's own."""
        mesh = self.mesh_health
        own = families(
            self.stats,
            sessions=len(self.sessions),
            mesh_ready=bool(mesh is not None and mesh.ready),
            router_alive=self.router_alive(),
            counters=self.counters,
        )
        return metrics.exposition(own).decode()


def build(spec: ActorSpec) -> TransportActor:
    settings = spec.section(ServerSettings)
    # Before the actor starts any thread (ZeroMQ's I/O thread): they inherit the policy.
    use_round_robin(settings.realtime_priority, spec.name)
    return TransportActor(spec.name, spec.place, settings, spec.section(LiveKitSettings))
