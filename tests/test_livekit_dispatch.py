"""Several voxmesh nodes, one LiveKit: LiveKit's own agent dispatch spreads the rooms.

The worker alone first, against a fake `/agent` endpoint (what livekit-server's side of the
protocol does, driven by the test): its load, its answers, its slot reservations. Then two
real meshes (`voxmesh up`, `livekit.dispatch = true`, 2 slots each) against one real
livekit-server on loopback: rooms asking for the agent spread over both nodes and each
answers a text turn; a full pool takes no more; a node killed with SIGKILL gets no new rooms
and the next room is served by the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from livekit import api
from livekit.api.access_token import Claims
from livekit.protocol import agent as pb
from livekit.protocol import models
from lkclient import AGENT, LkClient
from lkserver import LiveKitServerInfo, running_livekit_server
from meshproc import MeshError, MeshProc, wait_for

from voxmesh.actors.transport.links import ClientLink, SessionHandle
from voxmesh.actors.transport.livekit_bridge import AGENT_IDENTITY, LiveKitBridge
from voxmesh.actors.transport.livekit_dispatch import NODE_ATTRIBUTE, DispatchWorker, agent_url

pytestmark = pytest.mark.timeout(300)

AGENT_NAME = "voxmesh-pool"
KEY, SECRET = "devkey", "voxmesh-test-secret-0123456789abcdef"
AVAILABLE, FULL = pb.WorkerStatus.WS_AVAILABLE, pb.WorkerStatus.WS_FULL


def test_agent_url() -> None:
    assert agent_url("ws://127.0.0.1:7880") == "ws://127.0.0.1:7880/agent"
    assert agent_url("https://lk.example/base/") == "wss://lk.example/base/agent"


# --- the worker against a fake /agent endpoint ------------------------------------------------


class FakeSlots:
    """The transport's slots as the worker sees them: ``total`` of them, ``held`` taken."""

    def __init__(self, total: int, held: int = 0) -> None:
        self.total = total
        self.free = list(range(held, total))

    def reserve_slot(self) -> int | None:
        return self.free.pop(0) if self.free else None

    def release_slot(self, index: int) -> None:
        self.free.append(index)

    def slot_usage(self) -> tuple[int, int]:
        return self.total - len(self.free), self.total

    async def open_reserved(self, link: ClientLink, index: int) -> SessionHandle:
        raise AssertionError("no session is opened in these tests")


