"""The HTTP side of the transport: one port for the page, health, metrics, WebSocket, LiveKit.

Routes: ``GET /`` (``static/index.html``, or a minimal page), ``GET /static/...`` and
top-level files of ``static/``, ``GET /health``, ``GET /metrics``, ``GET /ws``
(docs/client-protocol.md), ``POST /session`` (a LiveKit room, or 404 when LiveKit is not
configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import struct
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from voxmesh.mesh import events
from voxmesh.mesh.settings import ServerSettings

from .echo import AEC_MODES, AecMode
from .errors import ClientError, ErrorCode, error_event, valid_text
from .metrics import TransportStats
from .mic import MAX_RATE, MIN_RATE
from .session import Session

log = logging.getLogger("voxmesh.transport")

STATIC_DIR = Path(__file__).with_name("static")
HARD_LIMIT_FACTOR = 4  # past this many times max_message_bytes aiohttp closes the socket
WS_PING_S = 20.0  # aiohttp pings this often and drops a peer that does not answer
DROP_GRACE_S = 1.0  # a slow reader gets this long to take its error and close frames
DROP_POLL_S = 0.01
CLOSE_TIMEOUT_S = 5.0  # a closing handshake that takes longer ends with an abort
MINIMAL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>voxmesh</title></head>
<body><h1>voxmesh</h1>
<p>The web client is not installed. Connect a WebSocket to <code>/ws</code>: send
<code>{"type": "hello", "sample_rate": 16000}</code>, then 16-bit mono PCM; you get 20 ms
frames of 48 kHz PCM and JSON events back. See <code>/health</code> and <code>/metrics</code>.</p>
</body></html>
"""


