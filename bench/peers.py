"""voxmesh against Pipecat 1.14 in one run: same client, same speech, same models, echo bots.

The peer is ``bench/pipecat_bot.py`` run by the Python of ``.venv-peers`` (``make peers``),
a process of its own on loopback; the mesh is ``voxmesh up --tts piper`` with its defaults
(Smart Turn, echo responder). Both get Silero v6, tiny.en (int8) and Piper joe from the same
files. The user is espeak-ng in the voices the tests do not use (``turns.py``), streamed by
the client's ``MicStream`` in real-time 20 ms packets, silence in between.

Measured per side, client-side (the box is shared and noisy: only the ratios mean much):
- voice-to-voice: the packet holding the last voiced sample leaves -> the first reply frame
  arrives (and the first frame with voice in it, Piper's leading silence being the bot's);
- barge-in: while the bot reads a long text, the packet holding the user's first voiced
  sample leaves -> the last frame of that text arrives (the bot's ``clear`` tells when to look);
- CPU per turn above idle: CPU-s of the whole server process tree over a block of turns,
  less its idle rate x the block's wall time, per turn; idle and listening CPU-s/s;
- WER of the final transcripts (the echo's text), on the voice-to-voice clips.
The sides alternate in blocks, in ABBA order, so a drift in the box's load falls on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from voxmesh.client import MicStream, WsClient, event_is
from voxmesh.speech.assets import piper_voice_paths, silero_vad_path, whisper_model_dir
from voxmesh.speech.wer import word_errors
from voxmesh.supervisor.launch import free_port

from . import speech
from .mesh import pool
from .registry import BenchContext, Outcome, Skip, require_tool, scenario
from .report import Figure, Row
from .stats import summarize
from .turns import VOICES, _espeak

RATE = speech.MIC_RATE
ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
BOT = Path(__file__).resolve().with_name("pipecat_bot.py")
ABSENT = (
    "Pipecat is not installed: {python} is missing. Run `make peers` (Pipecat 1.14.0 and "
    "voxmesh's model packages in .venv-peers, ~1 GB), then `voxmesh bench --only peers`"
)
BOT_START_S = 180.0  # four models load on a busy 2-core box
VOICED_PEAK = 500  # a reply frame with a sample above this (-36 dBFS) has voice in it
REPLY_TIMEOUT_S = 15.0
REPLY_DONE_GAP_S = 1.0  # no frame for this long: the reply is over (both bots stream it)


@dataclass
class Clip:
    text: str
    audio: np.ndarray  # 16 kHz int16, up to its last voiced sample
    onset: int  # first voiced sample


def clips(n: int) -> list[Clip]:
    """``n`` espeak utterances; the voice turns each round of the texts, so none repeats."""
    out = []
    for i in range(n):
        k = len(speech.UTTERANCES)
        text = speech.UTTERANCES[i % k]
        audio = _espeak(text, VOICES[(i + i // k) % len(VOICES)])
        out.append(Clip(text, audio, speech.voiced_bounds(audio)[0]))
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU-s (user + system) of a process and all its descendants, now."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class PipecatBot:
    """``pipecat_bot.py`` under ``python``, in a process group of its own, on voxmesh's
    model files; ``stop()`` kills the group whatever state it is in."""

    def __init__(self, python: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.log_path = log_dir / "pipecat_bot.log"
        models = ["--whisper", str(whisper_model_dir()), "--piper", str(piper_voice_paths()[0])]
        models += ["--vad", str(silero_vad_path())]
        # -P: the script's folder (bench/, with speech.py, stats.py...) stays off sys.path
        cmd = [str(python), "-P", str(BOT), "--port", str(self.port), *models]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 12) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float) -> float:
        """Wait for its ``READY`` line; the seconds it took. Skip (with its log) if it exits
        or is not ready in time."""
        assert self.proc.stdout is not None
        t0 = time.monotonic()
        seen = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"READY" not in seen:
                left = t0 + timeout_s - time.monotonic()
                if left <= 0:
                    raise Skip(
                        f"the Pipecat bot was not ready in {timeout_s:.0f} s:\n{self.log_tail()}"
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    code = self.proc.wait()
                    raise Skip(f"the Pipecat bot exited with {code}:\n{self.log_tail()}")
                seen += chunk
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Side:
    name: str
    url: str
    hello: bool  # voxmesh's protocol opens with hello/ready; the bot's raw PCM does not
    cpu_s: Callable[[], float]
    idle: list[float] = field(default_factory=list)  # CPU-s/s, no session
    listening: list[float] = field(default_factory=list)  # CPU-s/s, a session, mic silent
    turn_cpu: list[float] = field(default_factory=list)  # CPU-s per turn above idle, per block
    v2v: list[float] = field(default_factory=list)
    voiced: list[float] = field(default_factory=list)
    barge: list[float] = field(default_factory=list)
    premature: int = 0
    no_reply: int = 0
    not_stopped: int = 0
    edits: int = 0
    words: int = 0
    heard: list[str] = field(default_factory=list)  # each v2v clip's final transcripts

    def idle_rate(self) -> float:
        return float(np.mean(self.idle)) if self.idle else 0.0


@contextlib.asynccontextmanager
async def session(side: Side) -> AsyncIterator[tuple[WsClient, MicStream]]:
    """A session with an open mic (silence unless something is queued), closed after."""
    c = await WsClient.connect(side.url, sample_rate=RATE if side.hello else None, player=False)
    try:
        async with MicStream(c, RATE) as mic:
            yield c, mic
    finally:
        await c.close(bye=side.hello)


async def _sent_at(mic: MicStream, sample: int) -> float:
    await mic.wait_sent(sample + 1)
    t = mic.sent_time(sample)
    assert t is not None
    return t


async def v2v_trial(side: Side, c: WsClient, mic: MicStream, clip: Clip, keep: bool) -> None:
    since, first = c.mark(), len(c.frames)
    end = mic.queue(clip.audio)
    t_last = await _sent_at(mic, end - 1)
    with contextlib.suppress(TimeoutError):
        await c.wait_frame(first, REPLY_TIMEOUT_S)
    await c.wait_quiet(REPLY_DONE_GAP_S, 30.0)
    if not keep:
        return
    frames = c.frames[first:]
    heard = " ".join(c.user_turns(since))
    side.heard.append(heard)
    e, n = word_errors(clip.text, heard)
    side.edits, side.words = side.edits + e, side.words + n
    if not frames:
        side.no_reply += 1
    elif frames[0].t < t_last:  # the bot spoke while the user still talked
        side.premature += 1
    else:
        side.v2v.append((frames[0].t - t_last) * 1e3)
        loud = (f for f in frames if np.abs(np.frombuffer(f.data, "<i2")).max() > VOICED_PEAK)
        voiced = next(loud, None)
        if voiced is not None:
            side.voiced.append((voiced.t - t_last) * 1e3)


async def barge_trial(side: Side, c: WsClient, mic: MicStream, clip: Clip, wait_s: float) -> None:
    playing = len(c.frames)
    await c.say(speech.LONG_REPLY)
    try:
        await c.wait_frame(playing, REPLY_TIMEOUT_S)
    except TimeoutError:  # it never started reading: nothing to interrupt
        side.not_stopped += 1
        return
    await asyncio.sleep(wait_s)  # into the reply, as a user would cut in
    since = c.mark()
    start = mic.queue(clip.audio) - clip.audio.size
    try:
        await c.next_event(event_is("clear"), clip.audio.size / RATE + 5.0, since=since)
        t_onset = await _sent_at(mic, start + clip.onset)
        # The reply to this speech comes after it ends, over a second from here.
        stopped = await c.wait_quiet(0.25, 5.0)
    except TimeoutError:
        stopped = False
    if stopped:
        side.barge.append((max(f.t for f in c.frames[playing:]) - t_onset) * 1e3)
    else:
        side.not_stopped += 1
    after = len(c.frames)
    await mic.wait_sent(start + clip.audio.size)
    with contextlib.suppress(TimeoutError):  # the echo of what interrupted it
        await c.wait_frame(after, REPLY_TIMEOUT_S)
    await c.wait_quiet(REPLY_DONE_GAP_S, 30.0)


async def v2v_block(side: Side, part: list[Clip], listen_s: float) -> None:
    async with session(side) as (c, mic):
        cpu0, t0 = side.cpu_s(), time.monotonic()
        await asyncio.sleep(listen_s)  # a measurement window, not a wait for something
        side.listening.append((side.cpu_s() - cpu0) / (time.monotonic() - t0))
        cpu0, t0 = side.cpu_s(), time.monotonic()
        for clip in part:
            await v2v_trial(side, c, mic, clip, keep=True)
        above = side.cpu_s() - cpu0 - side.idle_rate() * (time.monotonic() - t0)
        side.turn_cpu.append(above / len(part))


async def barge_block(side: Side, part: list[Clip], rng: random.Random) -> None:
    async with session(side) as (c, mic):
        for clip in part:
            await barge_trial(side, c, mic, clip, rng.uniform(0.5, 1.2))


async def measure_idle(sides: list[Side], seconds: float) -> None:
    """Every side's CPU with no session, in one window (they all run all along)."""
    cpu0, t0 = [s.cpu_s() for s in sides], time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    for s, c0 in zip(sides, cpu0, strict=True):
        s.idle.append((s.cpu_s() - c0) / wall)


