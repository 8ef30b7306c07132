"""One client session: its ring slot, mic input, client messages and router control.

A ``Session`` is the ``SessionHandle`` the front ends (WebSocket, LiveKit) get from the
transport. Mic PCM goes through ``MicWriter`` into the slot's mic ring; client JSON messages
become control messages to the router; the router's HOLD/RELEASE/STOP/CLIENT_EVENT reach the
session's ``Pacer``, the only writer to the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from voxmesh.mesh.protocol import (
    ClientInterrupt,
    ClientText,
    ClientVoice,
    Hold,
    Message,
    Release,
    SessionClose,
    SessionOpen,
    Stop,
)
from voxmesh.mesh.ring import Slot
from voxmesh.mesh.settings import ServerSettings

from .echo import AecMode, EchoCanceller
from .errors import MAX_TEXT_CHARS, ClientError, ErrorCode, field
from .links import ClientLink, Droppable
from .metrics import TransportStats
from .mic import MicWriter
from .pacer import SLOW_READER_S, Pacer, RingWatcher
from .playback import Playback

log = logging.getLogger("voxmesh.transport")

MAX_VOICE_CHARS = 256  # a voice name; longer is a client bug
MAX_BACKLOG = 256  # error events are dropped while this many messages wait for the client
SLOW_READER_CLOSE = 1008  # the WebSocket close code for a slow reader (policy violation)


class SessionOwner(Protocol):
    """What a session needs from the transport actor."""

    stats: TransportStats
    watcher: RingWatcher

    def send(self, msg: Message) -> bool: ...
    def to_router(self, session: Session, msg: Message) -> None: ...
    def poll_control(self) -> None: ...
    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...
    def session_closed(self, session: Session) -> None: ...


class Session:
    def __init__(
        self,
        owner: SessionOwner,
        link: ClientLink,
        slot: Slot,
        generation: int,
        session_id: str,
        *,
        client: str,
        lead_s: float,
        slow_reader_s: float = SLOW_READER_S,
        partial_ms: int = 0,
    ) -> None:
        self.session_id = session_id
        self.owner = owner
        self.link = link
        self.slot = slot
        self.generation = generation
        self.client = client
        self.partial_ms = partial_ms  # hello.partials: the router sends them, or not
        self.voice = ""  # as the router last confirmed it
        self.closed = False
        self.mic = MicWriter(slot.mic)
        self.aec: AecMode = "client"  # LiveKit (WebRTC cancels in the browser); see use_aec
        self.echo: EchoCanceller | None = None
        self.pacer = Pacer(
            link,
            slot,
            owner.stats,
            session=session_id,
            lead_s=lead_s,
            send_router=owner.send,
            poll_control=owner.poll_control,
            slow_reader_s=slow_reader_s,
        )
        self._task: asyncio.Task[Any] | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "text": lambda m: self._text(m, "text"),
            "say": lambda m: self._text(m, "say"),
            "interrupt": self._interrupt,
            "played": self._played,
            "hello": self._hello,
            "voice": self._voice,
        }

    @property
    def playback(self) -> Playback:
        return self.pacer.playback

    def open_message(self) -> SessionOpen:
        """SESSION_OPEN, with where playback stands (for a router that restarted)."""
        pb = self.playback
        return SessionOpen(
            session=self.session_id,
            slot=self.slot.index,
            generation=self.generation,
            client=self.client,
            epoch=pb.epoch,
            utterance=pb.playing,
            utterances=pb.utterances_seen,
            voice=self.voice,
            partial_ms=self.partial_ms,
        )

    def start(self) -> None:
        self.owner.send(self.open_message())
        self.owner.watcher.add(self.pacer)
        self._task = self.owner.spawn(self._run_pacer())

    async def _run_pacer(self) -> None:
        await self.pacer.run()
        if self.closed:
            return
        if not self.pacer.slow_reader:  # the client cannot be written to any more
            await self.close("client_lost")
            return
        # The client stopped reading: free the slot now, then cut the connection off (the
        # link may give the client a moment to take the error and the close).
        err = ClientError(
            ErrorCode.SLOW_READER,
            f"the client did not read its socket for {self.pacer.slow_reader_s:g} s",
        )
        self.owner.stats.client_errors[err.code] += 1
        await self.close("slow_reader")
        if isinstance(self.link, Droppable):
            await self.link.drop(err.event(), SLOW_READER_CLOSE, "slow reader")

    def use_aec(self, mode: AecMode, settings: ServerSettings) -> None:
        """Who cancels the bot's echo in this session's mic (hello's ``aec``): with
        ``server`` ours does, before the mic ring (echo.py); else the mic is taken as is."""
        self.aec = mode
        if mode != "server" or self.echo is not None:
            return
        echo = EchoCanceller(gate_db=settings.aec_gate_db, hangover_ms=settings.aec_hangover_ms)
        self.echo = echo
        self.mic.clean = echo.process
        self.playback.far_end = lambda pos, pcm: echo.far(pos, pcm, self.mic.received)

    # --- SessionHandle ----------------------------------------------------------------------

    def push_mic(self, pcm: bytes, sample_rate: int) -> None:
        if self.closed:
            return
        try:
            self.owner.stats.mic_frames += self.mic.push(pcm, sample_rate)
        except ValueError as exc:
            self.report(ClientError(ErrorCode.BAD_RATE, str(exc)))

    async def client_message(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            kind = msg.get("type")
            if not isinstance(kind, str):
                raise ClientError(ErrorCode.BAD_MESSAGE, "a message needs a string 'type'")
            if kind == "bye":
                await self.close("bye")
                return
            handler = self._handlers.get(kind)
            if handler is None:
                raise ClientError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
            handler(msg)
        except ClientError as exc:
            self.report(exc)
        except Exception:
            log.exception("transport %s: error serving %r", self.session_id, msg.get("type"))
            self.report(ClientError(ErrorCode.INTERNAL, "internal error serving the message"))

    async def close(self, reason: str = "bye", *, tell_router: bool = True) -> None:
        """End the session (idempotent). ``tell_router=False`` at shutdown: after our
        GOODBYE the router would drop a SESSION_CLOSE from us anyway."""
        if self.closed:
            return
        self.closed = True
        self.owner.watcher.discard(self.pacer)
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if tell_router:
            self.owner.send(SessionClose(session=self.session_id, reason=reason))
        if self.echo is not None:
            log.info("transport %s: %s", self.session_id, self.echo.summary())
        self.slot.release()
        self.owner.session_closed(self)

    # --- client messages --------------------------------------------------------------------

    def report(self, err: ClientError) -> None:
        """An error event for the client, in order with everything else it is sent.

        A client that floods us with garbage while not reading gets no more errors once
        MAX_BACKLOG events wait for it: they are counted, not queued without bound."""
        self.owner.stats.client_errors[err.code] += 1
        if self.pacer.backlog >= MAX_BACKLOG:
            self.owner.stats.client_errors["dropped"] += 1  # a counter, not a code
            return
        self.send_event(err.event())

    def send_event(self, event: dict[str, Any]) -> None:
        if not self.closed:
            self.pacer.client_event(event)

    def _to_router(self, msg: Message) -> None:
        """A client request for the router: sent now, or held while the router is away."""
        self.owner.to_router(self, msg)

    def _text(self, msg: dict[str, Any], mode: str) -> None:
        text = field(msg, "text", str, mode)
        if len(text) > MAX_TEXT_CHARS:
            raise ClientError(
                ErrorCode.TEXT_TOO_LONG, f"{mode}.text exceeds {MAX_TEXT_CHARS} characters"
            )
        if not text.strip():
            raise ClientError(ErrorCode.BAD_FIELD, f"{mode}.text is empty")
        self._to_router(ClientText(session=self.session_id, text=text, mode=mode))

    def _voice(self, msg: dict[str, Any]) -> None:
        voice = field(msg, "voice", str, "voice")
        if len(voice) > MAX_VOICE_CHARS:
            raise ClientError(ErrorCode.BAD_FIELD, f"voice exceeds {MAX_VOICE_CHARS} characters")
        self._to_router(ClientVoice(session=self.session_id, voice=voice))  # checked there

    def _interrupt(self, msg: dict[str, Any]) -> None:
        self._to_router(ClientInterrupt(session=self.session_id))

    def _played(self, msg: dict[str, Any]) -> None:
        samples = field(msg, "samples", int, "played")
        if samples < 0:
            raise ClientError(ErrorCode.BAD_FIELD, "played.samples must be >= 0")
        # The ack counts samples the client played, so it can never pass what we sent it
        # (padding included); a bigger one is a bug or a lie and must not move the heard point.
        sent = self.playback.sent_total
        if samples > sent:
            raise ClientError(
                ErrorCode.BAD_FIELD, f"played.samples is past the {sent} samples sent"
            )
        self.playback.on_ack(samples, time.monotonic())
        if self.echo is not None:
            self.echo.ack(samples, self.mic.received)
        self.pacer.wakeup.set()  # a RELEASE may be waiting for this ack

    def _hello(self, msg: dict[str, Any]) -> None:
        raise ClientError(ErrorCode.ALREADY_HELLO, "this session is already open")

    # --- router control ---------------------------------------------------------------------

    def on_router(self, msg: Message) -> bool:
        """Serve a router message for this session; False if it is not one of ours."""
        now = time.monotonic()
        pb = self.playback
        if isinstance(msg, Hold):
            pb.hold(msg.epoch, msg.t_issued, now)
        elif isinstance(msg, Release):
            pb.release(msg.epoch, now)
        elif isinstance(msg, Stop):
            pb.stop(msg.epoch, now, msg.reason or "interrupted")
        else:
            return False
        self.pacer.wakeup.set()
        return True

    def forward(self, event: dict[str, Any]) -> None:
        """A CLIENT_EVENT from the router: passed on as is, in order with the audio."""
        if event.get("type") == "error":  # counted here with ours: every error a client gets
            self.owner.stats.client_errors[str(event.get("code", ""))] += 1
        elif event.get("type") == "voice":  # the router's yes: re-announced if it restarts
            self.voice = str(event.get("voice", ""))
        self.send_event(event)