class TransportCore(Protocol):
    """What the server needs from the transport actor."""

    stats: TransportStats
    max_message_bytes: int
    auth_token: str
    metrics_auth: bool
    settings: ServerSettings

    async def open_session(
        self, link: WsLink, *, client: str, greet: bool, partial_ms: int | None = None
    ) -> Session: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def metrics_text(self) -> str: ...
    async def livekit_session(self) -> dict[str, str] | None: ...


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time token check, safe for any str: a lone surrogate (from JSON or from a
    header aiohttp decoded with surrogateescape) is encoded, never an exception."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def abort_transport(transport: asyncio.Transport | None) -> None:
    """Close a TCP connection now, unsent data or not (RST, no lingering in the kernel)."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class WsLink:
    """The ``ClientLink`` (and ``Droppable``) of one WebSocket connection."""

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport | None = None
    ) -> None:
        self.ws = ws
        self.transport = transport

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(_dumps(event))

    async def send_audio(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def clear(self) -> None:
        await self.clear_with({})

    async def clear_with(self, detail: dict[str, Any]) -> None:
        t_issued, t_last_frame = detail.get("t_issued"), detail.get("t_last_frame")
        clear = events.Clear(t_issued=t_issued, t_last_frame=t_last_frame)
        await self.send_event(clear.as_dict())

    async def drop(self, event: dict[str, Any], code: int, reason: str) -> None:
        """Cut off a client that does not read: ``event`` and a close frame are queued
        behind what it has not read; if it has not taken all of it within DROP_GRACE_S, the
        TCP connection is aborted. Either way the connection is gone after this."""
        transport = self.transport
        try:
            async with asyncio.timeout(DROP_GRACE_S):
                await _despite_drain(self.ws.send_str(_dumps(event)))
                await _despite_drain(self.ws.close(code=code, message=reason.encode()))
                # close() may return before the bytes have left: give the client the rest
                # of the grace to take them (one that reads again gets everything, then EOF).
                while transport is not None and transport.get_write_buffer_size():
                    await asyncio.sleep(DROP_POLL_S)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("transport: dropping a slow reader: %r", exc)
        finally:
            if transport is not None and (
                transport.get_write_buffer_size() or not transport.is_closing()
            ):
                abort_transport(transport)


async def _despite_drain(write: Awaitable[Any]) -> None:
    """Await a write on a connection whose earlier write was timed out.

    aiohttp shares one drain waiter among writers: the timed-out write cancelled it, so
    every later write that waits for the drain gets that CancelledError at once (its bytes
    are in the transport's buffer already). That is not our task being cancelled: go on."""
    try:
        await write
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


class WebServer:
    def __init__(self, core: TransportCore, host: str, port: int) -> None:
        self.core = core
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/session", self._session)
        app.router.add_get("/static/{path:.+}", self._static)
        app.router.add_get("/{path:[^/]+}", self._static)
        self.app = app

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        self.port = int(runner.addresses[0][1])  # the real one when asked for port 0

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- plain HTTP -------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = STATIC_DIR / "index.html"
        if index.is_file():
            return web.FileResponse(index)
        return web.Response(text=MINIMAL_PAGE, content_type="text/html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        root = STATIC_DIR.resolve()
        path = (root / request.match_info["path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _health(self, request: web.Request) -> web.Response:
        ok, detail = self.core.health()
        return web.json_response(detail, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.core.metrics_auth and (refused := self._unauthorized(request)) is not None:
            return refused
        return web.Response(text=self.core.metrics_text(), content_type="text/plain")

    async def _session(self, request: web.Request) -> web.Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        try:
            room = await self.core.livekit_session()
        except Exception as exc:
            log.exception("transport: LiveKit session failed")
            return web.json_response(error_event(ErrorCode.LIVEKIT_FAILED, str(exc)), status=502)
        if room is None:
            body = error_event(ErrorCode.NOT_FOUND, "LiveKit is not configured on this server")
            return web.json_response(body, status=404)
        return web.json_response(room)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        """None if the request may proceed: no ``server.auth_token``, or ``Authorization:
        Bearer <token>`` carries it; else the 401 to answer."""
        token = self.core.auth_token
        if not token:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and tokens_match(given.strip(), token):
            return None
        self.core.stats.client_errors[ErrorCode.UNAUTHORIZED] += 1
        body = error_event(ErrorCode.UNAUTHORIZED, "this needs 'Authorization: Bearer <token>'")
        return web.json_response(
            body, status=401, headers={"WWW-Authenticate": 'Bearer realm="voxmesh"'}
        )

    # --- WebSocket --------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        limit = self.core.max_message_bytes
        ws = web.WebSocketResponse(
            max_msg_size=limit * HARD_LIMIT_FACTOR, compress=False, heartbeat=WS_PING_S
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        link = WsLink(ws, request.transport)
        session: Session | None = None
        rate, aec, partial_ms = 0, self.core.settings.aec, self.core.settings.partials_ms
        try:
            async for msg in ws:
                if session is not None and session.closed:
                    break  # bye, or the client stopped taking our frames
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    if _too_large(msg.data, limit):
                        raise ClientError(ErrorCode.TOO_LARGE, f"message exceeds {limit} bytes")
                    if msg.type == WSMsgType.BINARY:
                        if session is None:
                            raise ClientError(ErrorCode.HELLO_REQUIRED, "send hello before audio")
                        session.push_mic(msg.data, rate)
                        continue
                    obj = _parse(msg.data)
                    if session is not None:
                        await session.client_message(obj)
                        if session.closed:
                            break
                        continue
                    rate, aec, partial_ms = self._check_hello(obj)
                    session = await self.core.open_session(
                        link, client="ws", greet=True, partial_ms=partial_ms
                    )
                    session.use_aec(aec, self.core.settings)  # before any mic audio
                    if "voice" in obj:  # hello.voice: as a `voice` message right after
                        await session.client_message({"type": "voice", "voice": obj["voice"]})
                except ClientError as err:
                    await self._refuse(ws, link, session, err)
                except Exception:  # a bug of ours must not end the client's session
                    log.exception("transport: error serving a websocket message")
                    bug = ClientError(ErrorCode.INTERNAL, "internal error serving the message")
                    await self._refuse(ws, link, session, bug)
        except ConnectionError as exc:
            log.debug("transport: websocket dropped: %r", exc)
        finally:
            self._sockets.discard(ws)
            if session is not None:
                await session.close("disconnect")
            if not ws.closed:
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await _despite_drain(ws.close())
                except TimeoutError:  # a peer that reads nothing cannot take the close either
                    abort_transport(request.transport)
        return ws

    async def _refuse(
        self,
        ws: web.WebSocketResponse,
        link: WsLink,
        session: Session | None,
        err: ClientError,
    ) -> None:
        """Tell the client what was wrong; close only where no session can follow."""
        if session is not None:
            session.report(err)
            return
        self.core.stats.client_errors[err.code] += 1
        await link.send_event(err.event())
        if err.code is ErrorCode.UNAUTHORIZED:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthorized")
        elif err.code is ErrorCode.NO_SLOT:
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"no free slot")

    def _check_hello(self, obj: dict[str, Any]) -> tuple[int, AecMode, int]:
        """The mic rate, who cancels echo (``aec``, default ``server.aec``) and the partial
        transcripts' interval (``partials``, default ``server.partials_ms``)."""
        if obj.get("type") != "hello":
            raise ClientError(ErrorCode.HELLO_REQUIRED, "the first message must be hello")
        if "sample_rate" not in obj:
            raise ClientError(ErrorCode.MISSING_FIELD, "hello needs a 'sample_rate' field")
        rate = obj["sample_rate"]
        if type(rate) is not int or not MIN_RATE <= rate <= MAX_RATE:
            raise ClientError(
                ErrorCode.BAD_RATE, f"sample_rate must be an integer {MIN_RATE}..{MAX_RATE}"
            )
        given = obj.get("token")
        if isinstance(given, str) and not valid_text(given):
            raise ClientError(ErrorCode.BAD_FIELD, "hello.token is not valid Unicode")
        token = self.core.auth_token
        if token and not (isinstance(given, str) and tokens_match(given, token)):
            raise ClientError(ErrorCode.UNAUTHORIZED, "hello needs a valid token")
        aec = obj.get("aec", self.core.settings.aec)
        if aec not in AEC_MODES:
            raise ClientError(
                ErrorCode.BAD_FIELD, f"hello.aec must be one of {', '.join(AEC_MODES)}"
            )
        return rate, aec, self._partials(obj)

    def _partials(self, obj: dict[str, Any]) -> int:
        """hello.partials: true (the server's fastest rate), false or 0 (none), or N ms."""
        asked = obj.get("partials", self.core.settings.partials_ms)
        if asked is True:
            return 1  # the router's floor, asr.partial_interval_ms, applies
        if asked is False:
            return 0
        if type(asked) is not int or asked < 0:
            raise ClientError(
                ErrorCode.BAD_FIELD, "hello.partials must be true, false or milliseconds >= 0"
            )
        return asked


def _too_large(data: str | bytes, limit: int) -> bool:
    if len(data) > limit:
        return True
    # A str's UTF-8 form can be up to 4x its length: measure only when it could matter.
    return isinstance(data, str) and len(data) * 4 > limit and len(data.encode()) > limit


def _parse(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ClientError(ErrorCode.BAD_JSON, "the message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ClientError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    if not isinstance(obj.get("type"), str):
        raise ClientError(ErrorCode.BAD_MESSAGE, "a message needs a string 'type'")
    return obj
