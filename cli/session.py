"""A WebSocket session with the running mesh, shared by ``voxmesh say`` and ``voxmesh talk``:
``mesh_session`` (connect, or a CliError that says why not), ``fail_on_error`` (the mesh's
own error events as a CliError) and ``write_reply`` (the reply audio as a WAV file)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CliError, MeshOptions, load_config, running_mesh

if TYPE_CHECKING:
    from voxmesh.client import WsClient

CONNECT_TIMEOUT_S = 5.0


@contextlib.asynccontextmanager
async def mesh_session(
    options: MeshOptions, *, sample_rate: int = 16000
) -> AsyncIterator[WsClient]:
    """A WebSocket session with the running mesh, or a CliError that says why not."""
    from voxmesh.client import ConnectError, ws_session

    state = running_mesh(options)
    token = load_config(options).server.auth_token or None
    url = str(state.get("ws_url") or f"ws://127.0.0.1:{state['port']}/ws")
    try:
        async with ws_session(
            url, sample_rate=sample_rate, token=token, timeout=CONNECT_TIMEOUT_S
        ) as client:
            yield client
    except ConnectError as exc:  # no session: unreachable, or refused
        raise CliError(str(exc)) from None
    except ConnectionError as exc:  # the mesh went away mid-session
        raise CliError(f"lost the connection to {url}: {exc}") from None


def is_error(event: dict[str, Any]) -> bool:
    return event.get("type") == "error"


def fail_on_error(client: WsClient, since: int = 0) -> None:
    """CliError with the server's message if it sent an error event."""
    for event in client.events[since:]:
        if is_error(event.data):
            code, message = event.data.get("code"), event.data.get("message")
            raise CliError(f"the mesh answered {code}: {message}")


def write_reply(path: Path, client: WsClient) -> float:
    """Write the reply frames received as a 48 kHz mono WAV; its duration in seconds."""
    from voxmesh.client import write_wav

    try:
        duration: float = write_wav(path, client.audio())
    except OSError as exc:  # checked before the session, but the disk may still fill up
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    return duration
