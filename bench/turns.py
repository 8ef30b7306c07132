"""End of turn: Smart Turn (``vad.turn_model = "smart-turn"``) against the fixed silence
(``"off"``), on the same speech in the same run, through a Piper mesh with the echo responder.

The user is espeak-ng in voices the tests do not use (they speak Piper's joe and espeak's
default "en"), in three sets: complete sentences, sentences with a 300-700 ms pause in the
middle ("I would like to go to, um, the station"), and short answers ("Yes.", "No thanks.").
Per clip: voice-to-voice (the packet holding the last voiced sample leaves -> the first
reply frame), a premature reply (a reply frame before that packet left: the bot spoke while
the user was still talking), a split turn (more than one final transcript for one clip; one
that ``continues`` the last replaces it), and the word error rate of the final transcripts,
beside offline tiny.en on the same clip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import subprocess
import time
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxmesh.actors.router.turnlog import parse_turn_line
from voxmesh.actors.router.words import FILLERS
from voxmesh.client import MicStream, event_is, ws_session
from voxmesh.speech.wer import normalize_text, word_errors

from . import speech
from .mesh import Mesh, pool
from .registry import BenchContext, Outcome, require_tool, scenario
from .report import Figure, Row

RATE = speech.MIC_RATE
VOICES = ("en-us", "en-gb-x-rp", "en-029")
COMPLETE = (
    "What is the weather like in Paris today?",
    "Please book a table for two at seven.",
    "Can you remind me to call my mother tomorrow?",
    "Turn off the lights in the kitchen, please.",
)
# (before the pause, after it, pause in ms)
PAUSED = (
    ("I would like to go to", "um, the station.", 500),
    ("Can you tell me the", "way to the museum?", 300),
    ("So I was thinking that maybe we could", "go out for dinner.", 700),
    ("My favourite colour is", "probably green.", 400),
)
SHORT = ("Yes.", "No thanks.", "Sure.", "Okay.")
MODES = ("smart-turn", "off")
LEAD_S = 0.3  # silence before each clip


@functools.cache
def _espeak(text: str, voice: str) -> np.ndarray:
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-m", "-v", voice, "--stdout"],  # -m: SSML, for the <break> of a pause
        input=f"<speak>{text}</speak>".encode(),
        capture_output=True,
        check=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:  # streamed WAV: sizes are placeholders
        rate = w.getframerate()
    at = wav.find(b"data") + 8
    pcm = np.frombuffer(wav[at : at + (len(wav) - at) // 2 * 2], "<i2")
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, RATE)
    last = speech.voiced_bounds(out)[1]  # the start kept whole: a soft onset is speech too
    res: np.ndarray = np.rint(np.clip(out[:last], -1.0, 1.0) * 32767.0).astype(np.int16)
    return res


def clips(quick: bool) -> list[tuple[str, str, np.ndarray]]:
    """(set, reference text, audio up to its last voiced sample)."""
    out = []
    for text in COMPLETE[:2] if quick else COMPLETE:
        for voice in VOICES[:1] if quick else VOICES:
            out.append(("complete", text, _espeak(text, voice)))
    for k, (a, b, pause_ms) in enumerate(PAUSED[:2] if quick else PAUSED):
        voice = VOICES[k % len(VOICES)]
        # One synthesis with the pause inside: two would each end in a sentence's final fall.
        said = _espeak(f'{a} <break time="{pause_ms}ms"/> {b}', voice)
        out.append(("paused", f"{a} {b}", said))
    for k, text in enumerate(SHORT[:2] if quick else SHORT):
        out.append(("short", text, _espeak(text, VOICES[k % len(VOICES)])))
    return out


def as_sent(audio: np.ndarray) -> np.ndarray:
    """The clip with the silence around it that the mic sends (_run): offline Whisper hears
    what the mesh's ASR can, and its window code (speech/asr.py) cuts both alike."""
    pad = np.zeros(int(LEAD_S * RATE), np.int16)
    return np.concatenate([pad, audio, pad])


def _words(text: str) -> str:
    return " ".join(w for w in normalize_text(text) if w not in FILLERS)


@dataclass(frozen=True, slots=True)
class Trial:
    """One clip through the mesh, and what offline Whisper made of the same audio."""

    kind: str  # complete | paused | short
    text: str
    v2v_ms: float | None  # None: no reply
    premature: bool
    finals: list[str]
    offline: str
    continued: bool  # a final transcript continued the turn (router.continue_ms)

    @property
    def heard(self) -> str:
        return " ".join(self.finals)


async def _run(
    mesh: Mesh, items: list[tuple[str, str, np.ndarray]], offline: list[str]
) -> tuple[str, list[Trial]]:
    """(the session's id, a trial per clip)."""
    out: list[Trial] = []
    async with ws_session(mesh.ws_url) as c, MicStream(c, RATE) as mic:
        session = c.session_id
        await asyncio.sleep(0.5)
        for (kind, text, audio), off in zip(items, offline, strict=True):
            mic.queue_silence(LEAD_S)
            since, first = c.mark(), len(c.frames)
            end = mic.queue(audio)
            mic.queue_silence(1.5)  # more than vad.max_silence_ms: the turn surely ends
            await mic.wait_sent(end)
            t_last = mic.sent_time(end - 1)
            assert t_last is not None
            with contextlib.suppress(TimeoutError):
                await c.wait_frame(first, 15.0)
            await asyncio.sleep(1.2)  # a second turn (a split) would be heard by now
            frames = c.frame_times(first)
            finals = c.user_turns(since)
            continued = any(e.data.get("continues") for e in c.received("transcript", since))
            v2v = (frames[0] - t_last) * 1e3 if frames else None
            premature = v2v is not None and v2v < 0
            out.append(Trial(kind, text, v2v, premature, finals, off, continued))
            await c.interrupt()
            await c.wait_quiet(0.3, 10.0)
            with contextlib.suppress(TimeoutError):
                await c.next_event(event_is("state", state="listening"), 5.0, since=since)
    return session, out