class FakeLiveKit:
    """livekit-server's side of the worker WebSocket: records, and sends what it is told."""

    def __init__(self) -> None:
        self.claims: list[Claims] = []
        self.registrations: list[pb.RegisterWorkerRequest] = []
        self.received: dict[str, asyncio.Queue[pb.WorkerMessage]] = {}
        self.ws: web.WebSocketResponse | None = None

    def queue(self, which: str) -> asyncio.Queue[pb.WorkerMessage]:
        return self.received.setdefault(which, asyncio.Queue())

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.claims.append(api.TokenVerifier(KEY, SECRET).verify(bearer))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = pb.WorkerMessage()
        first.ParseFromString(await ws.receive_bytes())
        self.registrations.append(first.register)
        self.received = {}  # what the worker says from now on is about this connection
        reply = pb.RegisterWorkerResponse(worker_id=f"AW_{len(self.registrations)}")
        await ws.send_bytes(pb.ServerMessage(register=reply).SerializeToString())
        self.ws = ws
        async for msg in ws:
            up = pb.WorkerMessage()
            up.ParseFromString(msg.data)
            self.queue(str(up.WhichOneof("message"))).put_nowait(up)
        return ws

    async def send(self, *msgs: pb.ServerMessage) -> None:
        assert self.ws is not None
        for msg in msgs:  # back to back: the worker reads them all before we hear back
            await self.ws.send_bytes(msg.SerializeToString())

    async def next(self, which: str, timeout: float = 5.0) -> pb.WorkerMessage:
        return await asyncio.wait_for(self.queue(which).get(), timeout)

    async def status(self, status: int, load: float, timeout: float = 5.0) -> None:
        """Wait for the worker to report ``status`` at ``load`` (older reports are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                up = (await self.next("update_worker", timeout)).update_worker
                if up.status == status and abs(up.load - load) < 1e-6:
                    return


def availability(job_id: str) -> pb.ServerMessage:
    room = models.Room(name=f"room-{job_id}")
    job = pb.Job(id=job_id, type=pb.JobType.JT_ROOM, room=room, agent_name=AGENT_NAME)
    return pb.ServerMessage(availability=pb.AvailabilityRequest(job=job))


Body = Callable[[FakeLiveKit, DispatchWorker], Awaitable[None]]


def run_worker(slots: FakeSlots, body: Body, assignment_timeout_s: float = 0.5) -> None:
    async def no_opener(link: ClientLink) -> SessionHandle:
        raise AssertionError("no session is opened in these tests")

    async def main() -> None:
        fake = FakeLiveKit()
        app = web.Application()
        app.router.add_get("/agent", fake.handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"ws://127.0.0.1:{runner.addresses[0][1]}"
        bridge = LiveKitBridge(no_opener, url, KEY, SECRET)
        worker = DispatchWorker(
            bridge,
            slots,
            agent_name=AGENT_NAME,
            node="node-t",
            assignment_timeout_s=assignment_timeout_s,
        )
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.registered.wait(), 10)
            await asyncio.wait_for(body(fake, worker), 30)
        finally:
            task.cancel()
            # bounded: a worker that swallows its cancellation fails here, not at pytest's 300 s
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
            await worker.aclose()
            await bridge.aclose()
            await runner.cleanup()
        # It registered as a ROOM worker of our agent name, with an agent-grant token.
        assert fake.claims[0].video is not None and fake.claims[0].video.agent
        reg = fake.registrations[0]
        assert reg.agent_name == AGENT_NAME and reg.type == pb.JobType.JT_ROOM

    asyncio.run(main())


def test_two_requests_for_the_last_slot_admit_one() -> None:
    slots = FakeSlots(total=2, held=1)

    async def body(fake: FakeLiveKit, worker: DispatchWorker) -> None:
        await fake.status(AVAILABLE, 0.5)
        await fake.send(availability("J_1"), availability("J_2"))
        answers = [(await fake.next("availability")).availability for _ in range(2)]
        assert sorted(a.available for a in answers) == [False, True], answers
        yes = next(a for a in answers if a.available)
        assert yes.participant_identity == AGENT_IDENTITY
        assert yes.participant_attributes[NODE_ATTRIBUTE] == "node-t"
        assert slots.free == []  # held for the job whose assignment is to come
        await fake.status(FULL, 1.0)
        # No assignment follows: the reservation runs out and the slot is free again.
        await fake.status(AVAILABLE, 0.5, timeout=5)
        assert slots.free == [1]

    run_worker(slots, body)


def test_full_node_declines() -> None:
    slots = FakeSlots(total=2, held=2)

    async def body(fake: FakeLiveKit, worker: DispatchWorker) -> None:
        await fake.status(FULL, 1.0)
        await fake.send(availability("J_1"))
        assert not (await fake.next("availability")).availability.available
        assert slots.free == []

    run_worker(slots, body)


def test_lost_connection_frees_reservations_and_reconnects() -> None:
    slots = FakeSlots(total=1)

    async def body(fake: FakeLiveKit, worker: DispatchWorker) -> None:
        await fake.send(availability("J_1"))
        assert (await fake.next("availability")).availability.available
        assert slots.free == []
        assert fake.ws is not None
        await fake.ws.close()  # the server went away: it will never assign J_1
        await _until(lambda: len(fake.registrations) == 2, 10, "the worker to come back")
        await fake.status(AVAILABLE, 0.0)
        assert slots.free == [0]

    run_worker(slots, body, assignment_timeout_s=60)


@pytest.mark.parametrize("turns", range(6))
def test_cancelled_as_a_status_goes_out_the_worker_stops(turns: int) -> None:
    # A status queued just before the cancel: the sender's wait for its next message must not
    # swallow the cancellation (3.11's wait_for returns a result that came in as it was
    # cancelled), or run() never ends. `turns` loop iterations between the two cover the race.
    slots = FakeSlots(total=2)

    async def body(fake: FakeLiveKit, worker: DispatchWorker) -> None:
        await fake.status(AVAILABLE, 0.0)
        (run,) = [t for t in asyncio.all_tasks() if _runs(t, "DispatchWorker.run")]
        slots.free.pop()
        worker.slots_changed()  # load 0.5: queued for the sender
        for _ in range(turns):
            await asyncio.sleep(0)
        run.cancel()
        done, _ = await asyncio.wait([run], timeout=2)
        assert done, f"run() still going 2 s after its cancel ({turns} turns after a status)"

    run_worker(slots, body)


def _runs(task: asyncio.Task[Any], qualname: str) -> bool:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) == qualname


async def _until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


# --- two real nodes, one real livekit-server -------------------------------------------------

SLOTS = 2
# livekit-server's line for a job no worker would take (it names no room)
NO_WORKER = "no servers available (received 1 responses)"


@pytest.fixture
def lk(tmp_path: Path) -> Iterator[LiveKitServerInfo]:
    with running_livekit_server(api_secret=SECRET, log_path=tmp_path / "livekit.log") as info:
        yield info


class Node:
    """One `voxmesh up` of the pool; ``stop()`` leaves nothing, even after ``kill()``."""

    def __init__(self, workdir: Path, lk: LiveKitServerInfo) -> None:
        workdir.mkdir()
        livekit = {"url": lk.url, "api_key": lk.api_key, "api_secret": lk.api_secret}
        config: dict[str, dict[str, Any]] = {
            "livekit": {**livekit, "dispatch": True, "agent_name": AGENT_NAME},
            "mesh": {"max_sessions": SLOTS},
        }
        self.mesh = MeshProc(workdir, tts="mock", config=config)
        self.killed = False

    @property
    def name(self) -> str:
        return f"{self.mesh.port}"  # the end of the node attribute, host:port

    def worker_id(self) -> str | None:
        """The worker id LiveKit gave it, once registered (its log says so)."""
        for line in self.mesh.log_text().splitlines():
            if "livekit dispatch: registered at" in line:
                return line.split(" as worker ", 1)[1].split()[0]
        return None

    def kill(self) -> None:
        self.mesh.actor_pids()  # remember the actors, to see them gone
        self.mesh.kill_group()  # SIGKILL: no goodbye to LiveKit, nothing cleaned up
        self.killed = True

    def stop(self) -> None:
        problems = self.mesh.stop()  # after a kill: what it left, removed now
        assert self.mesh.leftovers() == [], "cleanup left things behind"
        if problems and not self.killed:
            raise MeshError(f"node {self.name} left things behind: {problems}")


@dataclass
class Served:
    room: str
    node: str  # the port of the node whose agent joined
    agent_after_s: float  # room created -> the agent in it
    reply_after_s: float  # text sent -> reply back
    client: LkClient


def user_token(room: str, identity: str) -> str:
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
    )
    return api.AccessToken(KEY, SECRET).with_identity(identity).with_grants(grants).to_jwt()


async def create_room(lkapi: api.LiveKitAPI) -> str:
    room = f"pool-{secrets.token_hex(4)}"
    dispatch = [api.RoomAgentDispatch(agent_name=AGENT_NAME)]
    await lkapi.room.create_room(
        api.CreateRoomRequest(name=room, empty_timeout=30, agents=dispatch)
    )
    return room


async def agent_of(lkapi: api.LiveKitAPI, room: str, timeout: float) -> Any:
    """The agent participant of ``room``, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        for p in listed.participants:
            if p.identity == AGENT:
                return p
        assert time.monotonic() < deadline, f"no agent joined {room} within {timeout} s"
        await asyncio.sleep(0.02)


