"""The HTTP side of the transport: one port for the page, health, metrics, WebSocket, LiveKit.

Routes: ``GET /`` (``static/index.html``, or a minimal page), ``GET /static/...`` and
top-level files of ``static/``, ``GET /health``, ``GET /metrics``, ``GET /ws`` (DESIGN
section 4), ``POST /session`` (a LiveKit room, or 404 when LiveKit is not configured).
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from .errors import ClientError, error_event
from .metrics import TransportStats
from .mic import MAX_RATE, MIN_RATE
from .session import Session

log = logging.getLogger("voxmesh.transport")

STATIC_DIR = Path(__file__).with_name("static")
HARD_LIMIT_FACTOR = 4  # past this many times max_message_bytes aiohttp closes the socket
WS_PING_S = 20.0  # aiohttp pings this often and drops a peer that does not answer
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

    async def open_session(self, link: WsLink, *, client: str, greet: bool) -> Session: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def metrics_text(self) -> str: ...
    async def livekit_session(self) -> dict[str, str] | None: ...


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


class WsLink:
    """The ``ClientLink`` of one WebSocket connection."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(_dumps(event))

    async def send_audio(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def clear(self) -> None:
        await self.clear_with({})

    async def clear_with(self, detail: dict[str, Any]) -> None:
        await self.send_event({"type": "clear", **detail})


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
        return web.Response(text=self.core.metrics_text(), content_type="text/plain")

    async def _session(self, request: web.Request) -> web.Response:
        try:
            room = await self.core.livekit_session()
        except Exception as exc:
            log.exception("transport: LiveKit session failed")
            return web.json_response(error_event("livekit_failed", str(exc)), status=502)
        if room is None:
            body = error_event("not_found", "LiveKit is not configured on this server")
            return web.json_response(body, status=404)
        return web.json_response(room)

    # --- WebSocket --------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        limit = self.core.max_message_bytes
        ws = web.WebSocketResponse(
            max_msg_size=limit * HARD_LIMIT_FACTOR, compress=False, heartbeat=WS_PING_S
        )
        await ws.prepare(request)
        self._sockets.add(ws)
        link = WsLink(ws)
        session: Session | None = None
        rate = 0
        try:
            async for msg in ws:
                if session is not None and session.closed:
                    break  # bye, or the client stopped taking our frames
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    if _too_large(msg.data, limit):
                        raise ClientError("too_large", f"message exceeds {limit} bytes")
                    if msg.type == WSMsgType.BINARY:
                        if session is None:
                            raise ClientError("hello_required", "send hello before audio")
                        session.push_mic(msg.data, rate)
                        continue
                    obj = _parse(msg.data)
                    if session is not None:
                        await session.client_message(obj)
                        if session.closed:
                            break
                        continue
                    rate = self._check_hello(obj)
                    session = await self.core.open_session(link, client="ws", greet=True)
                except ClientError as err:
                    await self._refuse(ws, link, session, err)
                except Exception:  # a bug of ours must not end the client's session
                    log.exception("transport: error serving a websocket message")
                    bug = ClientError("internal", "internal error serving the message")
                    await self._refuse(ws, link, session, bug)
        except ConnectionError as exc:
            log.debug("transport: websocket dropped: %r", exc)
        finally:
            self._sockets.discard(ws)
            if session is not None:
                await session.close("disconnect")
            if not ws.closed:
                await ws.close()
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
        if err.code == "unauthorized":
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthorized")
        elif err.code == "no_slot":
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"no free slot")

    def _check_hello(self, obj: dict[str, Any]) -> int:
        if obj.get("type") != "hello":
            raise ClientError("hello_required", "the first message must be hello")
        if "sample_rate" not in obj:
            raise ClientError("missing_field", "hello needs a 'sample_rate' field")
        rate = obj["sample_rate"]
        if type(rate) is not int or not MIN_RATE <= rate <= MAX_RATE:
            raise ClientError("bad_rate", f"sample_rate must be an integer {MIN_RATE}..{MAX_RATE}")
        token = self.core.auth_token
        if token:
            given = obj.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode(), token.encode()
            ):
                raise ClientError("unauthorized", "hello needs a valid token")
        return rate


def _too_large(data: str | bytes, limit: int) -> bool:
    if len(data) > limit:
        return True
    # A str's UTF-8 form can be up to 4x its length: measure only when it could matter.
    return isinstance(data, str) and len(data) * 4 > limit and len(data.encode()) > limit


def _parse(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ClientError("bad_json", "the message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ClientError("bad_message", "a message must be a JSON object")
    if not isinstance(obj.get("type"), str):
        raise ClientError("bad_message", "a message needs a string 'type'")
    return obj
