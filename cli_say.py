"""``voxmesh say TEXT -o out.wav``: speak TEXT through the running mesh into a WAV file.

It connects to the mesh on the configured port (``--port``/``--config``, as ``voxmesh up``),
sends ``{"type": "say"}``, records the reply frames until ``audio_end`` and writes them as a
48 kHz mono 16-bit WAV. It prints the duration and the first-audio latency (``say`` sent ->
first frame received). Exit 1 when no mesh runs or the reply fails.

``mesh_session`` and ``fail_on_error`` are shared with ``voxmesh talk``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxmesh.cli import CliError, add_config_arguments, load_config, running_mesh

if TYPE_CHECKING:
    from voxmesh.client import WsClient

CONNECT_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", metavar="TEXT", help="what to say")
    parser.add_argument(
        "-o", "--output", required=True, type=Path, metavar="OUT.wav", help="WAV file to write"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds to wait for the whole reply (default: 20 + 0.2 per character)",
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    text = args.text.strip()
    if not text:
        raise CliError("TEXT is empty", code=2)
    timeout = args.timeout if args.timeout is not None else 20.0 + 0.2 * len(text)
    return asyncio.run(_say(args, text, timeout))


async def _say(args: argparse.Namespace, text: str, timeout: float) -> int:
    from voxmesh.client import write_wav

    async with mesh_session(args) as client:
        since = client.mark()
        t_sent = time.monotonic()
        await client.say(text)
        try:
            await client.wait_for(
                lambda e: e.get("type") == "audio_end" or _is_error(e), timeout, since=since
            )
        except TimeoutError:
            raise CliError(
                f"no complete reply within {timeout:g} s (events: {client.types(since)})"
            ) from None
        fail_on_error(client, since)
        end = client.events_of("audio_end")[-1]
        if end.get("reason") != "done":
            raise CliError(f"the reply was cut off ({end.get('reason')})")
        if not client.frames:
            raise CliError("the reply had no audio")
        duration = write_wav(args.output, client.audio())
        latency_ms = (client.frames[0].t - t_sent) * 1000
    print(f"wrote {args.output}: {duration:.2f} s of audio; first audio after {latency_ms:.0f} ms")
    return 0


# --- shared with voxmesh talk ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mesh_session(
    args: argparse.Namespace, *, sample_rate: int = 16000
) -> AsyncIterator[WsClient]:
    """A WebSocket session with the running mesh, or a CliError that says why not."""
    from voxmesh.client import ConnectError, open_session

    state = running_mesh(args)
    token = str(load_config(args)["server"].get("auth_token") or "") or None
    url = str(state.get("ws_url") or f"ws://127.0.0.1:{state['port']}/ws")
    try:
        client = await open_session(
            url, sample_rate=sample_rate, token=token, timeout=CONNECT_TIMEOUT_S
        )
    except ConnectError as exc:
        raise CliError(str(exc)) from None
    try:
        yield client
    except ConnectionError as exc:  # the mesh went away mid-session
        raise CliError(f"lost the connection to {url}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await client.bye()
        await client.close()


def _is_error(event: dict[str, Any]) -> bool:
    return event.get("type") == "error"


def fail_on_error(client: WsClient, since: int = 0) -> None:
    """CliError with the server's message if it sent an error event."""
    for event in client.events[since:]:
        if _is_error(event.data):
            code, message = event.data.get("code"), event.data.get("message")
            raise CliError(f"the mesh answered {code}: {message}")
