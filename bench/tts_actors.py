"""TTS actors: first audio per engine, the cost of loading a voice while another session
speaks on the same actor, and two CPU actors against one at four Piper sessions.

One mesh runs three TTS actors (mock, piper, espeak, each on the CPU: ``[[tts.actors]]``);
a session picks an engine with a ``voice`` message, so every engine is measured in the same
mesh, rounds alternating engines. First audio = ``say`` sent -> first frame received.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np

from voxmesh.client import WsClient, ws_session
from voxmesh.mesh.protocol import ModelInfo, ModelLoad, ModelUnload
from voxmesh.speech.assets import piper_voice_paths
from voxmesh.supervisor.status import ask

from .mesh import Mesh, pool
from .registry import BenchContext, Outcome, Skip, scenario
from .report import Figure, Row

SENTENCE = "Hello, how can I help you today?"
LONG = (
    "This is a long reply that keeps the session speaking for a good while, so that a "
    "voice can be loaded on the same actor in the middle of it, and we can see whether "
    "the frames of this session keep flowing on time while the new model loads. " * 2
)
ENGINES = {"mock": "mock:mock", "piper": "piper:joe", "espeak": "espeak:en-us"}


def actors_toml(*tables: tuple[str, str]) -> str:
    return "".join(f'[[tts.actors]]\nname = "{n}"\nengine = "{e}"\n\n' for n, e in tables)


def _mesh(ctx: BenchContext, key: str, toml: str) -> Mesh:
    path = Path(ctx.out).resolve() / f".{key}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml)
    return pool(ctx).get("mock", args=("--config", str(path)))


async def _voice(c: WsClient, voice: str) -> None:
    since = c.mark()
    await c.send_json({"type": "voice", "voice": voice})
    ev = await c.wait_for(lambda e: e["type"] in ("voice", "error"), 10, since=since)
    if ev["type"] == "error":
        raise Skip(f"voice {voice}: {ev.get('message')}")


async def _first_audio(c: WsClient, text: str) -> float:
    since, first = c.mark(), len(c.frames)
    t0 = await c.say(text)
    frame = await c.wait_frame(first, 30)
    await c.wait_event("audio_end", 60, since=since)
    return (frame.t - t0) * 1e3


async def _fal_by_engine(mesh: Mesh, rounds: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {e: [] for e in ENGINES}
    async with ws_session(mesh.ws_url) as c:
        for _ in range(rounds):
            for engine, voice in ENGINES.items():
                await _voice(c, voice)
                got[engine].append(await _first_audio(c, SENTENCE))
    return got


def _load_during_speech(mesh: Mesh, voice: str, actor: str) -> tuple[float, float, float]:
    """(load seconds, worst frame gap during the load, worst gap in as long a window just
    before it), in ms, for a session speaking on ``actor`` meanwhile."""
    endpoint = mesh.status_endpoint
    timing: dict[str, float] = {}

    def load() -> None:
        timing["t0"] = time.monotonic()
        info = ask(endpoint, ModelLoad(voice, actor), ModelInfo, 120)
        timing["t1"] = time.monotonic()
        if info.error:
            timing["error"] = 1.0

    async def run() -> list[float]:
        async with ws_session(mesh.ws_url) as c:
            await _voice(c, "piper:joe")
            since, first = c.mark(), len(c.frames)
            await c.say(LONG)
            await c.wait_frame(first + 100, 60)  # 2 s into the reply: well under way
            loader = threading.Thread(target=load)
            loader.start()
            while loader.is_alive():
                await asyncio.sleep(0.05)
            await c.wait_event("audio_end", 120, since=since)
            return c.frame_times(first)

    times = np.array(asyncio.run(run()))
    ask(endpoint, ModelUnload(voice, actor), ModelInfo, 30)
    if "error" in timing:
        raise Skip(f"loading {voice} on {actor} failed")
    t0, t1 = timing["t0"], timing["t1"]

    def worst_gap(lo: float, hi: float) -> float:
        inside = times[(times >= lo) & (times <= hi)]
        return float(np.max(np.diff(inside)) * 1e3) if inside.size > 1 else float("nan")

    return (t1 - t0) * 1e3, worst_gap(t0, t1), worst_gap(t0 - (t1 - t0), t0)


@scenario("tts", "TTS actors: first audio per engine, a voice load under speech", order=65)
def tts_scenario(ctx: BenchContext, out: Outcome) -> None:
    mesh = _mesh(ctx, "tts3", actors_toml(("tts0", "mock"), ("tts1", "piper"), ("tts2", "espeak")))
    rounds = 3 if ctx.quick else 12
    fal = asyncio.run(_fal_by_engine(mesh, rounds))
    fig = out.add(
        Figure(
            "tts_fal_by_engine",
            "first audio per TTS engine, one mesh (mock, piper, espeak actors on the CPU)",
            "client: `say` sent -> first audio frame received; one session, engines "
            "alternating per round",
            target="Piper first audio p95 <= 100 ms at one session (issue 16)",
        )
    )
    for engine, values in fal.items():
        fig.add(Row(engine, values))

    path, _ = piper_voice_paths()
    voice = f"piper:{path}"  # the same model under another name: a real second load
    trials = [_load_during_speech(mesh, voice, "tts1") for _ in range(1 if ctx.quick else 3)]
    switch = out.add(
        Figure(
            "tts_voice_load",
            "loading a Piper voice on the actor another session is speaking on",
            "`voxmesh models load` sent -> MODEL_INFO back (load); worst gap between that "
            "session's frames at the client during the load, and in as long a window before",
        )
    )
    switch.add(Row("load time", [t[0] for t in trials]))
    switch.add(Row("worst frame gap during the load", [t[1] for t in trials]))
    switch.add(Row("worst frame gap before it", [t[2] for t in trials]))


async def _concurrent_fal(mesh: Mesh, sessions: int, rounds: int) -> list[float]:
    async def one() -> list[float]:
        async with ws_session(mesh.ws_url) as c:
            await _voice(c, "piper:joe")
            return [await _first_audio(c, SENTENCE) for _ in range(rounds)]

    results = await asyncio.gather(*(one() for _ in range(sessions)))
    return [v for r in results for v in r]


@scenario("tts_actors", "two CPU Piper actors vs one, four sessions at once", order=66)
def two_actors_scenario(ctx: BenchContext, out: Outcome) -> None:
    variants = {
        "one actor": actors_toml(("tts0", "piper")),
        "two actors": actors_toml(("tts0", "piper"), ("tts1", "piper")),
    }
    got: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(1 if ctx.quick else 2):  # A B A B: the box drifts
        for name, toml in variants.items():
            mesh = _mesh(ctx, name.replace(" ", "-"), toml)
            got[name] += asyncio.run(_concurrent_fal(mesh, 4, 2 if ctx.quick else 4))
    fig = out.add(
        Figure(
            "tts_two_actors",
            "4 Piper sessions speaking at once: one CPU TTS actor vs two",
            "client: `say` sent -> first audio frame, 4 sessions at once, meshes alternated",
        )
    )
    for name, values in got.items():
        fig.add(Row(name, values))
