"""LiveKit transport: one agent participant per session bridges WebRTC to the transport core.

An `Agent` joins one room as `voxmesh-agent` and serves one user there; `AgentJob` says which
room, with which token, whom, and how to open the core session. Two ways make one:

- `LiveKitBridge.create_session()` (behind `POST /session`) makes a fresh room, mints a token
  for one user participant, and the room is the agent's own (deleted when the session ends);
- a job LiveKit dispatched to this node (`livekit_dispatch.py`): someone else's room and the
  token from the assignment; the user is whoever joins first that is not an agent.

Once the user is in, the agent opens a core session through the job's opener and then:

- the user's first audio track  -> `SessionHandle.push_mic` (PCM, with its rate),
- data packets, topic `voxmesh` -> `SessionHandle.client_message` (one JSON object each),
- `ClientLink.send_audio`       -> the agent's `voxmesh` track (48 kHz mono, small queue),
- `ClientLink.send_event`       -> reliable data packets with topic `voxmesh`,
- `ClientLink.clear`            -> `AudioSource.clear_queue()` plus a `clear` event.

When the user leaves (or sends `bye`, or the room goes away, or anything fails) the
session handle is closed, the agent disconnects and its own room is deleted. All calls run
on one asyncio loop.

Presence: livekit-server announces a participant that publishes nothing only in a batch every
3 s (a publisher at once), and one that joins and leaves inside a batch is never announced.
So until the SDK knows the user, the agent asks the server API (`get_participant`) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from livekit import api, rtc

from voxmesh.mesh import events

from .errors import ErrorCode, error_event
from .links import SessionHandle, SessionOpener

log = logging.getLogger(__name__)

AGENT_IDENTITY = "voxmesh-agent"
TOPIC = "voxmesh"  # data packet topic and the agent's track name
OUT_RATE = 48_000
MIC_RATE = 16_000  # AudioStream resamples natively, so the core's resampler has nothing to do
MIC_CAPACITY = 50  # frames (10 ms each) kept if the core stalls: newest 0.5 s wins


async def receive_stats(track: rtc.Track) -> dict[str, float] | None:
    """WebRTC's inbound stats of a remote audio track: what its jitter buffer holds back.

    ``jitter_buffer_ms``: average delay of the samples played out so far, ``target_ms``: the
    buffer's current target, ``concealed_pct``: share of samples made up (loss, underrun).
    """
    for st in await track.get_stats():
        if st.WhichOneof("stats") != "inbound_rtp":
            continue
        ib, rx = st.inbound_rtp.inbound, st.inbound_rtp.received
        emitted = ib.jitter_buffer_emitted_count
        samples = ib.total_samples_received
        return {
            "packets": float(rx.packets_received),
            "jitter_buffer_ms": 1000 * ib.jitter_buffer_delay / emitted if emitted else 0.0,
            "target_ms": 1000 * ib.jitter_buffer_target_delay / emitted if emitted else 0.0,
            "concealed_pct": 100 * ib.concealed_samples / samples if samples else 0.0,
        }
    return None


@dataclass(frozen=True)
class AgentJob:
    """One room for an `Agent` to serve."""

    room: str
    url: str  # where the agent connects
    token: str  # the agent's join token for `room`
    opener: SessionOpener  # opens the core session once the user is in
    user: str | None = None  # None: the first participant to join that is not an agent
    owns_room: bool = False  # delete the room at the end (the rooms POST /session made)


# Never the one served: agents (ours, another worker's) and recorders. (The rtc SDK and the
# server API number participant kinds alike.)
_NOT_PEOPLE = (
    rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
    rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS,
)


def is_person(identity: str, kind: int) -> bool:
    return identity != AGENT_IDENTITY and kind not in _NOT_PEOPLE


class LiveKitBridge:
    """Creates LiveKit sessions for the transport; one `Agent` per room."""

    QUEUE_MS = 100  # AudioSource queue: what a barge-in can still play out before clear()
    CONNECT_TIMEOUT_S = 10.0
    JOIN_TIMEOUT_S = 60.0  # a token that is never used frees its room after this
    CLEANUP_TIMEOUT_S = 5.0
    PRESENCE_POLL_S = 0.25  # API polls while the SDK has not announced the user yet
    TOKEN_TTL = timedelta(minutes=10)  # only for joining; the server refreshes it afterwards

    def __init__(
        self,
        opener: SessionOpener,
        url: str,
        api_key: str,
        api_secret: str,
        *,
        public_url: str | None = None,
    ) -> None:
        self.opener = opener
        self.url = url  # how this process reaches the server
        self.public_url = public_url or url  # what the browser is told
        self.api_key = api_key
        self.api_secret = api_secret
        self._api: api.LiveKitAPI | None = None
        self._agents: set[Agent] = set()
        self._closed = False

    @property
    def lkapi(self) -> api.LiveKitAPI:
        if self._api is None:  # lazily: its aiohttp session needs the running loop
            self._api = api.LiveKitAPI(self.url, self.api_key, self.api_secret, failover=False)
        return self._api

    @property
    def active_rooms(self) -> list[str]:
        return sorted(a.room_name for a in self._agents)

    def token(self, identity: str, room: str) -> str:
        grants = api.VideoGrants(
            room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
        )
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_grants(grants)
            .with_ttl(self.TOKEN_TTL)
            .to_jwt()
        )

    async def create_session(self) -> dict[str, str]:
        """Fresh room + user token, agent already in the room. For `POST /session`."""
        if self._closed:
            raise RuntimeError("LiveKitBridge is closed")
        room = f"voxmesh-{secrets.token_hex(8)}"
        user = f"user-{secrets.token_hex(4)}"
        # Server-side timeouts clean the room up even if this process dies without deleting it.
        await self.lkapi.room.create_room(
            api.CreateRoomRequest(
                name=room, empty_timeout=30, departure_timeout=5, max_participants=2
            )
        )
        token = self.token(AGENT_IDENTITY, room)
        await self.start_agent(AgentJob(room, self.url, token, self.opener, user, owns_room=True))
        return {"url": self.public_url, "token": self.token(user, room), "room": room}

    async def start_agent(self, job: AgentJob) -> Agent:
        """Join `job.room` as the agent; returns once in, the session then runs by itself."""
        if self._closed:
            raise RuntimeError("LiveKitBridge is closed")
        agent = Agent(self, job)
        self._agents.add(agent)
        try:
            await agent.start()
        except BaseException:
            await agent.close()
            raise
        return agent

    async def warm_up(self) -> None:
        """Load the WebRTC engine now, before the actor serves: it is a large native
        library loaded on first use, and loading it then blocked the event loop (in disk
        waits) for more than the heartbeat liveness on a busy box."""
        source = rtc.AudioSource(OUT_RATE, 1)
        await source.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(a.close() for a in list(self._agents)), return_exceptions=True)
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    async def _delete_room(self, room: str) -> None:
        try:
            await asyncio.wait_for(
                self.lkapi.room.delete_room(api.DeleteRoomRequest(room=room)),
                self.CLEANUP_TIMEOUT_S,
            )
        except api.TwirpError as e:
            if e.code != api.TwirpErrorCode.NOT_FOUND:  # already gone is fine
                log.warning("livekit: delete_room(%s) failed: %s", room, e)
        except Exception as e:
            log.warning("livekit: delete_room(%s) failed: %r", room, e)


class _AgentLink:
    """The `ClientLink` the core gets for a LiveKit session."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._clears = 0  # bumped by clear(): tells a capture in flight that it is stale
        self._capture_failed = False

    async def send_event(self, event: dict[str, Any]) -> None:
        a = self._agent
        if a.closed:
            return
        payload = json.dumps(event, separators=(",", ":"))
        # Not known yet (a dispatched room's first packet came before its sender): everyone.
        to = [a.user] if a.user is not None else []
        try:
            await a.room.local_participant.publish_data(
                payload, reliable=True, topic=TOPIC, destination_identities=to
            )
        except Exception as e:  # a vanished peer must not take the core's task down
            log.warning("livekit %s: publish_data failed: %r", a.room_name, e)

    async def send_audio(self, frame: bytes) -> None:
        a = self._agent
        if a.closed or len(frame) < 2:
            return
        clears = self._clears
        n = len(frame) // 2
        try:
            # Blocks while the queue holds QUEUE_MS: the core paces in real time, so rarely.
            await a.source.capture_frame(rtc.AudioFrame(frame[: 2 * n], OUT_RATE, 1, n))
        except Exception as e:  # dropped, like a frame to a dead socket; said once
            if not self._capture_failed:
                log.warning("livekit %s: capture_frame failed: %r", a.room_name, e)
            self._capture_failed = True
            return
        if clears != self._clears and not a.closed:
            a.source.clear_queue()  # clear() ran while this frame was in flight: drop it too

    async def clear(self) -> None:
        a = self._agent
        if a.closed:
            return
        self._clears += 1
        a.source.clear_queue()
        await self.send_event(events.Clear().as_dict())


