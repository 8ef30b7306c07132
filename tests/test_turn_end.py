"""The end of a turn through a real mesh (mock TTS, echo responder): Smart Turn waits out a
pause in the middle of a sentence, answers a one-word turn, and ends a complete sentence
sooner than the fixed silence of ``vad.turn_model = "off"``.

Speech is Piper's without its sampling noise (tests/speechgen.py), streamed in real time as
a microphone would.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from meshproc import MeshProc, mesh_up
from speechgen import piper_wav, speech_bounds

from voxmesh.actors.router.turnlog import parse_turn_line
from voxmesh.client import MicStream, WsClient
from voxmesh.speech.wer import word_error_rate

pytestmark = pytest.mark.timeout(240)

RATE = 16000
TURN_S = 20.0  # generous deadline for one turn on a busy 2-core box
# The first half sounds unfinished to the model (measured p < 0.02 with 32-200 ms of silence);
# the complete sentences sound finished (p > 0.9; "No thanks." does not, at 0.27-0.79).
FIRST, SECOND = "So I was thinking that maybe we could", "go to the station tomorrow."
COMPLETE = ["What time is it?", "Sure.", "Please send me the report by Friday."]
SENTENCES_MORE = ["How far is the train station from here?", "My brother plays the guitar."]


@pytest.fixture(scope="module")
def smart_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("smart"), tts="mock") as mesh:
        yield mesh


def voiced(text: str) -> np.ndarray:
    """Piper's audio up to its last voiced sample (the same every run: the model's verdicts
    too). Its start is kept whole: trimmed at 5 % of the peak, "Sure." loses its "Sh"."""
    pcm = piper_wav(text)[0]
    return pcm[: speech_bounds(pcm)[1]]


def finals(client: WsClient, since: int) -> list[str]:
    return [str(e.data["text"]) for e in client.events[since:] if e.data.get("final")]


def replies(client: WsClient, since: int) -> list[str]:
    return [str(e.data["text"]) for e in client.events[since:] if e.kind == "reply"]


async def turn(client: WsClient, mic: MicStream, pcm: np.ndarray) -> dict[str, Any]:
    """Say ``pcm`` (voiced up to its last sample); wait for the reply to play.
    Returns the seconds from the last voiced sample sent to speech_end and to audio_start."""
    since = client.mark()
    end_at = mic.queue(pcm)
    mic.queue_silence(1.5)
    done = await client.wait_event("audio_end", TURN_S, since=since)
    assert done["reason"] == "done", client.types(since)
    await client.wait_event("state", TURN_S, since=since, state="listening")
    t_last = mic.sent_time(end_at - 1)
    assert t_last is not None
    ends = [e for e in client.received("vad", since) if e.data.get("event") == "speech_end"]
    (start,) = client.received("audio_start", since)
    return {
        "since": since,
        "speech_end_s": ends[0].t - t_last if ends else None,
        "audio_start_s": start.t - t_last,
        "ends": len(ends),
    }


async def test_a_pause_mid_sentence_is_one_turn_and_one_reply(smart_mesh: MeshProc) -> None:
    pcm = np.concatenate([voiced(FIRST), np.zeros(RATE // 2, np.int16), voiced(SECOND)])
    async with (
        await WsClient.connect(smart_mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        mic.queue_silence(0.3)
        got = await turn(client, mic, pcm)
        since = got["since"]
        heard, said = finals(client, since), replies(client, since)
        assert len(heard) == 1 and word_error_rate(f"{FIRST} {SECOND}", heard[0]) <= 0.25, heard
        assert said == heard, said  # one reply, to the whole sentence (the echo responder)
        assert got["ends"] == 1 and len(client.received("audio_start", since)) == 1


async def test_a_one_word_answer_is_heard_and_answered(smart_mesh: MeshProc) -> None:
    async with (
        await WsClient.connect(smart_mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        mic.queue_silence(0.3)
        got = await turn(client, mic, voiced("Sure."))
        heard = finals(client, got["since"])
        assert [w.strip(" .!").lower() for w in heard] == ["sure"], heard
        assert replies(client, got["since"]) == heard


async def latencies(mesh: MeshProc) -> dict[str, float]:
    out: dict[str, list[float]] = {"speech_end_s": [], "audio_start_s": []}
    async with (
        await WsClient.connect(mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        mic.queue_silence(0.3)
        for text in COMPLETE:
            got = await turn(client, mic, voiced(text))
            assert got["ends"] == 1 and got["speech_end_s"] is not None
            for key in out:
                out[key].append(got[key])
    return {key: statistics.median(values) for key, values in out.items()}


async def test_a_complete_sentence_is_answered_sooner_than_with_fixed_silence(
    smart_mesh: MeshProc, tmp_path: Any
) -> None:
    smart = await latencies(smart_mesh)
    # "off" waits min_silence_ms by construction (400 here, the default 250 is too close to
    # the model's verdict on a loaded 2-core box to tell apart in a pass/fail test: the
    # default's figures are `voxmesh bench --only turns`); a complete verdict needs
    # complete_silence_ms (100) and the model's time (~60-150 ms here)...
    config = {"vad": {"turn_model": "off", "min_silence_ms": 400}}
    with mesh_up(tmp_path, tts="mock", config=config) as off_mesh:
        off = await latencies(off_mesh)
    print(f"median from the last voiced sample: smart-turn {smart}, off {off}")
    assert smart["speech_end_s"] < off["speech_end_s"] - 0.05, (smart, off)
    # ...and so does the reply (the speculative ASR ran in the same silence; generous).
    assert smart["audio_start_s"] < off["audio_start_s"], (smart, off)


def voice_turn_lines(mesh: MeshProc) -> list[dict[str, Any]]:
    """The router's turn lines of spoken turns in the mesh's log (README, "Logs")."""
    lines = [parse_turn_line(line) for line in mesh.log_text().splitlines()]
    return [t for t in lines if t is not None and t.get("source") == "voice"]


async def nth_voice_turn_line(mesh: MeshProc, n: int, timeout_s: float = 5.0) -> dict[str, Any]:
    """The ``n``-th (0-based) turn line: it reaches the log file through the supervisor a
    moment after the client's events, so wait for it (bounded)."""
    deadline = time.monotonic() + timeout_s
    while len(lines := voice_turn_lines(mesh)) <= n:
        assert time.monotonic() < deadline, f"no turn line {n} in the log"
        await asyncio.sleep(0.05)
    return lines[n]


