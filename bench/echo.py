"""Echo: a speakerphone client, with the server's echo cancellation off and on in one run.

The simulated client (``Speakerphone``) plays the reply like the page does (the client's
``Player``) and mixes what it played back into its microphone: delayed (30-250 ms), through
a synthetic room (exponentially decaying noise, RT60 250 ms, a direct path), at an echo
level relative to the user's speech (-6 to -30 dB), with optional noise. Scripted users,
espeak voices the tests do not use, stay silent, backchannel, cough or truly interrupt.

Conditions: echo at -10 dB / 100 ms, a headset (no echo path: server AEC must cost it
nothing), -6 dB / 30 ms, -20 dB / 250 ms (``--quick``: the first two, 2 seeds).

Two figures:

- ``echo_offline``: the canceller alone (actors/transport/echo.py), no mesh, fed as the
  transport feeds it: the Piper reply in 2 s chunks with the TTS late between them (the
  client runs dry: the case that misaligned the reference), frames 60 ms ahead, acks every
  100 ms. ERLE after convergence (the first 2 s left out), Silero onsets on the raw and the
  cleaned mic of echo alone, when the echo-path verdict came against Silero's first onset
  on the raw echo, the user's voiced frames kept and the WER of what they said (after the
  canceller vs the raw mic) in a barge-in (the bot pauses 150 ms after they start) and
  over a reply that goes on, and the thread CPU per session (share of one core). Piper's
  output, hence every figure, varies a little from process to process.
- ``echo``: through a Piper mesh (echo responder), per condition and with ``aec`` off and
  on: false barge-ins per minute of bot speech (a ``clear`` with a silent user), true
  barge-in reaction (the user's first voiced sample leaves -> the transport's last frame,
  ``t_last_frame`` of ``clear``), backchannels that stopped the reply, and the WER of what
  the user said over the bot (every final transcript up to 2 s after they stopped: the
  router judges a barge-in at its first pause, so the words come in pieces).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import subprocess
import wave
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from voxmesh.client import MicStream, Player, WsClient
from voxmesh.mesh.settings import TtsSettings
from voxmesh.speech.wer import word_error_rate

from . import speech
from .registry import BenchContext, Outcome, require_tool, scenario
from .report import Figure, Row

if TYPE_CHECKING:
    from voxmesh.actors.transport.echo import EchoCanceller

RATE = speech.MIC_RATE
REF_RMS = 32768 * 10 ** (TtsSettings.level_dbfs / 20)  # every voice is levelled to this
USER_RMS = REF_RMS  # the user's speech as the client's mic records it
RT60_S = 0.25
REPLY = speech.LONG_REPLY
INTERRUPT = "Wait, stop, that is not what I asked."
BACKCHANNELS = ("Yeah.", "Okay.", "Mm-hmm.", "Right.")
VOICES = ("en-gb-x-rp", "en-029")  # not the tests' Piper joe nor espeak's default "en"
VOICES_ARE = "the scripted users' voices"
ECHO_DB, DELAY_MS = -10.0, 100.0  # the speakerphone the targets are set at (issue 11)


def room_response(delay_ms: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """A speaker-to-mic impulse response: ``delay_ms`` of nothing, a direct path, a decaying
    diffuse tail; unit energy (the echo level is set by the gain)."""
    rng = np.random.default_rng(seed)
    n = int(rate * RT60_S * 1.2)
    t = np.arange(n) / rate
    h = rng.normal(0.0, 1.0, n) * np.exp(-6.9 * t / RT60_S)
    h[0] = 3.0
    h /= np.sqrt(np.sum(h**2))
    return np.concatenate([np.zeros(int(delay_ms * rate / 1000)), h])


def echo_gain(echo_db: float) -> float:
    """Echo RMS = the user's speech RMS x 10^(echo_db / 20), for a reply at the TTS level."""
    return float(USER_RMS * 10 ** (echo_db / 20) / REF_RMS)


