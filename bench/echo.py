"""Echo: a speakerphone client, with the server's echo cancellation off and on in one run.

The simulated client (``Speakerphone``) plays the reply like the page does (the client's
``Player``) and mixes what it played back into its microphone: delayed (30-250 ms), through
a synthetic room (exponentially decaying noise, RT60 250 ms, a direct path), at an echo
level relative to the user's speech (-6 to -30 dB), with optional noise. Scripted users,
espeak voices the tests do not use, stay silent, backchannel, cough or truly interrupt.

Two figures:

- ``echo_offline``: the canceller alone (actors/transport/echo.py) on the same mixes, no
  mesh: ERLE after convergence (the first 2 s left out), Silero onsets on the raw and the
  cleaned mic of echo alone, and the thread CPU per session (share of one core at 100
  frames/s). Reproducible to the sample.
- ``echo``: through a Piper mesh (echo responder), per condition and with ``aec`` off and
  on: false barge-ins per minute of bot speech (a ``clear`` with a silent user), true
  barge-in reaction (the user's first voiced sample leaves -> the transport's last frame,
  ``t_last_frame`` of ``clear``), backchannels that stopped the reply, and the WER of what
  the user said over the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import shutil
import subprocess
import wave
from dataclasses import dataclass, field

import numpy as np

from voxmesh.client import MicStream, Player, WsClient, event_is
from voxmesh.mesh.settings import TtsSettings
from voxmesh.speech.wer import word_error_rate

from . import speech
from .registry import BenchContext, Outcome, Skip, scenario
from .report import Figure, Row

RATE = speech.MIC_RATE
REF_RMS = 32768 * 10 ** (TtsSettings.level_dbfs / 20)  # every voice is levelled to this
USER_RMS = REF_RMS  # the user's speech as the client's mic records it
RT60_S = 0.25
REPLY = speech.LONG_REPLY
INTERRUPT = "Wait, stop, that is not what I asked."
BACKCHANNELS = ("Yeah.", "Okay.", "Mm-hmm.", "Right.")
VOICES = ("en-gb-x-rp", "en-029")  # not the tests' Piper joe nor espeak's default "en"


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
    echo_db: float
    delay_ms: float
    noise_db: float | None = None
    seed: int = 0
    h: np.ndarray = field(init=False)
    _speaker: np.ndarray = field(init=False)  # the speaker's last h.size - 1 samples
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.client.player = MicClockPlayer()  # before any reply audio comes
        self.h = room_response(self.delay_ms, self.seed) * echo_gain(self.echo_db)
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
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def cough(seed: int) -> np.ndarray:
    """A 250 ms burst of shaped noise at the user's level: a cough, not a word."""
    rng = np.random.default_rng(seed)
    n = RATE // 4
    env = np.exp(-np.arange(n) / (RATE * 0.06)) * np.minimum(1.0, np.arange(n) / (RATE * 0.01))
    x = np.convolve(rng.normal(0, 1, n), np.ones(8) / 8, mode="same") * env
    x *= USER_RMS * 2 / np.sqrt(np.mean(x**2))
    return np.clip(x, -32768, 32767).astype(np.int16)


# --- offline: the canceller alone -------------------------------------------------------------


