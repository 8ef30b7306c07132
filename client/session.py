"""Opening a WebSocket session the way a program that is not a test wants it.

``open_session`` turns every way of failing to connect into one ``ConnectError`` whose
message says why; ``ws_session`` is a session for an ``async with`` body, closed after it
with a ``bye``, optionally with a microphone that streams silence the whole time (as an
open mic does, so the mesh hears a live stream).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

from .mic import MicStream
from .ws import WsClient


class ConnectError(ConnectionError):
    """The server cannot be reached, or refused the session; the message says which."""


async def open_session(
    url: str,
    *,
    sample_rate: int = 16000,
    token: str | None = None,
    player: bool = False,
    timeout: float = 5.0,
) -> WsClient:
    """``WsClient.connect`` with every way of failing turned into a ``ConnectError``."""
    try:
        return await WsClient.connect(
            url, sample_rate=sample_rate, token=token, player=player, timeout=timeout
        )
    except RuntimeError as exc:  # hello answered with an error event
        raise ConnectError(f"{url} refused the session: {exc}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot connect to {url}: {exc or type(exc).__name__}") from None


@contextlib.asynccontextmanager
async def ws_session(
    url: str,
    *,
    sample_rate: int = 16000,
    token: str | None = None,
    player: bool = False,
    stream_silence: bool = False,
    timeout: float = 5.0,
) -> AsyncIterator[WsClient]:
    """An open session (``open_session``) for the body; ``bye`` and closed after it. With
    ``stream_silence`` its microphone sends silence for as long as it is open."""
    client = await open_session(
        url, sample_rate=sample_rate, token=token, player=player, timeout=timeout
    )
    mic = MicStream(client, sample_rate) if stream_silence else None
    try:
        if mic is not None:
            mic.start()
        yield client
    finally:
        if mic is not None:
            with contextlib.suppress(Exception):  # the socket may have died under it
                await mic.stop()
        await client.close(bye=True)
