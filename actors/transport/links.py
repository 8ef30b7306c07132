"""The seams between the transport core and the ways a client can connect.

The core (sessions, pacing, the mesh) knows a client only as a ``ClientLink``; a front end
(the WebSocket server, the LiveKit bridge) opens a session with a ``SessionOpener`` and
feeds it through the ``SessionHandle`` it gets back. ``livekit_bridge.py`` imports these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable


class ClientLink(Protocol):
    """What the transport core needs from a client connection."""

    async def send_event(self, event: dict[str, Any]) -> None: ...
    async def send_audio(self, frame: bytes) -> None: ...
    async def clear(self) -> None: ...


class SessionHandle(Protocol):
    """What the transport core gives back for each session."""

    session_id: str

    def push_mic(self, pcm: bytes, sample_rate: int) -> None: ...
    async def client_message(self, msg: dict[str, Any]) -> None: ...
    async def close(self) -> None: ...


SessionOpener = Callable[[ClientLink], Awaitable[SessionHandle]]


@runtime_checkable
class DetailedClear(Protocol):
    """Optional: a link whose ``clear`` event can carry timing fields for the bench.

    The WebSocket link implements it (``{"type": "clear", "t_issued": ..., "t_last_frame":
    ...}``); a link without it just gets ``clear()``.
    """

    async def clear_with(self, detail: dict[str, Any]) -> None: ...


@runtime_checkable
class Droppable(Protocol):
    """Optional: a link the core can cut off when its client stops taking data.

    ``drop`` queues ``event`` (an ``error``) and a close with ``code``/``reason`` where the
    connection still takes writes, then makes sure the connection is really gone (the
    WebSocket link aborts the TCP connection if the close cannot be delivered in time).
    """

    async def drop(self, event: dict[str, Any], code: int, reason: str) -> None: ...