@functools.cache
def reply48() -> np.ndarray:
    """The bot's reply as the transport sends it: Piper, 48 kHz, at the TTS level."""
    x = np.concatenate(list(speech.piper().synthesize(REPLY, first=True))).astype(np.float64)
    x *= REF_RMS / max(float(np.sqrt(np.mean(x**2))), 1.0)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def offline_trial(echo_db: float, delay_ms: float, seed: int) -> dict[str, float]:
    """The canceller on the reply's echo alone, fed as the transport feeds it (frames 60 ms
    ahead, acks every 100 ms)."""
    from voxmesh.actors.transport.echo import EchoCanceller
    from voxmesh.mesh.settings import ServerSettings
    from voxmesh.speech.vad import SpeechSegmenter, StreamingVad

    far = reply48()
    played = far[: far.size // 3 * 3].reshape(-1, 3).mean(axis=1)
    near = np.convolve(played, room_response(delay_ms, seed) * echo_gain(echo_db))[: played.size]
    near = np.clip(np.rint(near), -32768, 32767).astype(np.int16)
    cfg = ServerSettings()
    ec = EchoCanceller(gate_db=cfg.aec_gate_db, hangover_ms=cfg.aec_hangover_ms, lead_s=0.06)
    out = np.zeros_like(near)
    sent, converged = 0, (0.0, 0.0)
    for i in range(near.size // 320):
        while sent < min(far.size, (i * 320 + 960) * 3):
            ec.far(sent, far[sent : sent + 960].tobytes(), i * 320)
            sent += 960
        if i % 5 == 0:
            ec.ack(i * 320 * 3, i * 320)
        if i == 2 * RATE // 320:  # ERLE counts from 2 s on: after convergence
            converged = (ec.stats.in_energy, ec.stats.out_energy)
        frame = near[i * 320 : (i + 1) * 320].tobytes()
        out[i * 320 : (i + 1) * 320] = np.frombuffer(ec.process(frame), np.int16)

    def onsets(x: np.ndarray) -> int:
        sv = StreamingVad(speech.silero(), SpeechSegmenter())
        return sum(e.kind == "speech_start" for e in sv.push(x) + sv.flush())

    e_in = ec.stats.in_energy - converged[0]
    e_out = ec.stats.out_energy - converged[1]
    seconds = near.size / RATE
    return {
        "erle_db": float(10 * np.log10(e_in / max(e_out, 1.0))),
        "onsets_raw": onsets(near),
        "onsets_aec": onsets(out),
        "cpu_pct": 100 * ec.stats.cpu_s / seconds,  # of one core, while the bot talks
        "seconds": seconds,
    }


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


async def mesh_trial(
    url: str, aec: str, user: str, echo_db: float, delay_ms: float, seed: int
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
        if user == "interrupt":
            t_onset = mic.sent_time(at)
            after = [e for e in c.received("clear", mark)]
            if t_onset is not None and after and after[0].data.get("t_last_frame"):
                trial.reaction_ms = (float(after[0].data["t_last_frame"]) - t_onset) * 1e3
            with contextlib.suppress(TimeoutError):
                got = await c.next_event(event_is("transcript", final=True), 15.0, since=mark)
                trial.wer = word_error_rate(said, str(got.data["text"]))
        await c.interrupt()
        await c.wait_quiet(0.3, 10.0)
    return trial


CONDITIONS = ((-10.0, 100.0), (-6.0, 30.0), (-20.0, 250.0))
USERS = ("silent", "backchannel", "cough", "interrupt")


@scenario("echo", "speakerphone echo: server AEC off vs on (false barge-ins, ERLE, CPU)", order=35)
def echo_scenario(ctx: BenchContext, out: Outcome) -> None:
    if shutil.which("espeak-ng") is None:
        raise Skip("espeak-ng is not installed (the scripted users' voices)")
    conditions = CONDITIONS[:1] if ctx.quick else CONDITIONS
    seeds = range(2 if ctx.quick else 4)
    off = out.add(
        Figure(
            "echo_offline",
            "Echo canceller alone: ERLE and Silero onsets on echo only (Piper reply)",
            "ERLE: raw echo energy / AEC3 output energy from 2 s on; onsets: Silero "
            "speech_start on the raw and the cleaned mic; CPU: thread time / audio time",
            unit="dB",
            target=">= 25 dB ERLE after convergence; 0 onsets on the cleaned mic; "
            "<= 3 % of a core per session",
        )
    )
    for echo_db, delay in conditions:
        res = [offline_trial(echo_db, delay, s) for s in seeds]
        off.add(
            Row(
                f"echo {echo_db:g} dB, {delay:g} ms",
                [r["erle_db"] for r in res],
                {"echo_db": echo_db, "delay_ms": delay},
                {
                    "onsets_raw": sum(int(r["onsets_raw"]) for r in res),
                    "onsets_aec": sum(int(r["onsets_aec"]) for r in res),
                    "cpu_pct_core": round(float(np.mean([r["cpu_pct"] for r in res])), 2),
                    "echo_s": round(sum(r["seconds"] for r in res), 1),
                },
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
                    f"echo {echo_db:g} dB, {delay:g} ms, aec {aec}",
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
                    },
                )
            )