async def serve_room(lk: LiveKitServerInfo, lkapi: api.LiveKitAPI) -> Served:
    """A room asking for the agent; a user joins and sends a text turn; the agent answers."""
    t0 = time.monotonic()
    room = await create_room(lkapi)
    agent = await agent_of(lkapi, room, 20)
    agent_after = time.monotonic() - t0
    session = {"url": lk.url, "token": user_token(room, f"user-{room}"), "room": room}
    client = await LkClient.enter(session, mic=False)
    try:
        await client.wait_until(lambda: AGENT in client.room.remote_participants, 10, "agent")
        text = f"hello from {room}"
        t_sent = await client.send({"type": "text", "text": text})
        reply = await client.wait_event("reply", 20)
    except BaseException:
        await client.close()
        raise
    assert reply["text"] == text, reply  # the echo responder
    node = agent.attributes[NODE_ATTRIBUTE].rsplit(":", 1)[1]
    return Served(room, node, agent_after, time.monotonic() - t_sent, client)


async def wait_agent_gone(lkapi: api.LiveKitAPI, room: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        except api.TwirpError:
            return  # the room is gone
        if all(p.identity != AGENT for p in listed.participants):
            return
        assert time.monotonic() < deadline, f"the agent stayed in {room}"
        await asyncio.sleep(0.05)


def lk_log(lk: LiveKitServerInfo) -> str:
    return lk.log_path.read_text(errors="replace")


def logged(lk: LiveKitServerInfo, *parts: str) -> int:
    """How many lines of livekit-server's log hold all of ``parts``."""
    return sum(all(p in line for p in parts) for line in lk_log(lk).splitlines())


def test_two_nodes_share_one_livekit(lk: LiveKitServerInfo, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        nodes = [Node(tmp_path / name, lk) for name in ("a", "b")]
        for node in nodes:
            stack.callback(node.stop)
        try:
            for node in nodes:
                node.mesh.wait_healthy()
                wait_for(node.worker_id, 30, f"node {node.name} to register with LiveKit")
            asyncio.run(pool_scenario(lk, nodes))
        except BaseException:
            for node in nodes:
                sys.stderr.write(f"\n----- node {node.name} -----\n{tail(node.mesh.log_text())}\n")
            sys.stderr.write(f"\n----- livekit-server -----\n{tail(lk_log(lk))}\n")
            raise


def tail(log: str, lines: int = 80, width: int = 300) -> str:
    """The end of a log, long lines (livekit-server's SDP dumps) cut short."""
    return "\n".join(line[:width] for line in log.splitlines()[-lines:])


async def pool_scenario(lk: LiveKitServerInfo, nodes: list[Node]) -> None:
    by_port = {n.name: n for n in nodes}
    async with api.LiveKitAPI(lk.url, KEY, SECRET, failover=False) as lkapi:
        served: list[Served] = []
        try:
            # Two nodes of two slots: four rooms fill the pool, so both must take some.
            for _ in range(2 * SLOTS):
                served.append(await serve_room(lk, lkapi))
            counts = {port: sum(s.node == port for s in served) for port in by_port}
            assert counts == dict.fromkeys(by_port, SLOTS), counts
            for s in served:
                print(
                    f"room {s.room}: node {s.node}, agent in {s.agent_after_s * 1000:.0f} ms, "
                    f"reply in {s.reply_after_s * 1000:.0f} ms"
                )

            # A full pool: every worker says FULL, so LiveKit offers the next room to none.
            refused = logged(lk, NO_WORKER)
            await create_room(lkapi)
            await _until(lambda: logged(lk, NO_WORKER) > refused, 15, "LiveKit to refuse")
        finally:
            for s in served:
                await s.client.close()
        for s in served:  # the users left: every session ends, every slot is free again
            await wait_agent_gone(lkapi, s.room)

        # One node dies (no goodbye): LiveKit drops its worker, the next room goes to the other.
        victim = by_port[served[0].node]
        survivor = next(n for n in nodes if n is not victim)
        victim_id = str(victim.worker_id())
        t_kill = time.monotonic()
        victim.kill()
        await _until(lambda: logged(lk, "closing worker", victim_id) > 0, 15, "the worker dropped")
        dropped_s = time.monotonic() - t_kill
        after = await serve_room(lk, lkapi)
        try:
            assert after.node == survivor.name
            print(
                f"killed node {victim.name}: LiveKit dropped it within {dropped_s * 1000:.0f} ms; "
                f"room {after.room} on node {after.node}, agent in "
                f"{after.agent_after_s * 1000:.0f} ms"
            )
        finally:
            await after.client.close()
        await wait_agent_gone(lkapi, after.room)