def router_turns(mesh: Mesh, session: str, trials: list[Trial]) -> list[dict[str, Any] | None]:
    """Per trial, the router's turn line of the reply the client timed (the one to its last
    final transcript; a premature reply cut by the rest of the turn has its own, earlier
    line), None where there is none. The router logs a turn once it has ended: wait a
    little (bounded) for the last."""
    deadline = time.monotonic() + 3.0
    while True:
        lines = [parse_turn_line(line) for line in mesh.log_text().splitlines()]
        turns = [t for t in lines if t is not None and t.get("session") == session]
        found: list[dict[str, Any] | None] = []
        for trial in trials:
            want = trial.finals[-1] if trial.finals else None
            at = next((k for k, t in enumerate(turns) if t.get("transcript") == want), None)
            found.append(None if at is None else turns[at])
            turns = turns if at is None else turns[at + 1 :]
        if found[-1:] != [None] or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _median_p95(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.median(values):.0f} / {np.percentile(values, 95):.0f}"


def router_note(mode: str, trials: list[Trial], turns: list[dict[str, Any] | None]) -> str:
    """Where each set's time went, from the router's turn lines (README, "Logs")."""
    parts = []
    for kind in ("complete", "paused", "short"):
        rows = [
            t
            for trial, t in zip(trials, turns, strict=True)
            if trial.kind == kind and t is not None and not trial.premature
        ]
        eot = [t["eot_ms"] for t in rows if t.get("eot_ms") is not None]
        asr = [t["asr_ms"] for t in rows if t.get("asr_ms") is not None]
        tts = [t["tts_ms"] for t in rows if t.get("tts_ms") is not None]
        ready = sum(v < 5.0 for v in tts)
        parts.append(
            f"{kind}: eot_ms {_median_p95(eot)}, asr_ms {_median_p95(asr)}, tts_ms "
            f"{_median_p95(tts)}, reply ready at release {ready} of {len(tts)}"
        )
    return f"{mode}, the router's turn lines (median / p95): " + "; ".join(parts)


def _wer_pct(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over (reference, hypothesis) pairs, fillers left out, in percent."""
    edits = refs = 0
    for ref, hyp in pairs:
        e, n = word_errors(_words(ref), _words(hyp))
        edits, refs = edits + e, refs + n
    return round(100 * edits / max(refs, 1), 1)


@scenario("turns", "end of turn: Smart Turn vs fixed silence, same speech (Piper, echo)", order=55)
def turns_scenario(ctx: BenchContext, out: Outcome) -> None:
    require_tool("espeak-ng", "the user's voices")
    items = clips(ctx.quick)
    asr = speech.whisper()
    offline = [asr.transcribe(as_sent(audio)) for _, _, audio in items]
    results = {}
    cost = "not measured"
    where = []
    for mode in MODES:
        mesh = pool(ctx).get("piper", env={"VOXMESH_VAD_TURN_MODEL": mode})
        session, results[mode] = asyncio.run(_run(mesh, items, offline))
        where.append(router_note(mode, results[mode], router_turns(mesh, session, results[mode])))
        if mode == "smart-turn":
            info = mesh.actor_info().get("vad", {})
            cost = f"{info.get('turn_check_ms', 0):.0f} ms mean over {info.get('turn_checks', 0)}"
    fig = out.add(
        Figure(
            "turns",
            "End of turn: Smart Turn v3.2 vs fixed silence (espeak users, Piper, echo)",
            "client mic: the packet holding the last voiced sample leaves -> first reply frame; "
            "premature: a reply frame before that packet left; split: > 1 final transcript "
            "for one clip; offline: tiny.en on the clip as sent, by the ASR's window code",
            target="complete: median <= 250 ms, p95 <= 400 ms; paused: 0 split, 0 premature; "
            "WER <= offline + 0.5 points",
        )
    )
    for mode, trials in results.items():
        for kind in ("complete", "paused", "short"):
            rows = [t for t in trials if t.kind == kind]
            fig.add(
                Row(
                    f"{mode}: {kind}",
                    [t.v2v_ms for t in rows if t.v2v_ms is not None and not t.premature],
                    {"variant": mode, "set": kind},
                    {
                        "clips": len(rows),
                        "premature": sum(t.premature for t in rows),
                        "split": sum(len(t.finals) > 1 for t in rows),
                        "continued": sum(t.continued for t in rows),
                        "no_reply": sum(t.v2v_ms is None for t in rows),
                        "wer_pct": _wer_pct([(t.text, t.heard) for t in rows]),
                        "offline_wer_pct": _wer_pct([(t.text, t.offline) for t in rows]),
                        # the mesh's words are not offline Whisper's on the same audio
                        "not_as_offline": sum(_words(t.heard) != _words(t.offline) for t in rows),
                        # JSON only: each clip's words through the mesh and offline, and
                        # its voice-to-voice (negative: premature; None: no reply)
                        "clips_heard": [
                            [
                                t.text,
                                t.finals,
                                t.offline,
                                None if t.v2v_ms is None else round(t.v2v_ms),
                            ]
                            for t in rows
                        ],
                    },
                )
            )
    wer = _wer_pct([(text, heard) for (_, text, _), heard in zip(items, offline, strict=True)])
    fig.notes.append(f"offline tiny.en on the same clips: WER {wer:.1f} %")
    fig.notes.append(f"Smart Turn cost per check, in the VAD actor: {cost}")
    fig.notes += where
