"""LiveKit agent dispatch: this node is one agent worker, LiveKit spreads the rooms.

Several voxmesh nodes serve one LiveKit server by registering under one agent name on its
worker WebSocket (`/agent`). LiveKit does the dispatch: for a room that asks for that agent
(`CreateRoomRequest.agents`, or `AgentDispatchService.create_dispatch`) it picks a worker
that says it is available, weighted by the load each reports, asks it about the job, and on
"yes" assigns it with a join token. A worker that says no is skipped for the next one; one
whose WebSocket is gone is forgotten at once, so a dead node's new rooms go to the others.

The worker protocol (protobuf `livekit.WorkerMessage` up, `livekit.ServerMessage` down, one
binary frame each), as livekit-server 1.13 speaks it (`pkg/agent/worker.go`):

1. connect `ws://host/agent` with `Authorization: Bearer <JWT with video.agent>`; send
   `register` (job type ROOM, the agent name, permissions); `register` comes back (worker id);
2. `availability` (a job): answer `availability` (job id, yes/no, our identity and
   attributes) within the server's 10 s; after a yes, `assignment` (the job and a token);
3. `update_worker` (AVAILABLE or FULL, load 0..1, job count) whenever that changes: the
   server offers jobs only to AVAILABLE workers; `update_job` (SUCCESS) when a job ends;
4. `termination` (a job id): leave that room.

Capacity is the transport's ring slots, the very ones WebSocket sessions take (`Slots`). A
yes reserves one, synchronously, so two requests can never both get the last; the session
the job opens uses it; a reservation whose assignment does not come within
`ASSIGNMENT_TIMEOUT_S` (or whose connection drops) is given back. The library that ships
this protocol, livekit-agents, is a whole framework with its own process model (and pins an
older `livekit` rtc SDK): only its message types are used here, from `livekit-protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from livekit import api
from livekit.protocol import agent as pb
from livekit.protocol import models

from voxmesh import __version__

from .errors import ClientError, ErrorCode
from .links import ClientLink, SessionHandle
from .livekit_bridge import AGENT_IDENTITY, Agent, AgentJob, LiveKitBridge

log = logging.getLogger(__name__)

NODE_ATTRIBUTE = "voxmesh.node"  # on the agent participant: which node serves the room
ASSIGNMENT_TIMEOUT_S = 7.5  # a yes whose assignment has not come by then frees its slot
STATUS_INTERVAL_S = 2.5  # status is sent on every change, and this often anyway
REGISTER_TIMEOUT_S = 10.0
HEARTBEAT_S = 15.0  # WebSocket pings: a server that went away is noticed within this
RETRY_MAX_S = 10.0  # reconnect backoff: 0.5 s doubling up to this

Outbox = asyncio.Queue[pb.WorkerMessage]


class Slots(Protocol):
    """The transport's session slots, as the worker uses them (TransportActor has them)."""

    def reserve_slot(self) -> int | None: ...
    def release_slot(self, index: int) -> None: ...
    def slot_usage(self) -> tuple[int, int]: ...  # (held, total); reserved ones are held
    async def open_reserved(self, link: ClientLink, index: int) -> SessionHandle: ...


def agent_url(url: str) -> str:
    """The worker endpoint of the server at ``url`` (ws, wss, http or https)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/agent", "", ""))


class _Reservation:
    """One slot held for a job: the job's session takes it over, or it is given back."""

    def __init__(self, slots: Slots, index: int) -> None:
        self.slots = slots
        self.index: int | None = index

    async def open(self, link: ClientLink) -> SessionHandle:
        if self.index is None:  # given back already: the job outlived its reservation
            raise ClientError(ErrorCode.NO_SLOT, "this node's slot for the room was given back")
        session = await self.slots.open_reserved(link, self.index)
        self.index = None  # the session owns it now, and frees it when it closes
        return session

    def release(self) -> None:
        if self.index is not None:
            index, self.index = self.index, None
            self.slots.release_slot(index)


@dataclass
class _Pending:
    """A job we said yes to, waiting for its assignment."""

    reservation: _Reservation
    timer: asyncio.TimerHandle
    asked_at: float


