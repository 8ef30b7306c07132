"""``voxmesh talk IN.wav -o OUT.wav``: send a WAV file as the microphone, record the reply.

The file (16-bit PCM, any rate from 8 to 48 kHz; several channels are averaged) goes out as
the session's mic audio at its own rate (the server resamples), in 20 ms packets on a
real-time schedule (``--fast``: 8x real time). After the file the microphone keeps sending
silence, as a real one would, until the mesh has answered: every reply that started has
ended and the router is listening again (or ``--timeout`` runs out, exit 1 with what was
heard so far). The first ``error`` event from the mesh (``responder_failed`` when the LLM is
down, ...) ends the run at once, exit 1 with its code and message. Every reply frame
received is written to OUT.wav (48 kHz mono 16-bit).

It prints what the mesh heard (``heard: ...``), each reply (``reply: ...``, or ``reply
(interrupted): ...`` when the user barged in on it, ``reply (failed): ...``), each turn's
latency (the end of the user's speech leaving the client -> the first reply frame received;
the speech end is the mesh's own ``vad`` ``speech_end`` sample) and when the first reply
audio came relative to the file's end (before it when the reply answers speech that ended
earlier: an earlier turn, or silence at the file's end the mesh did not wait for).
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
from .session import fail_on_error, is_error, mesh_session, write_reply

if TYPE_CHECKING:
    import numpy as np

    from voxmesh.client import MicStream, WsClient

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
            # An error event (the LLM down: responder_failed) ends the run at once, even
            # while the file is still being sent.
            await _sent_or_error(client, mic, end, pcm.size / rate / speed + 30)
            t_mic_end = mic.sent_time(end - 1) or time.monotonic()
            marks.append((t_mic_end, {"type": "client.mic_end", "samples": end}))
            try:
                await client.wait_until(
                    lambda: _answered(client) or _errored(client),
                    options.timeout,
                    "the reply",
                    poll_s=0.05,
                )
                failure = None
            except TimeoutError:
                failure = _what_is_missing(client, options.timeout)
            turns = turn_latencies(client, mic)
        reply = client.frames
        if reply:
            marks.append((reply[0].t, {"type": "client.first_frame"}))
        if options.events:
            _write_events(options.events, client, marks, t0)
        fail_on_error(client)
        if failure:
            raise CliError(failure)
        duration = write_reply(options.output, client)
    for text in _texts(client, "transcript"):
        print(f"heard: {text}")
    for text, how in replies(client):
        print(f"reply{f' ({how})' if how else ''}: {text}")
    for i, ms in enumerate(turns, 1):
        print(f"turn {i}: first reply audio {ms:.0f} ms after the end of speech")
    after = ""
    if reply:
        ms = (reply[0].t - t_mic_end) * 1000
        after = (
            f"; first reply audio {ms:.0f} ms after the file's end"
            if ms >= 0
            else f"; first reply audio {-ms:.0f} ms before the file's end (it answered "
            "speech that had ended earlier in the file)"
        )
    print(f"wrote {options.output}: {duration:.2f} s of audio{after}")
    return 0


async def _sent_or_error(client: WsClient, mic: MicStream, end: int, timeout: float) -> None:
    """Until every sample before ``end`` is sent, or an error event has come."""
    import asyncio
    import contextlib

    sent = asyncio.ensure_future(mic.wait_sent(end, timeout=timeout))
    error = asyncio.ensure_future(client.next_event(is_error, timeout))
    try:
        await asyncio.wait({sent, error}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sent, error):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, ConnectionError):
                await task
    if sent.done() and not sent.cancelled() and sent.exception() is None:
        return
    if error.done() and not error.cancelled() and error.exception() is None:
        return  # the caller reports it
    # the socket closed, or the mic stopped: what the mic raised, else the wait's error
    exc = sent.exception() if sent.done() and not sent.cancelled() else None
    raise exc or ConnectionError("the connection closed while the file was being sent")


def _errored(client: WsClient) -> bool:
    return bool(client.events_of("error"))


def replies(client: WsClient) -> list[tuple[str, str]]:
    """Each reply's text with how it ended: "" when it played to its end, else the
    ``audio_end`` reason ("interrupted", "failed"). A reply is told by the next
    ``audio_end`` after its text (or the one just before it: a reply cut off while its text
    was still coming has its ``audio_end`` first)."""
    out: list[list[str]] = []
    reasons: list[str] = []  # audio_end reasons not yet given to a reply
    for event in client.events:
        if event.kind == "reply":
            out.append([str(event.data.get("text", "")), reasons.pop(0) if reasons else "?"])
        elif event.kind == "audio_end":
            reason = str(event.data.get("reason", ""))
            open_reply = next((r for r in out if r[1] == "?"), None)
            if open_reply is not None:
                open_reply[1] = reason
            else:
                reasons.append(reason)
    return [(text, "" if how in ("done", "?") else how) for text, how in out]


def turn_latencies(client: WsClient, mic: MicStream) -> list[float]:
    """Per turn, ms from the end of the user's speech leaving this client (the mesh's
    ``vad`` ``speech_end`` sample, a 16 kHz position, mapped onto the file) to the first
    reply frame received after it. A turn without reply audio has none."""
    out: list[float] = []
    events = client.events
    for i, event in enumerate(events):
        if event.kind != "vad" or event.data.get("event") != "speech_end":
            continue
        sample = event.data.get("sample")
        if not isinstance(sample, int):
            continue
        start = next((e for e in events[i + 1 :] if e.kind in ("audio_start", "vad")), None)
        if start is None or start.kind != "audio_start":
            continue  # the user spoke again before any reply: not a turn of its own
        t_speech_end = mic.mesh_sample_time(sample)
        frame = next((f for f in client.frames if f.t >= start.t), None)
        if t_speech_end is not None and frame is not None:
            out.append((frame.t - t_speech_end) * 1000)
    return out


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
