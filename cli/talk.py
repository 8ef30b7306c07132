"""``voxmesh talk IN.wav -o OUT.wav``: send a WAV file as the microphone, record the reply.

The file (16-bit PCM, any rate from 8 to 48 kHz; several channels are averaged) goes out as
the session's mic audio at its own rate (the server resamples), in 20 ms packets on a
real-time schedule (``--fast``: 8x real time). After the file the microphone keeps sending
silence, as a real one would, until the mesh has answered: every reply that started has
ended and the router is listening again (or ``--timeout`` runs out, exit 1 with what was
heard so far). Every reply frame received is written to OUT.wav (48 kHz mono 16-bit).
A file it cannot use, or an ``-o``/``--events`` path it cannot write, is exit 2 before
anything is sent.

``--events FILE.jsonl`` writes one JSON object per line: every server event with ``t``
(seconds since the client started connecting) and ``t_mono`` (``time.monotonic()``,
comparable with the server's own stamps on one host), plus the client's own marks
``client.mic_end`` (the last sample of the file sent) and ``client.first_frame``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import CliError, MeshOptions, mesh_options, output_file, wav_output
from .session import fail_on_error, mesh_session, write_reply

if TYPE_CHECKING:
    import numpy as np

    from voxmesh.client import WsClient

FAST_SPEED = 8.0


@dataclass(frozen=True, kw_only=True)
class TalkOptions(MeshOptions):
    output: Path
    fast: bool = False
    events: Path | None = None
    timeout: float = 30.0


@click.command("talk", help="send a WAV file as the microphone, record the reply")
@click.argument("wav", type=click.Path(path_type=Path), metavar="IN.wav")
@wav_output
@click.option("--fast", is_flag=True, help=f"send {FAST_SPEED:g}x faster than real time")
@click.option(
    "--events",
    type=click.Path(path_type=Path),
    callback=output_file,
    metavar="FILE.jsonl",
    help="write the event log (JSON lines)",
)
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    metavar="S",
    help="seconds to wait for the reply after the file has been sent (30)",
)
@mesh_options
def talk(
    wav: Path,
    output: Path,
    fast: bool,
    events: Path | None,
    timeout: float,
    config: str | None,
    port: int | None,
) -> int:
    import asyncio

    from voxmesh.client import MAX_RATE, MIN_RATE, WavError, read_wav

    try:
        pcm, rate = read_wav(wav)
    except WavError as exc:
        raise CliError(str(exc), code=2) from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise CliError(f"{wav} is sampled at {rate} Hz; {MIN_RATE}-{MAX_RATE} Hz needed", 2)
    if pcm.size == 0:
        raise CliError(f"{wav} holds no audio", code=2)
    options = TalkOptions(
        config=config,
        port=port,
        output=output,
        fast=fast,
        events=events,
        timeout=timeout,
    )
    return asyncio.run(_talk(options, pcm, rate))


async def _talk(options: TalkOptions, pcm: np.ndarray, rate: int) -> int:
    from voxmesh.client import MicStream

    t0 = time.monotonic()
    async with mesh_session(options, sample_rate=rate) as client:
        marks: list[tuple[float, dict[str, Any]]] = []
        speed = FAST_SPEED if options.fast else 1.0
        async with MicStream(client, rate, speed=speed) as mic:
            end = mic.queue(pcm)
            await mic.wait_sent(end, timeout=pcm.size / rate / speed + 30)
            t_mic_end = mic.sent_time(end - 1) or time.monotonic()
            marks.append((t_mic_end, {"type": "client.mic_end", "samples": end}))
            try:
                await client.wait_until(
                    lambda: _answered(client), options.timeout, "the reply", poll_s=0.05
                )
                failure = None
            except TimeoutError:
                failure = _what_is_missing(client, options.timeout)
        reply = client.frames
        if reply:
            marks.append((reply[0].t, {"type": "client.first_frame"}))
        if options.events:
            _write_events(options.events, client, marks, t0)
        if failure:
            raise CliError(failure)
        fail_on_error(client)
        duration = write_reply(options.output, client)
    for text in _texts(client, "transcript"):
        print(f"heard: {text}")
    for text in _texts(client, "reply"):
        print(f"reply: {text}")
    after = f"; first reply audio at {(reply[0].t - t_mic_end) * 1000:+.0f} ms from the file's end"
    print(f"wrote {options.output}: {duration:.2f} s of audio{after if reply else ''}")
    return 0


def _answered(client: WsClient) -> bool:
    """Every reply that started has ended, and the router listens again."""
    starts, ends = client.events_of("audio_start"), client.events_of("audio_end")
    states = client.events_of("state")
    listening = bool(states) and states[-1].get("state") == "listening"
    return bool(ends) and len(starts) == len(ends) and listening


def _what_is_missing(client: WsClient, timeout: float) -> str:
    waited = f"within {timeout:g} s of the end of the file"
    errors = [f"{e.get('code')}: {e.get('message')}" for e in client.events_of("error")]
    also = f" (the mesh said {'; '.join(errors)})" if errors else ""
    if not any(e.get("event") == "speech_start" for e in client.events_of("vad")):
        return f"the mesh heard no speech in the file{also}"
    heard = _texts(client, "transcript")
    if not heard:
        return f"speech was heard but no final transcript came {waited}{also}"
    if not client.events_of("audio_start"):
        return f"heard {heard[-1]!r} but no reply audio came {waited}{also}"
    return f"the reply audio did not finish {waited}{also}"


def _texts(client: WsClient, kind: str) -> list[str]:
    return [
        str(e.get("text", ""))
        for e in client.events_of(kind)
        if kind != "transcript" or e.get("final")
    ]


def _write_events(
    path: Path, client: WsClient, marks: list[tuple[float, dict[str, Any]]], t0: float
) -> None:
    import json

    rows = [(e.t, e.data) for e in client.events] + marks
    rows.sort(key=lambda row: row[0])
    try:
        with path.open("w") as f:
            for t, data in rows:
                f.write(json.dumps({"t": round(t - t0, 6), "t_mono": t, **data}) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