class Agent:
    """The `voxmesh-agent` participant of one room, and that session's lifetime."""

    def __init__(self, bridge: LiveKitBridge, job: AgentJob) -> None:
        self.bridge = bridge
        self.job = job
        self.room_name = job.room
        self.user = job.user  # found out when None (see _is_user)
        self.room = rtc.Room()
        self.source = rtc.AudioSource(OUT_RATE, 1, queue_size_ms=bridge.QUEUE_MS)
        self.link = _AgentLink(self)
        self.closed = False
        self._handle: SessionHandle | None = None
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # None: stop
        self._user_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._mic_track: rtc.Track | None = None
        self._mic_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._cleanup_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()  # cleaned up: everything released
        self._bg: set[asyncio.Task[None]] = set()
        self._user_seen = False  # present at some point (API, SDK or a data packet)
        on = self.room.on
        on("participant_connected", self._on_participant)
        on("participant_active", self._on_participant)
        on("participant_disconnected", self._on_participant_left)
        on("track_subscribed", self._on_track_subscribed)
        on("track_unsubscribed", self._on_track_unsubscribed)
        on("data_received", self._on_data)
        on("disconnected", self._on_disconnected)

    async def start(self) -> None:
        b = self.bridge
        await asyncio.wait_for(self.room.connect(self.job.url, self.job.token), b.CONNECT_TIMEOUT_S)
        track = rtc.LocalAudioTrack.create_audio_track(TOPIC, self.source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await asyncio.wait_for(
            self.room.local_participant.publish_track(track, opts), b.CONNECT_TIMEOUT_S
        )
        for p in list(self.room.remote_participants.values()):  # the user may be in already
            self._on_participant(p)
            for pub in p.track_publications.values():
                if pub.track is not None:
                    self._on_track_subscribed(pub.track, pub, p)
        self._task = asyncio.create_task(self._run(), name=f"livekit-agent-{self.room_name}")
        self._spawn(self._watch_presence())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._bg.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._bg.discard)
        return task

    async def close(self) -> None:
        """Stop the session (idempotent) and wait until everything is released."""
        self._stop()
        if self._task is not None and not self._task.done():
            try:  # let _run finish its message; cut it short if the core hangs
                await asyncio.wait_for(asyncio.shield(self._task), self.bridge.CLEANUP_TIMEOUT_S)
            except Exception:
                self._task.cancel()
        await self._cleanup()

    async def wait_closed(self) -> None:
        """Until the session has ended and everything is released."""
        await self._done.wait()

    # -- room events (sync callbacks from the SDK) ------------------------------------------

    def _is_user(self, p: rtc.Participant | None) -> bool:
        if p is None:
            return False
        if self.user is None and is_person(p.identity, p.kind):
            self._adopt(p.identity)
        return p.identity == self.user

    def _adopt(self, identity: str) -> None:
        # A dispatched room: the one served is whoever came first; later ones are ignored.
        self.user = identity
        log.info("livekit %s: serving %s", self.room_name, identity)

    def _on_participant(self, p: rtc.RemoteParticipant) -> None:
        # ACTIVE = its data channel is up, so events sent from now on reach it.
        if self._is_user(p):
            self._user_seen = True
            if p.state == rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE:
                self._user_ready.set()

    def _on_participant_left(self, p: rtc.RemoteParticipant) -> None:
        if self._is_user(p):
            self._stop()

    def _on_track_subscribed(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if self._is_user(p) and track.kind == rtc.TrackKind.KIND_AUDIO and self._mic_track is None:
            self._mic_track = track
            self._start_mic()

    def _on_track_unsubscribed(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if track is self._mic_track:  # the next audio track the user publishes takes over
            self._mic_track = None
            if self._mic_task is not None:
                self._mic_task.cancel()
                self._mic_task = None

    def _on_data(self, pkt: rtc.DataPacket) -> None:
        # participant is None while the user is not announced yet; a room of ours admits only
        # the agent and the user (max_participants=2), so such a packet is the user's too (in
        # a dispatched room: of the one the agent serves, or else of the first in the room).
        if pkt.topic != TOPIC or self.closed:
            return
        if pkt.participant is not None and not self._is_user(pkt.participant):
            return
        self._user_seen = True
        self._user_ready.set()  # it sent data, so its data channel is up
        try:
            msg = json.loads(pkt.data)
        except (ValueError, UnicodeDecodeError):
            msg = None
        if not isinstance(msg, dict):
            err = error_event(ErrorCode.BAD_MESSAGE, "expected one JSON object")
            self._spawn(self.link.send_event(err))
            return
        self._inbox.put_nowait(msg)

    def _on_disconnected(self, reason: Any) -> None:
        log.info("livekit %s: agent disconnected (%s)", self.room_name, reason)
        self._stop()

    # -- session lifetime ---------------------------------------------------------------------

    def _stop(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            self._inbox.put_nowait(None)

    async def _wait_user(self) -> bool:
        waits = [asyncio.create_task(e.wait()) for e in (self._user_ready, self._stopping)]
        try:
            await asyncio.wait(
                waits, timeout=self.bridge.JOIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for t in waits:
                t.cancel()
        if not self._user_ready.is_set() and not self._stopping.is_set():
            log.info("livekit %s: user never joined", self.room_name)
        return self._user_ready.is_set() and not self._stopping.is_set()

    async def _watch_presence(self) -> None:
        """Server-side truth on the user while the SDK has not announced them (see top)."""
        while not self._stopping.is_set():
            if self.user is None or self.user not in self.room.remote_participants:
                try:  # (else SDK events tell us)
                    info = await self._user_info()
                except Exception as e:
                    log.warning("livekit %s: participant lookup: %r", self.room_name, e)
                else:
                    if info is None and self._user_seen:
                        log.info("livekit %s: user left unannounced", self.room_name)
                        self._stop()
                    elif info is not None:
                        self._user_seen = True
                        if info.state == api.ParticipantInfo.State.ACTIVE:
                            self._user_ready.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.bridge.PRESENCE_POLL_S)

    async def _user_info(self) -> api.ParticipantInfo | None:
        """The user as the server sees them (the first person in the room while we do not
        know who); None when not in the room."""
        rooms = self.bridge.lkapi.room
        if self.user is None:
            listed = await rooms.list_participants(api.ListParticipantsRequest(room=self.room_name))
            people = [p for p in listed.participants if is_person(p.identity, p.kind)]
            if not people:
                return None
            if self.user is None:  # (the SDK may have told us meanwhile)
                self._adopt(people[0].identity)
            return next((p for p in people if p.identity == self.user), None)
        try:
            req = api.RoomParticipantIdentity(room=self.room_name, identity=self.user)
            return await rooms.get_participant(req)
        except api.TwirpError as e:
            if e.code == api.TwirpErrorCode.NOT_FOUND:
                return None
            raise

    async def _run(self) -> None:
        try:
            if not await self._wait_user():
                return
            self._handle = await self.job.opener(self.link)
            log.info("livekit %s: session %s open", self.room_name, self._handle.session_id)
            self._start_mic()
            while (msg := await self._inbox.get()) is not None:
                try:
                    await self._handle.client_message(msg)
                except Exception:
                    log.exception("livekit %s: client_message failed", self.room_name)
                if msg.get("type") == "bye":  # the core ended the session: end the room too
                    break
        except Exception as e:
            log.exception("livekit %s: session failed", self.room_name)
            await self.link.send_event(error_event(ErrorCode.INTERNAL, f"session failed: {e}"))
        finally:
            await self._cleanup()

    def _start_mic(self) -> None:
        if self.closed or self._mic_task is not None:
            return
        if self._handle is not None and self._mic_track is not None:
            self._mic_task = self._spawn(self._pump_mic(self._handle, self._mic_track))

    async def _pump_mic(self, handle: SessionHandle, track: rtc.Track) -> None:
        stream = rtc.AudioStream.from_track(
            track=track, sample_rate=MIC_RATE, num_channels=1, capacity=MIC_CAPACITY
        )
        try:
            async for ev in stream:
                handle.push_mic(ev.frame.data.tobytes(), ev.frame.sample_rate)
        except Exception:
            log.exception("livekit %s: mic pump failed", self.room_name)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.aclose(), self.bridge.CLEANUP_TIMEOUT_S)

    async def _cleanup(self) -> None:
        # One cleanup, however many callers; shield it so a cancelled caller can't cut it short.
        if self._cleanup_task is None:
            self._cleanup_task = asyncio.create_task(self._do_cleanup())
        await asyncio.shield(self._cleanup_task)

    async def _do_cleanup(self) -> None:
        b, timeout = self.bridge, self.bridge.CLEANUP_TIMEOUT_S
        self.closed = True
        self._stop()
        self.source.clear_queue()  # releases a send_audio blocked on a full queue
        for task in list(self._bg):  # presence watcher, mic pump, pending error events
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        if self._mic_track is not None:  # what the network cost this session's mic
            with contextlib.suppress(Exception):
                st = await asyncio.wait_for(receive_stats(self._mic_track), timeout)
                if st:
                    log.info(
                        "livekit %s: mic: %d packets, jitter buffer %.0f ms (target %.0f ms), "
                        "%.1f%% concealed",
                        self.room_name,
                        st["packets"],
                        st["jitter_buffer_ms"],
                        st["target_ms"],
                        st["concealed_pct"],
                    )
        if self._handle is not None:
            try:
                await asyncio.wait_for(self._handle.close(), timeout)
            except Exception:
                log.exception("livekit %s: closing the session failed", self.room_name)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), timeout)
        with contextlib.suppress(Exception):
            await self.source.aclose()
        if self.job.owns_room:
            await b._delete_room(self.room_name)
        b._agents.discard(self)
        self._done.set()
        log.info("livekit %s: closed", self.room_name)
