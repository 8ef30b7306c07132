"""Scenarios with a voice: voice-to-voice and barge-in through the mesh (real VAD and ASR).

User speech is Piper's (``bench/speech.py``), made before any session starts and streamed
by the client's ``MicStream`` in real-time 20 ms packets, silence in between, as a
microphone would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import numpy as np

from voxmesh.client import EventPredicate, MicStream, event_is, ws_session

from . import baselines, speech
from .mesh import Mesh, pool
from .registry import BenchContext, Outcome, scenario
from .report import Figure, Row

MIC_RATE = speech.MIC_RATE

# Mesh stages of a voice turn, as the client sees them (event kind, label).
V2V_STAGES = (
    ("vad_end", "last speech sample -> `vad` speech_end event"),
    ("transcript", "last speech sample -> final `transcript` event"),
    ("audio_start", "last speech sample -> `audio_start` event"),
)


def _is_vad(event: str) -> EventPredicate:
    return event_is("vad", event=event)


STAGE_EVENTS = {
    "vad_end": _is_vad("speech_end"),
    "transcript": event_is("transcript", final=True),
    "audio_start": event_is("audio_start"),
}


async def _sent_at(mic: MicStream, sample: int) -> float:
    """When the packet holding ``sample`` left (waiting for it, should an answer be first)."""
    await mic.wait_sent(sample + 1)
    t = mic.sent_time(sample)
    assert t is not None
    return t


async def _v2v_run(mesh: Mesh, clips: list[tuple[np.ndarray, int, int]]) -> list[dict[str, float]]:
    out = []
    async with ws_session(mesh.ws_url) as c, MicStream(c, MIC_RATE) as mic:
        await asyncio.sleep(0.5)
        for audio, _, last in clips:
            since, first = c.mark(), len(c.frames)
            start = mic.queue(audio) - audio.size
            got = await c.wait_frame(first, audio.size / MIC_RATE + 15)
            t_last = await _sent_at(mic, start + last - 1)
            trial = {"v2v": (got.t - t_last) * 1e3}
            for key, _label in V2V_STAGES:
                stage = c.find(STAGE_EVENTS[key], since)  # what came by the first frame
                if stage is not None:
                    trial[key] = (stage.t - t_last) * 1e3
            out.append(trial)
            await asyncio.sleep(0.3)
            await c.interrupt()
            await c.wait_quiet(0.3, 10.0)
    return out


@scenario("v2v", "last user sample -> first reply frame (VAD + ASR + Piper, echo)", order=50)
def v2v_scenario(ctx: BenchContext, out: Outcome) -> None:
    texts = speech.sample(speech.UTTERANCES, 4 if ctx.quick else 24)
    clips = [speech.spoken(t, before_s=0.3, after_s=0.0) for t in texts]  # before any timing
    out.add(baselines.asr_direct_figure(texts[:4] if ctx.quick else texts[:12]))
    out.add(baselines.v2v_stages_figure(texts))
    mesh = pool(ctx).get("piper")
    res = asyncio.run(_v2v_run(mesh, clips))
    fig = out.add(
        Figure(
            "v2v",
            "Voice-to-voice through the mesh (Silero + tiny.en + Piper, echo)",
            "client mic: the packet holding the last voiced sample leaves -> first reply "
            "frame arrives; stage rows: the events' arrival, same origin",
            target="median <= 350 ms, p95 <= 500 ms",
        )
    )
    fig.add(Row("voice-to-voice", [r["v2v"] for r in res], {"stage": "v2v"}))
    for key, label in V2V_STAGES:
        fig.add(Row(label, [r[key] for r in res if key in r], {"stage": key}))
    medians = {
        k: float(np.median([r[k] for r in res if k in r] or [np.nan])) for k, _ in V2V_STAGES
    }
    v2v = float(np.median([r["v2v"] for r in res]))
    vad = medians["vad_end"]
    fig.notes.append(
        f"median split: {vad:.0f} ms until the VAD's speech_end reached the client, "
        f"{v2v - vad:.0f} ms from there to the first frame (of {v2v:.0f} ms)"
    )
    note = mesh.tts_first_frame_note()
    if note:
        fig.notes.append(note)


async def _barge_run(
    mesh: Mesh, clips: list[tuple[np.ndarray, int, int]], rng: random.Random
) -> list[dict[str, float]]:
    out = []
    async with ws_session(mesh.ws_url) as c, MicStream(c, MIC_RATE) as mic:
        for audio, first, _ in clips:
            playing = len(c.frames)
            await c.say(speech.LONG_REPLY)
            await c.wait_frame(playing, 15.0)
            await asyncio.sleep(rng.uniform(0.5, 1.2))
            since = c.mark()
            start = mic.queue(audio) - audio.size
            got = await c.next_event(event_is("clear"), audio.size / MIC_RATE + 5.0, since=since)
            t_onset = await _sent_at(mic, start + first)
            t_last = got.data.get("t_last_frame")
            if not t_last:  # no server stamp: the last frame to arrive before the clear
                t_last = max((t for t in c.frame_times() if t < got.t), default=got.t)
            trial = {"barge": (float(t_last) - t_onset) * 1e3}
            onset = c.find(_is_vad("speech_start"), since)
            if onset is not None:
                trial["vad"] = (onset.t - t_onset) * 1e3
            out.append(trial)
            # Measured: cut the user short, let the VAD close the turn, then silence any
            # reply to it, so the next trial starts with nothing in flight.
            turn_end = c.mark()
            mic.drop()
            with contextlib.suppress(TimeoutError):
                await c.next_event(_is_vad("speech_end"), 5.0, since=turn_end)
            await c.interrupt()
            await c.wait_quiet(0.5, 10.0)
    return out


@scenario("barge-in", "user speech onset -> last bot frame sent (real VAD)", order=30)
def barge_scenario(ctx: BenchContext, out: Outcome) -> None:
    texts = speech.sample(speech.UTTERANCES, 4 if ctx.quick else 24)
    clips = [speech.spoken(t, before_s=0.0, after_s=0.3) for t in texts]
    mesh = pool(ctx).get(ctx.tts or "mock")
    res = asyncio.run(_barge_run(mesh, clips, random.Random(3)))
    fig = out.add(
        Figure(
            "barge_in",
            f"Barge-in: user speech onset -> last bot frame sent ({mesh.tts} TTS)",
            "client mic: the packet holding the first voiced sample leaves -> the "
            "transport's last frame (t_last_frame of `clear`)",
            target="p95 <= 150 ms",
        )
    )
    fig.add(Row("barge-in", [r["barge"] for r in res], {"stage": "barge"}))
    fig.add(
        Row("onset -> `vad` speech_start event", [r["vad"] for r in res if "vad" in r],
            {"stage": "vad"})
    )  # fmt: skip
    decided = baselines.onset_decision_ms(texts)
    fig.add(Row("VAD decides speech_start (audio time, offline)", decided, {"stage": "model"}))
    barge = float(np.median([r["barge"] for r in res]))
    fig.notes.append(
        f"median split: the VAD needs {np.median(decided):.0f} ms of audio to decide "
        f"speech_start (min_speech_ms + 32 ms chunks); the rest of the {barge:.0f} ms is "
        "the VAD actor's wake-up, router -> HOLD -> transport, and the frame in flight"
    )
