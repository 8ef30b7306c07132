"""``voxmesh say TEXT -o out.wav``: speak TEXT through the running mesh into a WAV file.

It connects to the mesh on the configured port (``--port``/``--config``, as ``voxmesh up``),
sends ``{"type": "say"}``, records the reply frames until ``audio_end`` and writes them as a
48 kHz mono 16-bit WAV. It prints the duration and the first-audio latency (``say`` sent ->
first frame received). Exit 1 when no mesh runs or the reply fails; exit 2, before anything
is sent, when TEXT is empty or ``-o`` cannot be written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import click

from .common import CliError, MeshOptions, mesh_options, wav_output
from .session import fail_on_error, is_error, mesh_session, write_reply


@dataclass(frozen=True, kw_only=True)
class SayOptions(MeshOptions):
    text: str
    output: Path


@click.command("say", help="speak TEXT through the running mesh into a WAV file")
@click.argument("text", metavar="TEXT")
@wav_output
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="S",
    help="seconds to wait for the whole reply (default: 20 + 0.2 per character)",
)
@mesh_options
def say(
    text: str, output: Path, timeout: float | None, config: str | None, port: int | None
) -> int:
    import asyncio

    text = text.strip()
    if not text:
        raise CliError("TEXT is empty", code=2)
    options = SayOptions(config=config, port=port, text=text, output=output)
    return asyncio.run(_say(options, timeout if timeout is not None else 20.0 + 0.2 * len(text)))


async def _say(options: SayOptions, timeout: float) -> int:
    async with mesh_session(options) as client:
        since = client.mark()
        t_sent = time.monotonic()
        await client.say(options.text)
        try:
            await client.wait_for(
                lambda e: e.get("type") == "audio_end" or is_error(e), timeout, since=since
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
        duration = write_reply(options.output, client)
        latency_ms = (client.frames[0].t - t_sent) * 1000
    print(
        f"wrote {options.output}: {duration:.2f} s of audio; first audio after {latency_ms:.0f} ms"
    )
    return 0