async def run(sides: list[Side], items: list[Clip], block: int, idle_s: float) -> None:
    for side in sides:  # one unmeasured turn each: first-call costs are nobody's latency
        async with session(side) as (c, mic):
            await v2v_trial(side, c, mic, items[0], keep=False)
    await measure_idle(sides, idle_s)
    rng = random.Random(3)
    for k, at in enumerate(range(0, len(items), block)):
        part = items[at : at + block]
        order = sides if k % 2 == 0 else sides[::-1]  # ABBA
        for side in order:
            await v2v_block(side, part, listen_s=2.0)
        for side in order:
            await barge_block(side, part, rng)
    await measure_idle(sides, idle_s)


@scenario("peers", "voxmesh vs Pipecat 1.14: same models, speech and client, alternated", order=58)
def peers_scenario(ctx: BenchContext, out: Outcome) -> None:
    if not os.access(PEERS_PYTHON, os.X_OK):
        raise Skip(ABSENT.format(python=PEERS_PYTHON.relative_to(ROOT)))
    require_tool("espeak-ng", "the user's voices")
    items = clips(4 if ctx.quick else 16)  # made before anything is timed
    mesh = pool(ctx).get("piper")
    with tempfile.TemporaryDirectory(prefix="vxm-peers-") as tmp:
        bot = PipecatBot(PEERS_PYTHON, Path(tmp))
        try:
            ready_s = bot.wait_ready(BOT_START_S)
            vox = Side("voxmesh", mesh.ws_url, True, lambda: tree_cpu_s(mesh.pid))
            pc = Side("pipecat", bot.url, False, lambda: tree_cpu_s(bot.proc.pid))
            asyncio.run(run([vox, pc], items, block=2 if ctx.quick else 4, idle_s=5.0))
        except BaseException:
            ctx.log(f"pipecat bot log:\n{bot.log_tail()}")
            raise
        finally:
            bot.stop()
    for fig in figures(vox, pc, [c.text for c in items]):
        out.add(fig)
    out.notes.append(f"peers: the Pipecat bot took {ready_s:.0f} s to load and listen")


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _wer(edits: int, words: int) -> float:
    return edits / max(words, 1)