class DispatchWorker:
    """This node as a LiveKit agent worker: `run()` until cancelled, `aclose()` at the end."""

    def __init__(
        self,
        bridge: LiveKitBridge,
        slots: Slots,
        *,
        agent_name: str,
        node: str,
        assignment_timeout_s: float = ASSIGNMENT_TIMEOUT_S,
    ) -> None:
        self.bridge = bridge
        self.slots = slots
        self.agent_name = agent_name
        self.node = node  # told to the room (NODE_ATTRIBUTE), for people and tests
        self.assignment_timeout_s = assignment_timeout_s
        self.worker_id = ""  # the server's name for us, once registered
        self.registered = asyncio.Event()
        self.jobs: dict[str, Agent] = {}  # job id -> the agent in its room
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: Outbox | None = None  # None: not connected
        self._sent_status: tuple[pb.WorkerStatus, float] | None = None  # (status, load) last sent
        self._closing = False

    # --- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Stay registered: reconnect (with backoff) whenever the connection is lost."""
        delay = 0.5
        async with aiohttp.ClientSession() as http:
            while not self._closing:
                try:
                    await self._serve(http)
                    delay = 0.5  # it was up: the next loss starts the backoff afresh
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("livekit dispatch: worker connection failed: %r", e)
                if self._closing:
                    break
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)

    async def _serve(self, http: aiohttp.ClientSession) -> None:
        b = self.bridge
        jwt = api.AccessToken(b.api_key, b.api_secret).with_grants(api.VideoGrants(agent=True))
        headers = {"Authorization": f"Bearer {jwt.to_jwt()}"}
        url = agent_url(b.url)
        async with http.ws_connect(url, headers=headers, heartbeat=HEARTBEAT_S) as ws:
            await ws.send_bytes(self._register().SerializeToString())
            first = await ws.receive(REGISTER_TIMEOUT_S)
            reply = pb.ServerMessage()
            if first.type == aiohttp.WSMsgType.BINARY:
                reply.ParseFromString(first.data)
            if not reply.HasField("register"):
                raise ConnectionError(f"{url}: no register reply (got {first.type.name})")
            self.worker_id = reply.register.worker_id
            log.info(
                "livekit dispatch: registered at %s as worker %s for agent %r (node %s)",
                url,
                self.worker_id,
                self.agent_name,
                self.node,
            )
            outbox: Outbox = asyncio.Queue()
            self._outbox, self._sent_status = outbox, None
            self.registered.set()
            helpers = [
                asyncio.create_task(self._send_loop(ws, outbox)),
                asyncio.create_task(self._status_loop()),
            ]
            try:
                self.slots_changed()  # the server takes a new worker for AVAILABLE, load 0
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        down = pb.ServerMessage()
                        down.ParseFromString(msg.data)
                        self.handle(down)
            finally:
                self._outbox = None
                self.registered.clear()
                for task in helpers:
                    task.cancel()
                # gather, not `suppress(CancelledError): await`: a cancel of ours that comes
                # while we wait here must still end run()
                for result in await asyncio.gather(*helpers, return_exceptions=True):
                    if not isinstance(result, asyncio.CancelledError | None):
                        log.warning("livekit dispatch: sending to the server failed: %r", result)
                self._drop_pending()  # that connection's yeses will never be assigned
        if not self._closing:
            log.warning("livekit dispatch: the server closed the worker connection")

    def _register(self) -> pb.WorkerMessage:
        perms = models.ParticipantPermission(
            can_publish=True, can_subscribe=True, can_publish_data=True, agent=True
        )
        req = pb.RegisterWorkerRequest(
            type=pb.JobType.JT_ROOM,
            agent_name=self.agent_name,
            version=__version__,
            allowed_permissions=perms,
        )
        return pb.WorkerMessage(register=req)

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse, outbox: Outbox) -> None:
        """One writer, in order."""
        # A plain get: 3.11's wait_for around it returns a message that came in as the task
        # was cancelled and drops the cancel, and this loop would never end
        # (tests/test_livekit_dispatch.py test_cancelled_as_a_status_goes_out_the_worker_stops).
        while True:
            msg = await outbox.get()
            await ws.send_bytes(msg.SerializeToString())

    async def _status_loop(self) -> None:
        """The status again every STATUS_INTERVAL_S, changed or not (the server's liveness)."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self._send(self._status())

    def _send(self, msg: pb.WorkerMessage) -> None:
        if self._outbox is not None:  # else the server forgot it all with the connection
            self._outbox.put_nowait(msg)

    # --- load ----------------------------------------------------------------------------------

    def load(self) -> tuple[pb.WorkerStatus, float]:
        """(WorkerStatus, load): FULL when no slot is free, load = the share of slots held."""
        held, total = self.slots.slot_usage()
        full = self._closing or held >= total
        status = pb.WorkerStatus.WS_FULL if full else pb.WorkerStatus.WS_AVAILABLE
        return status, held / total if total else 1.0

    def _status(self) -> pb.WorkerMessage:
        status, load = self._sent_status = self.load()
        log.debug("livekit dispatch: status %s, load %.2f", pb.WorkerStatus.Name(status), load)
        update = pb.UpdateWorkerStatus(status=status, load=load, job_count=len(self.jobs))
        return pb.WorkerMessage(update_worker=update)

    def slots_changed(self) -> None:
        """Tell the server at once when our load changed (the transport calls this too)."""
        if self._outbox is not None and self.load() != self._sent_status:
            self._send(self._status())

    # --- jobs ------------------------------------------------------------------------------------

    def handle(self, msg: pb.ServerMessage) -> None:
        """One message from the server (synchronous: a yes is decided without yielding)."""
        which = msg.WhichOneof("message")
        if which == "availability":
            self._on_availability(msg.availability)
        elif which == "assignment":
            self._on_assignment(msg.assignment)
        elif which == "termination":
            agent = self.jobs.get(msg.termination.job_id)
            if agent is not None:
                log.info("livekit dispatch: job %s terminated", msg.termination.job_id)
                self._spawn(agent.close())

    def _on_availability(self, req: pb.AvailabilityRequest) -> None:
        job = req.job
        index = None if self._closing else self.slots.reserve_slot()
        answer = pb.AvailabilityResponse(job_id=job.id, available=index is not None)
        if index is None:
            log.info("livekit dispatch: declined room %s: no free slot", job.room.name)
            self._send(pb.WorkerMessage(availability=answer))
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.assignment_timeout_s, self._expire, job.id)
        self._pending[job.id] = _Pending(_Reservation(self.slots, index), timer, time.monotonic())
        answer.participant_identity = AGENT_IDENTITY
        answer.participant_name = f"voxmesh {self.node}"
        answer.participant_attributes[NODE_ATTRIBUTE] = self.node
        self._send(pb.WorkerMessage(availability=answer))
        held, total = self.slots.slot_usage()
        log.info(
            "livekit dispatch: took room %s (job %s) into slot %d: %d of %d held",
            job.room.name,
            job.id,
            index,
            held,
            total,
        )
        self.slots_changed()

    def _expire(self, job_id: str) -> None:
        pending = self._pending.pop(job_id, None)
        if pending is not None:
            log.warning("livekit dispatch: job %s was never assigned; slot given back", job_id)
            pending.reservation.release()
            self.slots_changed()

    def _drop_pending(self) -> None:
        for job_id in list(self._pending):
            self._pending[job_id].timer.cancel()
            self._expire(job_id)

    def _on_assignment(self, assignment: pb.JobAssignment) -> None:
        job = assignment.job
        pending = self._pending.pop(job.id, None)
        if pending is not None:
            pending.timer.cancel()
            reservation, asked_at = pending.reservation, pending.asked_at
        else:  # came after our timeout: take a slot again if there is one
            index = self.slots.reserve_slot()
            if index is None:
                log.warning("livekit dispatch: late assignment %s and no slot left", job.id)
                self._job_ended(job.id, "no free slot left for a late assignment")
                return
            reservation, asked_at = _Reservation(self.slots, index), time.monotonic()
        url = assignment.url or self.bridge.url
        room = AgentJob(job.room.name, url, assignment.token, reservation.open)
        self._spawn(self._run_job(job.id, room, reservation, asked_at))

    async def _run_job(
        self, job_id: str, room: AgentJob, reservation: _Reservation, asked_at: float
    ) -> None:
        error = ""
        try:
            agent = await self.bridge.start_agent(room)
        except Exception as e:
            log.warning("livekit dispatch: job %s: joining %s failed: %r", job_id, room.room, e)
            error = f"joining the room failed: {e!r}"
        else:
            self.jobs[job_id] = agent
            log.info(
                "livekit dispatch: job %s: in room %s %.0f ms after the request",
                job_id,
                room.room,
                1000 * (time.monotonic() - asked_at),
            )
            self.slots_changed()
            try:
                await agent.wait_closed()
            finally:
                self.jobs.pop(job_id, None)
        finally:
            reservation.release()  # a no-op once the session took it over
        self._job_ended(job_id, error)

    def _job_ended(self, job_id: str, error: str) -> None:
        status = pb.JobStatus.JS_FAILED if error else pb.JobStatus.JS_SUCCESS
        update = pb.UpdateJobStatus(job_id=job_id, status=status, error=error)
        self._send(pb.WorkerMessage(update_job=update))
        self.slots_changed()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Take no more jobs; rooms being served end with the bridge (`LiveKitBridge.aclose`)."""
        self._closing = True
        self.slots_changed()  # FULL, should the connection still be up
        self._drop_pending()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