async def test_a_sentence_gone_quiet_is_transcribed_before_its_pause(smart_mesh: MeshProc) -> None:
    # vad.quiet_ms: the ASR ran on the turn where its audio went quiet, before Silero's
    # pause, so the pause's final came from memory: ~0 ms of ASR in the router's turn line.
    # A turn whose cue and pause reach the ASR at once is transcribed only once, for its
    # pause: up to 3 tries (bounded, other words each: the same audio again would be
    # remembered anyway), one must have been remembered.
    texts = ["Please send me the report by Friday.", *SENTENCES_MORE]
    before = len(voice_turn_lines(smart_mesh))
    asr_ms: list[float] = []
    async with (
        await WsClient.connect(smart_mesh.ws_url, sample_rate=RATE) as client,
        MicStream(client, RATE) as mic,
    ):
        mic.queue_silence(0.3)
        for k, text in enumerate(texts):
            got = await turn(client, mic, voiced(text))
            assert word_error_rate(text, " ".join(finals(client, got["since"]))) <= 0.2
            line = await nth_voice_turn_line(smart_mesh, before + k)
            asr_ms.append(float(line["asr_ms"]))
            print(f"{text!r}: asr_ms {asr_ms[-1]}")
            if asr_ms[-1] < 5.0:
                break
    assert min(asr_ms) < 5.0, asr_ms