class MicClockPlayer(Player):
    """The client's player, clocked by the microphone (one sound card, one clock): it plays
    exactly what each mic packet's duration allows, however late the event loop runs."""

    def advance(self, now: float) -> None:
        pass  # wall time does not move it; play() does

    def play(self, n: int) -> bytes:
        take = min(n, len(self.buffer) // 2)
        out = bytes(self.buffer[: 2 * take])
        del self.buffer[: 2 * take]
        self.played += out
        self.played_samples += take
        return out


@dataclass
class Speakerphone:
    """A ``PcmSender`` for ``MicStream``: each mic packet goes out with the echo of what the
    client's player has played, as a laptop's speaker and mic would."""

    client: WsClient
    echo_db: float | None  # None: a headset, no echo path
    delay_ms: float
    noise_db: float | None = None
    seed: int = 0
    h: np.ndarray = field(init=False)
    _speaker: np.ndarray = field(init=False)  # the speaker's last h.size - 1 samples
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.client.player = MicClockPlayer()  # before any reply audio comes
        gain = 0.0 if self.echo_db is None else echo_gain(self.echo_db)
        self.h = room_response(self.delay_ms, self.seed) * gain
        self._speaker = np.zeros(self.h.size - 1, np.float64)
        self._rng = np.random.default_rng(self.seed + 1)

    def _speaker_packet(self, n: int) -> np.ndarray:
        """The n samples (16 kHz) the speaker gives out during this packet."""
        player = self.client.player
        assert isinstance(player, MicClockPlayer)
        x = np.frombuffer(player.play(n * 3), "<i2")
        out = np.zeros(n)
        out[: x.size // 3] = x[: x.size // 3 * 3].reshape(-1, 3).mean(axis=1)
        return out  # an underrun: silence after what there was

    def mic(self, user: np.ndarray) -> np.ndarray:
        n = user.size
        speaker = np.concatenate([self._speaker, self._speaker_packet(n)])
        self._speaker = speaker[n:]
        echo = np.convolve(speaker, self.h, mode="valid")  # n samples
        x = user.astype(np.float64) + echo
        if self.noise_db is not None:
            x += self._rng.normal(0.0, USER_RMS * 10 ** (self.noise_db / 20), n)
        return np.clip(np.rint(x), -32768, 32767).astype(np.int16)

    async def send_bytes(self, data: bytes) -> float | None:
        await self.client.send_bytes(self.mic(np.frombuffer(data, "<i2")).tobytes())
        return None


@functools.cache
def espeak(text: str, voice: str) -> np.ndarray:
    """espeak-ng saying ``text`` at 16 kHz, levelled to USER_RMS."""
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout"], input=text.encode(), capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:  # streamed WAV: sizes are placeholders
        rate = w.getframerate()
    at = wav.find(b"data") + 8
    pcm = np.frombuffer(wav[at : at + (len(wav) - at) // 2 * 2], "<i2").astype(np.float32)
    x = soxr.resample(pcm, rate, RATE)
    first, last = speech.voiced_bounds(x / 32768.0)
    x = x[first:last]
    x *= USER_RMS / max(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 1.0)
    out: np.ndarray = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return out


def cough(seed: int) -> np.ndarray:
    """A 250 ms burst of shaped noise at the user's level: a cough, not a word."""
    rng = np.random.default_rng(seed)
    n = RATE // 4
    env = np.exp(-np.arange(n) / (RATE * 0.06)) * np.minimum(1.0, np.arange(n) / (RATE * 0.01))
    x = np.convolve(rng.normal(0, 1, n), np.ones(8) / 8, mode="same") * env
    x *= USER_RMS * 2 / np.sqrt(np.mean(x**2))
    out: np.ndarray = np.clip(x, -32768, 32767).astype(np.int16)
    return out


# --- offline: the canceller alone -------------------------------------------------------------


@functools.cache
def reply48() -> np.ndarray:
    """The bot's reply as the transport sends it: Piper, 48 kHz, at the TTS level."""
    x = np.concatenate(list(speech.steady_piper().synthesize(REPLY, first=True)))
    x = x.astype(np.float64)
    x *= REF_RMS / max(float(np.sqrt(np.mean(x**2))), 1.0)
    out: np.ndarray = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return out


TICK = RATE // 50  # the client's 20 ms mic packet
OUT_FRAME = 960  # the transport's 20 ms frame at 48 kHz
LEAD_FRAMES = 3  # the transport sends 60 ms ahead
GAPS_MS = (40.0, 70.0, 130.0, 250.0, 30.0, 90.0)  # TTS late between reply chunks
CHUNK_S = 2.0


@dataclass
class Mix:
    """One offline speakerphone (or headset: ``echo_db`` None) run."""

    echo_db: float | None
    delay_ms: float
    seed: int = 0
    user: np.ndarray | None = None
    user_at_s: float = 2.0
    pause_ms: float | None = None  # the bot pauses this long after the user starts (clear)
    noise_db: float | None = None


@dataclass
class MixResult:
    mic: np.ndarray
    out: np.ndarray
    user: np.ndarray
    canceller: EchoCanceller
    far_start: int  # mic sample the reply starts playing at
    erle_db: float  # AEC3's own, from 2 s on


def reply_frames() -> list[tuple[int, np.ndarray]]:
    """The reply as 20 ms frames, each with the mic packet it becomes available at:
    chunks of ``CHUNK_S`` with the TTS late by ``GAPS_MS`` after each, so the client runs
    dry between them as it does behind a slow TTS."""
    far = reply48()
    step = int(CHUNK_S * 48000) // OUT_FRAME * OUT_FRAME
    frames: list[tuple[int, np.ndarray]] = []
    ready = 0
    for k, at in enumerate(range(0, far.size, step)):
        chunk = far[at : at + step]
        chunk = np.concatenate([chunk, np.zeros(-chunk.size % OUT_FRAME, np.int16)])
        frames += [(ready, f) for f in chunk.reshape(-1, OUT_FRAME)]
        ready += chunk.size // OUT_FRAME + int(GAPS_MS[k % len(GAPS_MS)] / 20)
    return frames


def offline_mix(mix: Mix) -> MixResult:
    """The canceller fed as the transport feeds it: frames sent up to 60 ms ahead of the
    client's playout (re-anchored after it ran dry), the client playing them at its mic's
    clock, acks every 100 ms, its mic hearing the user plus the echo of what it played."""
    from voxmesh.actors.transport.echo import EchoCanceller
    from voxmesh.mesh.settings import ServerSettings

    frames = reply_frames()
    cfg = ServerSettings()
    ec = EchoCanceller(gate_db=cfg.aec_gate_db, hangover_ms=cfg.aec_hangover_ms)
    gain = 0.0 if mix.echo_db is None else echo_gain(mix.echo_db)
    h = room_response(mix.delay_ms, mix.seed) * gain
    ticks = frames[-1][0] + 80
    n = ticks * TICK
    user = np.zeros(n)
    at = int(mix.user_at_s * RATE)
    if mix.user is not None:
        user[at : at + mix.user.size] = mix.user[: n - at]
    rng = np.random.default_rng(mix.seed + 1)
    noise = 0.0 if mix.noise_db is None else USER_RMS * 10 ** (mix.noise_db / 20)
    pause = None
    if mix.user is not None and mix.pause_ms is not None:
        pause = int((mix.user_at_s * 1000 + mix.pause_ms) / 20)
    mic, out = np.zeros(n, np.int16), np.zeros(n, np.int16)
    buf = np.zeros(0, np.int16)
    speaker = np.zeros(h.size - 1)
    played = sent = fi = 0
    anchor, since_anchor = 0, -1
    far_start, converged = -1, (0.0, 0.0)
    for i in range(ticks):
        if i == pause:  # a clear: the client drops what it has not played
            fi, buf = len(frames), buf[:0]
        while fi < len(frames) and frames[fi][0] <= i:
            if since_anchor < 0 or i - anchor > since_anchor:  # ran dry: a new anchor
                anchor, since_anchor = i, 0
            if anchor + since_anchor - LEAD_FRAMES > i:
                break
            ec.far(sent, frames[fi][1].tobytes(), i * TICK)
            buf = np.concatenate([buf, frames[fi][1]])
            sent += OUT_FRAME
            since_anchor += 1
            fi += 1
        take = min(OUT_FRAME, buf.size)
        if take and far_start < 0:
            far_start = i * TICK
        out16 = np.zeros(TICK)
        out16[: take // 3] = buf[: take // 3 * 3].reshape(-1, 3).mean(axis=1)
        buf, played = buf[take:], played + take
        speaker = np.concatenate([speaker, out16])
        echo = np.convolve(speaker, h, mode="valid")
        speaker = speaker[TICK:]
        s = slice(i * TICK, (i + 1) * TICK)
        x = user[s] + echo + (rng.normal(0.0, noise, TICK) if noise else 0.0)
        mic[s] = np.clip(np.rint(x), -32768, 32767)
        out[s] = np.frombuffer(ec.process(mic[s].tobytes()), np.int16)
        if (i + 1) % 5 == 0:
            ec.ack(played, (i + 1) * TICK)
        if i == 2 * RATE // TICK:  # ERLE counts from 2 s on: after convergence
            converged = (ec.stats.in_energy, ec.stats.out_energy)
    e_in = ec.stats.in_energy - converged[0]
    e_out = ec.stats.out_energy - converged[1]
    erle = float(10 * np.log10((e_in + 1.0) / (e_out + 1.0)))
    return MixResult(mic, out, user, ec, far_start, erle)


def onsets(x: np.ndarray) -> list[int]:
    """Silero's speech_start samples on ``x``, as the mesh's VAD would fire them."""
    from voxmesh.speech.vad import SpeechSegmenter, StreamingVad

    sv = StreamingVad(speech.silero(), SpeechSegmenter())
    return [e.sample for e in sv.push(x) + sv.flush() if e.kind == "speech_start"]


def voiced_pass(user: np.ndarray, out: np.ndarray) -> float:
    """The share of the user's voiced 10 ms frames (within 30 dB of the loudest) that
    reach VAD and ASR with at least half their energy."""
    n = user.size // 160
    eu = np.mean(user[: n * 160].reshape(n, 160) ** 2, axis=1)
    eo = np.mean(out[: n * 160].astype(np.float64).reshape(n, 160) ** 2, axis=1)
    voiced = eu >= eu.max() * 1e-3
    return float(np.mean(eo[voiced] >= 0.5 * eu[voiced]))


def transcript_wer(said: str, x: np.ndarray, at: int, n: int) -> float:
    seg = x[max(0, at - RATE // 5) : at + n + RATE * 3 // 10]
    return word_error_rate(said, speech.whisper().transcribe(seg))


def offline_trial(echo_db: float | None, delay_ms: float, seed: int) -> dict[str, float]:
    """The figures of one condition and seed: on echo alone, a barge-in (the bot pauses
    150 ms after the user starts, as through the mesh) and talk over the whole reply."""
    alone = offline_mix(Mix(echo_db, delay_ms, seed))
    ec = alone.canceller
    raw_onsets = [o - alone.far_start for o in onsets(alone.mic)]
    decided = ec.stats.decided_after
    said = INTERRUPT
    clip = espeak(said, VOICES[seed % len(VOICES)])
    at_s = 2.0 + 1.1 * seed
    res: dict[str, float] = {
        "erle_db": alone.erle_db,
        "onsets_raw": len(raw_onsets),
        "onsets_aec": len(onsets(alone.out)),
        "first_raw_onset_ms": raw_onsets[0] / RATE * 1000 if raw_onsets else float("nan"),
        "decided_ms": float("nan") if decided is None else decided * 10.0,
        "path": {"unknown": 0.0, "none": 1.0, "echo": 2.0}[ec.path.state.value],
        "cpu_pct": 100 * ec.stats.cpu_s / (alone.mic.size / RATE),
    }
    for kind, pause in (("barge", 150.0), ("talk", None)):
        r = offline_mix(Mix(echo_db, delay_ms, seed, clip, at_s, pause))
        at = int(at_s * RATE)
        res[f"{kind}_pass"] = voiced_pass(r.user[at : at + clip.size], r.out[at : at + clip.size])
        res[f"{kind}_wer_aec"] = transcript_wer(said, r.out, at, clip.size)
        res[f"{kind}_wer_off"] = transcript_wer(said, r.mic, at, clip.size)
    return res


# --- through the mesh -------------------------------------------------------------------------


@dataclass
class Trial:
    user: str  # silent | backchannel | cough | interrupt
    aec: str
    clears: int = 0  # pauses of the reply
    stopped: bool = False  # audio_end interrupted
    bot_s: float = 0.0  # seconds of reply played
    reaction_ms: float | None = None
    wer: float | None = None
    said: str = ""  # the user's words ("" for a cough or silence)
    heard: str = ""  # the final transcript of what the user said over the bot


async def mesh_trial(
    url: str, aec: str, user: str, echo_db: float | None, delay_ms: float, seed: int
) -> Trial:
    trial = Trial(user, aec)
    voice = VOICES[seed % len(VOICES)]
    async with contextlib.AsyncExitStack() as stack:
        c = await WsClient.connect(url, sample_rate=RATE, aec=aec)
        stack.push_async_callback(c.close)
        phone = Speakerphone(c, echo_db, delay_ms, seed=seed)
        mic = await stack.enter_async_context(MicStream(phone, RATE))
        since, first = c.mark(), len(c.frames)
        await c.say(REPLY)
        await c.wait_event("audio_start", 20.0, since=since)
        await asyncio.sleep(1.5 + (seed % 3) * 0.5)  # the user speaks 1.5-2.5 s in
        said = ""
        at = 0
        if user == "backchannel":
            said = BACKCHANNELS[seed % len(BACKCHANNELS)]
            clip = espeak(said, voice)
        elif user == "cough":
            clip = cough(seed)
        elif user == "interrupt":
            said = INTERRUPT
            clip = espeak(said, voice)
        else:
            clip = np.zeros(0, np.int16)
        mark = c.mark()
        if clip.size:
            at = mic.queue(clip) - clip.size
        end = await c.wait_event("audio_end", 60.0, since=since)
        trial.stopped = end.get("reason") == "interrupted"
        clears = c.received("clear", since)
        trial.clears = len(clears)
        trial.bot_s = len(c.frames[first:]) * 0.02
        trial.said = said
        if user == "interrupt" or (trial.stopped and clip.size):
            # The barge-in burst is judged at its first pause, so the words may come as more
            # than one turn: all of them, up to 2 s after the user stopped. For a cough or a
            # backchannel that stopped the bot, they say what took the floor.
            await mic.wait_sent(at + clip.size, 20.0)
            await asyncio.sleep(2.0)
            trial.heard = " ".join(c.user_turns(mark)).strip()
        if user == "interrupt":
            t_onset = mic.sent_time(at)
            after = c.received("clear", mark)
            if t_onset is not None and after and after[0].data.get("t_last_frame"):
                trial.reaction_ms = (float(after[0].data["t_last_frame"]) - t_onset) * 1e3
            trial.wer = word_error_rate(said, trial.heard)
        await c.interrupt()
        await c.wait_quiet(0.3, 10.0)
    return trial


CONDITIONS: tuple[tuple[float | None, float], ...] = (
    (ECHO_DB, DELAY_MS),
    (None, 0.0),  # a headset: server AEC must cost it nothing
    (-6.0, 30.0),
    (-20.0, 250.0),
)
USERS = ("silent", "backchannel", "cough", "interrupt")


def condition(echo_db: float | None, delay_ms: float) -> str:
    return "headset (no echo)" if echo_db is None else f"echo {echo_db:g} dB, {delay_ms:g} ms"


def mean(values: list[float]) -> float | None:
    v = [x for x in values if x == x]  # NaN: not measured in that trial
    return round(float(np.mean(v)), 2) if v else None


@scenario("echo", "speakerphone echo: server AEC off vs on (false barge-ins, ERLE, CPU)", order=35)
def echo_scenario(ctx: BenchContext, out: Outcome) -> None:
    require_tool("espeak-ng", VOICES_ARE)
    conditions = CONDITIONS[:2] if ctx.quick else CONDITIONS
    seeds = range(2 if ctx.quick else 4)
    off = out.add(
        Figure(
            "echo_offline",
            "Echo canceller alone (Piper reply in chunks, the client running dry between them)",
            "ERLE: raw echo energy / AEC3 output from 2 s on; onsets: Silero speech_start on "
            "echo alone, raw mic and after the canceller; decided: bot speech before the "
            "echo-path verdict; pass: the user's voiced frames kept (>= half their energy); "
            "WER of the user's words after the canceller vs the raw mic, in a barge-in (the "
            "bot pauses 150 ms in) and over a reply that goes on; CPU: thread time / audio",
            unit="dB",
            target=">= 25 dB ERLE; 0 onsets after the canceller; headset pass ~100 %; WER "
            "no worse than the raw mic; <= 3 % of a core per session",
        )
    )
    for echo_db, delay in conditions:
        res = [offline_trial(echo_db, delay, s) for s in seeds]
        extra: dict[str, object] = {
            "onsets_raw": sum(int(r["onsets_raw"]) for r in res),
            "onsets_aec": sum(int(r["onsets_aec"]) for r in res),
            "echo_s": round(len(res) * reply48().size / 48000, 1),
            "verdict": [("unknown", "none", "echo")[int(r["path"])] for r in res],
        }
        for key in ("first_raw_onset_ms", "decided_ms", "cpu_pct"):
            extra[key] = mean([r[key] for r in res])
        for kind in ("barge", "talk"):
            extra[f"{kind}_pass_pct"] = mean([100 * r[f"{kind}_pass"] for r in res])
            for aec in ("aec", "off"):
                extra[f"{kind}_wer_{aec}_pct"] = mean([100 * r[f"{kind}_wer_{aec}"] for r in res])
        off.add(
            Row(
                condition(echo_db, delay),
                [r["erle_db"] for r in res],
                {"echo_db": echo_db, "delay_ms": delay},
                extra,
            )
        )
    from .mesh import pool

    mesh = pool(ctx).get("piper")
    fig = out.add(
        Figure(
            "echo",
            "Speakerphone echo through the mesh: server AEC off vs on (Piper, echo responder)",
            "false barge-ins: clears with a silent user, per minute of bot speech; reaction: "
            "the user's first voiced sample leaves -> the transport's last frame (clear's "
            "t_last_frame); stopped: backchannels/coughs that ended the reply",
            target="AEC on: 0 false barge-ins; reaction p95 <= 150 ms; no backchannel stops",
        )
    )
    for echo_db, delay in conditions:
        for aec in ("off", "server"):
            trials = [
                asyncio.run(mesh_trial(mesh.ws_url, aec, user, echo_db, delay, seed))
                for seed in seeds
                for user in USERS
            ]
            silent = [t for t in trials if t.user == "silent"]
            minutes = sum(t.bot_s for t in silent) / 60
            react = [t.reaction_ms for t in trials if t.reaction_ms is not None]
            wers = [t.wer for t in trials if t.wer is not None]
            fig.add(
                Row(
                    f"{condition(echo_db, delay)}, aec {aec}",
                    [float(v) for v in react],
                    {"echo_db": echo_db, "delay_ms": delay, "aec": aec},
                    {
                        "false_barge_ins_per_min": round(
                            sum(t.clears for t in silent) / max(minutes, 1e-9), 2
                        ),
                        "silent_bot_min": round(minutes, 2),
                        "silent_replies_stopped": sum(t.stopped for t in silent),
                        "backchannels_stopped": sum(
                            t.stopped for t in trials if t.user == "backchannel"
                        ),
                        "coughs_stopped": sum(t.stopped for t in trials if t.user == "cough"),
                        "interrupts_stopped": sum(
                            t.stopped for t in trials if t.user == "interrupt"
                        ),
                        "interrupts": sum(t.user == "interrupt" for t in trials),
                        "double_talk_wer_pct": round(100 * float(np.mean(wers)), 1)
                        if wers
                        else None,
                        # JSON only: [user, what they said, what the mesh heard] of each
                        # backchannel or cough that stopped the reply
                        "stopped_by": [
                            [t.user, t.said, t.heard]
                            for t in trials
                            if t.stopped and t.user in ("backchannel", "cough")
                        ],
                    },
                )
            )