def transcribed_wer(texts: list[str], heard: list[str]) -> tuple[float, int]:
    """(WER over the clips that got a transcript, clips that got none): Pipecat drops a
    segment whose no_speech_prob is >= 0.4, which the corpus WER counts as all deletions."""
    said = [word_errors(ref, h) for ref, h in zip(texts, heard, strict=False) if h.strip()]
    return _wer(sum(e for e, _ in said), sum(n for _, n in said)), len(heard) - len(said)


def figures(vox: Side, pc: Side, texts: list[str]) -> list[Figure]:
    sides = (vox, pc)
    v2v = Figure(
        "peers_v2v",
        "Voice-to-voice, voxmesh vs Pipecat 1.14 (Silero v6, tiny.en int8, Piper joe; echo)",
        "client mic: the packet holding the last voiced sample leaves -> first reply frame "
        "(voiced: first frame with a sample > -36 dBFS); WER of the echoed final transcripts",
    )
    for s in sides:
        pct = round(100 * _wer(s.edits, s.words), 1)
        counts = {"premature": s.premature, "no_reply": s.no_reply, "wer_pct": pct}
        v2v.add(Row(f"{s.name}: first frame", s.v2v, {"side": s.name, "stage": "v2v"}, counts))
        v2v.add(Row(f"{s.name}: first voiced frame", s.voiced, {"side": s.name, "stage": "voiced"}))
    barge = Figure(
        "peers_barge",
        "Barge-in, voxmesh vs Pipecat 1.14 (Piper reading a long text)",
        "client mic: the packet holding the first voiced sample leaves -> the last frame of "
        "the interrupted text arrives",
    )
    for s in sides:
        barge.add(Row(s.name, s.barge, {"side": s.name}, {"not_stopped": s.not_stopped}))
    cpu = Figure(
        "peers_cpu",
        "CPU of the whole server process tree, voxmesh vs Pipecat 1.14",
        "per turn: CPU-s over a block of voice-to-voice turns less idle rate x wall, per turn "
        "(one value per block); idle: CPU-s/s with no session; listening: a session, mic silent",
        unit="CPU-s or CPU-s/s",
    )
    for s in sides:
        cpu.add(Row(f"{s.name}: CPU-s per turn above idle", s.turn_cpu, {"side": s.name}))
        cpu.add(Row(f"{s.name}: idle CPU-s/s", s.idle, {"side": s.name}))
        cpu.add(Row(f"{s.name}: listening CPU-s/s", s.listening, {"side": s.name}))
    ratios = Figure(
        "peers_ratios",
        "voxmesh / Pipecat 1.14, same run",
        "each row: voxmesh's figure / Pipecat's (below 1: voxmesh lower)",
        unit="x",
        target="v2v <= 0.3x, barge-in <= 0.35x, CPU per turn <= 0.7x (DESIGN.md §6)",
    )
    pairs = {
        "voice-to-voice median": (summarize(vox.v2v).median, summarize(pc.v2v).median),
        "voice-to-voice p95": (summarize(vox.v2v).p95, summarize(pc.v2v).p95),
        "barge-in median": (summarize(vox.barge).median, summarize(pc.barge).median),
        "barge-in p95": (summarize(vox.barge).p95, summarize(pc.barge).p95),
        "CPU-s per turn above idle": (float(np.mean(vox.turn_cpu)), float(np.mean(pc.turn_cpu))),
        "idle CPU-s/s": (vox.idle_rate(), pc.idle_rate()),
        "WER": (_wer(vox.edits, vox.words), _wer(pc.edits, pc.words)),
        "WER, transcribed clips": (
            transcribed_wer(texts, vox.heard)[0],
            transcribed_wer(texts, pc.heard)[0],
        ),
    }
    for label, (a, b) in pairs.items():
        extra = {"voxmesh": round(a, 4), "pipecat": round(b, 4)}
        ratios.add(Row(label, [_ratio(a, b)], {"metric": label}, extra))
    wer = Figure(
        "peers_wer",
        "Word error rate per voice-to-voice clip, voxmesh vs Pipecat 1.14 (same tiny.en)",
        "the clip's final transcripts (the echo's text) against its text; the JSON has them",
        unit="WER",
    )
    for s in sides:
        rates = [_wer(*word_errors(ref, h)) for ref, h in zip(texts, s.heard, strict=False)]
        said_wer, dropped = transcribed_wer(texts, s.heard)
        info: dict[str, object] = {
            "wer_pct": round(100 * _wer(s.edits, s.words), 1),
            "wer_pct_transcribed": round(100 * said_wer, 1),
            "untranscribed": dropped,
            "heard": s.heard,
            "texts": texts,
        }
        wer.add(Row(s.name, rates, {"side": s.name}, info))
    return [v2v, barge, cpu, wer, ratios]
