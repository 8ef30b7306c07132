"""Scenarios with a voice: voice-to-voice and barge-in through the mesh (real VAD and ASR).

User speech is Piper's (``bench/speech.py``), made before any session starts and streamed
by ``MicStreamer`` in real-time 20 ms packets, silence in between, as a microphone would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import numpy as np

from . import baselines, speech
from .client import Arrival, BenchClient, MicStreamer, Predicate, is_event, is_frame
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


def _is_vad(event: str) -> Predicate:
    return is_event("vad", event=event)


async def _v2v_run(mesh: Mesh, clips: list[tuple[np.ndarray, int, int]]) -> list[dict[str, float]]:
    out = []
    async with BenchClient(mesh.ws_url) as c:
        mic = MicStreamer(c)
        mic.start()
        try:
            await asyncio.sleep(0.5)
            for audio, _, last in clips:
                waits = {
                    "frame": c.expect(is_frame),
                    "vad_end": c.expect(_is_vad("speech_end")),
                    "transcript": c.expect(is_event("transcript", final=True)),
                    "audio_start": c.expect(is_event("audio_start")),
                }
                start = mic.play(audio)
                got: Arrival = await asyncio.wait_for(waits["frame"], audio.size / MIC_RATE + 15)
                t_last = mic.sent_at(start + last - 1)
                trial = {"v2v": (got.t - t_last) * 1e3}
                for key, _label in V2V_STAGES:
                    fut = waits[key]
                    if fut.done():
                        trial[key] = (fut.result().t - t_last) * 1e3
                    else:
                        fut.cancel()
                out.append(trial)
                await asyncio.sleep(0.3)
                await c.send({"type": "interrupt"})
                await c.quiet(0.3, 10.0)
        finally:
            await mic.stop()
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
    async with BenchClient(mesh.ws_url) as c:
        mic = MicStreamer(c)
        mic.start()
        try:
            for audio, first, _ in clips:
                playing = c.expect(is_frame)
                await c.send({"type": "say", "text": speech.LONG_REPLY})
                await asyncio.wait_for(playing, 15.0)
                await asyncio.sleep(rng.uniform(0.5, 1.2))
                clear = c.expect(lambda a: a.kind == "clear")
                onset = c.expect(_is_vad("speech_start"))
                start = mic.play(audio)
                got = await asyncio.wait_for(clear, audio.size / MIC_RATE + 5.0)
                t_onset = mic.sent_at(start + first)
                t_last = got.event.get("t_last_frame")
                if not t_last:  # no server stamp: the last frame to arrive before the clear
                    t_last = max((t for t in c.frames if t < got.t), default=got.t)
                trial = {"barge": (float(t_last) - t_onset) * 1e3}
                if onset.done():
                    trial["vad"] = (onset.result().t - t_onset) * 1e3
                else:
                    onset.cancel()
                out.append(trial)
                # Measured: cut the user short, let the VAD close the turn, then silence any
                # reply to it, so the next trial starts with nothing in flight.
                turn_end = c.expect(_is_vad("speech_end"))
                mic.drop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn_end, 5.0)
                await c.send({"type": "interrupt"})
                await c.quiet(0.5, 10.0)
        finally:
            await mic.stop()
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
        "the VAD actor's polling, router -> HOLD -> transport, and the frame in flight"
    )
