"""A speakerphone client: the bot's own voice comes back into its microphone.

The client (``bench/echo.py``'s ``Speakerphone``) plays the reply like the page does and
mixes what it played back into its mic through a synthetic room, at -10 dB relative to the
user's speech and 80 ms late. With the server's echo cancellation the reply plays to its
end; with ``"aec": "off"`` the echo pauses the bot (so the first test cannot pass for want
of echo); a real interruption over the echo still stops the reply. Then, without a mesh:
the canceller on the bench's offline mixes (a headset keeps its mic untouched, a
speakerphone's echo never makes a Silero onset, even with the client running dry between
reply chunks), the reference's timeline, and the barge-in policy's own rules.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from meshproc import MeshProc, mesh_up
from speechgen import piper_wav
from test_router_turns import asr_answers, burst_judged, make, speak_turn, vad

from voxmesh.actors.router.session import State
from voxmesh.actors.router.words import (
    LONE_WORD_WAIT_S,
    RESUME_GRACE_S,
    interrupts,
    tentative,
)
from voxmesh.actors.transport.echo import (
    AEC3_LATENCY,
    APM_FRAME,
    DOMINANT_DB,
    ECHO_ONLY_DB,
    EchoPath,
    Path,
    Quantile,
    Reference,
    ResidualGate,
    energy_db,
)
from voxmesh.bench.echo import Mix, Speakerphone, offline_mix, onsets, voiced_pass
from voxmesh.client import MicStream, WsClient, event_is
from voxmesh.mesh.protocol import Stop, Transcript

pytestmark = pytest.mark.timeout(240)

RATE = 16000
ECHO_DB, DELAY_MS = -10.0, 80.0
TURN_S = 30.0
REPLY = (
    "Here is a fairly long answer, so that the audio keeps streaming for a good while, "
    "and all of it comes back into the microphone of a laptop on the table."
)
BARGE_IN = "Please wait a moment."


@pytest.fixture(scope="module")
def piper_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    # No warm spares: the spare ASR loads Whisper just as the first session starts, and on
    # two busy cores that starved Piper between the reply's chunks past router.watchdog_ms
    # (a `stuck_turn`, audio_end `failed`): a test of the startup's load, not of echo.
    # Steady Piper: the same reply, so the same echo, every run. With Piper's sampling noise
    # one run in many leaked a pause (stop 37's clean-clone run); how often the echo does
    # that on the voice as users hear it is bench/echo.py's false barge-ins a minute.
    config = {"mesh": {"standby": []}, "tts": {"steady": True}}
    with mesh_up(tmp_path_factory.mktemp("echo"), tts="piper", config=config) as mesh:
        yield mesh


def seen(client: WsClient, since: int) -> str:
    """What the client got, for a failure message (errors with their codes)."""
    got = client.events[since:]
    return ", ".join(f"{e.kind}({e.data.get('code') or e.data.get('reason') or ''})" for e in got)


async def speakerphone_reply(
    mesh: MeshProc, aec: str | None, barge_in: bool = False
) -> tuple[list[str], str]:
    """Play REPLY on a speakerphone client: the event types from ``say`` to its audio_end
    (or to the first ``clear`` with ``aec`` off; with ``barge_in``, to the final transcript),
    and the reason the reply's audio ended ("" if it had not)."""
    async with await WsClient.connect(mesh.ws_url, sample_rate=RATE, aec=aec) as client:
        phone = Speakerphone(client, ECHO_DB, DELAY_MS, seed=1)
        async with MicStream(phone, RATE) as mic:
            since = client.mark()
            await client.say(REPLY)
            await client.wait_event("audio_start", TURN_S, since=since)
            if barge_in:
                assert client.player is not None
                await client.wait_until(lambda: client.player.played_samples >= 48000 * 2, TURN_S)
                mic.queue(piper_wav(BARGE_IN)[0])
            last = await client.next_event(
                lambda e: e["type"] == "audio_end" or (aec == "off" and e["type"] == "clear"),
                TURN_S,
                since=since,
            )
            # Up to that event: a `state` may already have come after it.
            types = client.types(since)[: client.events.index(last, since) - since + 1]
            if barge_in:
                await client.wait_event("audio_end", TURN_S, since=since)
                await client.next_event(event_is("transcript", final=True), TURN_S, since=since)
                types = client.types(since)
            end = client.find(event_is("audio_end"), since)
            reason = str(end.data["reason"]) if end is not None else ""
            if reason not in ("", "done", "interrupted"):
                pytest.fail(f"the reply ended {reason}: {seen(client, since)}")
            await client.interrupt()
            return types, reason


async def test_with_server_aec_the_echo_never_interrupts_the_reply(piper_mesh: MeshProc) -> None:
    types, reason = await speakerphone_reply(piper_mesh, aec="server")
    assert reason == "done" and "clear" not in types, types


async def test_without_aec_the_echo_pauses_the_bot(piper_mesh: MeshProc) -> None:
    types, _ = await speakerphone_reply(piper_mesh, aec="off")
    assert "clear" in types, f"the echo never paused the bot without AEC: {types}"


async def test_a_real_interruption_over_the_echo_stops_the_reply(piper_mesh: MeshProc) -> None:
    types, reason = await speakerphone_reply(piper_mesh, aec="server", barge_in=True)
    assert reason == "interrupted" and "clear" in types and "transcript" in types, types


async def test_hello_refuses_an_unknown_aec(piper_mesh: MeshProc) -> None:
    with pytest.raises(RuntimeError, match="bad_field"):
        await WsClient.connect(piper_mesh.ws_url, sample_rate=RATE, aec="speaker")


# --- the barge-in policy, without a mesh ------------------------------------------------------


@pytest.mark.parametrize("text", ["Yeah.", "Okay.", "Mm-hmm.", "Right, right.", "Uh-huh."])
async def test_a_backchannel_during_a_reply_never_stops_it(text: str) -> None:
    engine, out, s = make(interrupt_ms=30)
    await speak_turn(engine, out, s, "a long answer")
    out.transport.clear()
    engine.on_vad(s, vad("speech_start", 50000))
    out.head = 56000
    engine.poll_partials(s, out.clock.now())  # ASR is asked about the burst
    assert not out.asr[-1].final
    asr_answers(engine, out, s, text)
    out.clock.advance(0.06)  # past interrupt_min_ms, the VAD still hears the "okaaay"
    assert s.state == State.PAUSED
    engine.on_vad(s, vad("speech_pause", 56000))
    engine.on_vad(s, vad("speech_end", 56000))
    asr_answers(engine, out, s, text)
    out.clock.advance(RESUME_GRACE_S)
    assert s.state == State.SPEAKING
    assert not [m for m in out.transport if isinstance(m, Stop)]


@pytest.mark.parametrize("more_speech", [True, False])
async def test_a_lone_word_holds_the_reply_and_more_speech_makes_it_an_interruption(
    more_speech: bool,
) -> None:
    # "with": what tiny.en made of a "Wait," over the reply after the echo canceller.
    engine, out, s = await burst_judged("with", 56000, interrupt_ms=30)
    out.clock.advance(LONE_WORD_WAIT_S / 2)
    engine.poll_partials(s, out.clock.now())  # as the actor does every tick
    assert s.state == State.PAUSED  # neither stopped nor resumed yet
    assert not out.asr[-1].final and out.asr[-1].end == 56000  # nor ASR asked again
    if more_speech:
        engine.on_vad(s, vad("speech_resume", 60000))
        assert s.state == State.USER_SPEAKING
        assert [m for m in out.transport if isinstance(m, Stop)]
    else:
        out.clock.advance(LONE_WORD_WAIT_S)
        assert s.state == State.SPEAKING
        assert not [m for m in out.transport if isinstance(m, Stop)]


async def test_words_over_the_reply_still_stop_it() -> None:
    engine, out, s = make(interrupt_ms=30)
    await speak_turn(engine, out, s, "a long answer")
    engine.on_vad(s, vad("speech_start", 50000))
    out.head = 56000
    engine.poll_partials(s, out.clock.now())
    asr_answers(engine, out, s, "Okay, but what about Paris?")
    assert s.state == State.USER_SPEAKING


def test_a_held_hum_is_a_backchannel_not_a_word() -> None:
    # What tiny.en wrote for the echo bench's espeak "Mm-hmm." (en-gb-x-rp): it stopped the bot.
    for heard in ("Mmmmm", "Hmmmm.", "Mm-hmm.", "Mmhmm", "Uhhh, okay.", "Ahh."):
        assert not interrupts(heard), heard
    for heard in ("Ummm, wait.", "Stop", "Too late.", "See, that is wrong."):
        assert interrupts(heard), heard


def test_words_that_say_nothing_alone_do_not_take_the_floor() -> None:
    # What tiny.en wrote for espeak's "Mm-hmm." over the reply, after the echo canceller and
    # in the en-029 voice: each stopped the bot.
    for heard in ("and then them.", "in in then", "Yeah, and the..."):
        assert not interrupts(heard), heard
    for heard in ("And then what?", "No.", "In the big kitchen!", "Then stop."):
        assert interrupts(heard), heard


def test_a_lone_word_takes_the_floor_only_if_people_take_it_with_that_word() -> None:
    # "Bye." and "And then boom." are what tiny.en wrote for espeak's "Right." and "Mm-hmm."
    # over the reply after the canceller; both stopped the bot.
    for heard in ("Bye.", "And then boom.", "Boston?", "Yeah, you"):
        assert not interrupts(heard), heard
    for heard in ("Stop!", "Wait", "Hold on.", "No, Boston.", "Okay, but why?"):
        assert interrupts(heard), heard
    assert not interrupts("Wait", no_speech=0.7)


def test_one_word_in_what_whisper_calls_silence_is_not_a_word() -> None:
    assert not interrupts("You", no_speech=0.7)
    assert interrupts("Wait", no_speech=0.1)
    assert Transcript(session="s", turn=1, text="", final=False, end=0).no_speech == 0.0


def test_words_in_what_whisper_calls_silence_do_not_take_the_floor_but_may_start_a_sentence() -> (
    None
):
    # What tiny.en wrote for people's "okay" and "mm-hmm" over the reply after the canceller
    # (bench/echo_human.py), each with its no_speech: all of them stopped the bot.
    for heard, no_speech in (("Thank you.", 0.61), ("I'm going to go to the", 0.58)):
        assert not interrupts(heard, no_speech), heard
        assert tentative(heard, no_speech), heard  # more speech soon would interrupt
    assert interrupts("Thank you.", 0.2)
    assert not tentative("Mm-hmm.", 0.6)  # no word at all: the burst's end resumes


def test_words_whisper_half_calls_silence_and_decodes_unsurely_do_not_take_the_floor() -> None:
    # What tiny.en wrote for espeak's "Mm-hmm." over the reply after the canceller, with its
    # no_speech and mean log-probability (bench/echo_human.py's rooms): each stopped the bot.
    for heard, no_speech, logprob in (
        ("It's not the same.", 0.34, -1.93),
        ("and at the moment.", 0.35, -0.71),
        ("I meant bim-", 0.41, -1.39),
    ):
        assert not interrupts(heard, no_speech, logprob), heard
        assert tentative(heard, no_speech, logprob), heard  # more speech soon would interrupt
    # Either score alone is not doubt: a turn start over the echo is often one or the other.
    assert interrupts("It's not the same.", 0.34, -0.3)
    assert interrupts("It's not the same.", 0.2, -1.93)
    assert Transcript(session="s", turn=1, text="", final=False, end=0).logprob == 0.0


def test_the_speakerphone_room_delays_the_echo_and_keeps_its_level() -> None:
    from voxmesh.bench.echo import room_response

    h = room_response(DELAY_MS)
    assert np.flatnonzero(h)[0] == int(DELAY_MS * RATE / 1000)
    assert abs(float(np.sum(h**2)) - 1.0) < 1e-9


# --- the canceller alone, on the bench's offline mixes ----------------------------------------

USER_AT_S = 2.5


def user_clip() -> np.ndarray:
    return piper_wav(BARGE_IN)[0]


def test_a_headset_keeps_every_word_while_the_bot_talks() -> None:
    clip = user_clip()
    r = offline_mix(Mix(None, 0.0, user=clip, user_at_s=USER_AT_S))
    assert r.canceller.path.state == Path.NONE
    at = int(USER_AT_S * RATE)
    assert voiced_pass(r.user[at : at + clip.size], r.out[at : at + clip.size]) == 1.0
    assert np.array_equal(r.out[at:], r.mic[at:])  # nothing of AEC3 touches it


def test_a_speakerphone_echo_never_starts_speech_even_across_chunk_gaps() -> None:
    r = offline_mix(Mix(-10.0, 100.0))
    assert r.canceller.stats.resumes >= 5  # the client ran dry between the reply's chunks
    assert r.canceller.path.state == Path.ECHO
    assert onsets(r.mic), "the raw echo should look like speech to Silero"
    assert onsets(r.out) == []
    assert r.erle_db >= 25.0


def test_a_user_barging_in_over_the_echo_reaches_vad_and_asr() -> None:
    clip = user_clip()
    r = offline_mix(Mix(-10.0, 100.0, user=clip, user_at_s=USER_AT_S, pause_ms=150.0))
    at = int(USER_AT_S * RATE)
    assert voiced_pass(r.user[at : at + clip.size], r.out[at : at + clip.size]) >= 0.8
    assert onsets(r.out), "the user's words must still start speech"


def test_a_user_over_the_echo_passes_raw_until_the_echo_alone_explains_the_mic() -> None:
    gate = ResidualGate(gate_db=20.0, hangover=10)
    raw = np.full(160, 1000, np.int16)
    suppressed = np.zeros(160, np.int16)  # AEC3's suppressor took the double talk
    env = 60.0  # the echo's usual level (erl) is still 0 dB under the far end
    above = (DOMINANT_DB + 2, DOMINANT_DB - 2, ECHO_ONLY_DB + 1, ECHO_ONLY_DB - 1)
    outs = [gate.choose(raw, suppressed, env + a, 0.0, env, True) for a in above]
    # Once the user is heard over the echo, a quieter syllable still comes as it was said
    # (it used to switch to AEC3's output, and Silero heard the word late).
    assert all(o is not None and o.any() for o in outs[:3])
    assert outs[3] is not None and not outs[3].any()  # the echo alone explains it: AEC3's


def test_a_silent_mic_between_the_bots_words_does_not_let_the_next_words_echo_through() -> None:
    # Seen offline (echo -10 dB, 180 ms): a client sending digital silence while the far end
    # paused opened the gate (the mic 6 dB over a decayed envelope), and its hangover let the
    # echo of the next words through while AEC3 had taken only 8 dB of it.
    gate = ResidualGate(gate_db=20.0, hangover=10)
    gate.erl = Quantile(0.5, -9.8)  # the echo's usual level, learnt
    silence = np.zeros(160, np.int16)
    for _ in range(3):
        gate.choose(silence, silence, 0.0, 0.0, 3.7, True)
    echo = np.full(160, 1000, np.int16)
    residual = np.full(160, 400, np.int16)
    # the echo's onset, 42 dB in with the envelope at 56: the echo alone explains it
    assert gate.choose(echo, residual, 42.0, 35.0, 56.0, True) is None
    # a user's first syllable still does, the mic well over the echo's usual level
    assert gate.choose(echo, residual, 56.0 - 9.8 + DOMINANT_DB + 1, 35.0, 56.0, True) is not None


def _far_end(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise switched on and off three times a second: a far end the detector can time."""
    on = np.sin(np.arange(n) / RATE * 2 * np.pi * 3) > -0.5
    out: np.ndarray = (rng.normal(0, 3000, n) * on).astype(np.int16)
    return out


def _detect(ref: np.ndarray, mic: np.ndarray) -> tuple[EchoPath, float | None]:
    """An EchoPath fed ``ref`` and ``mic`` (int16) frame by frame, and the second of audio
    at which it first said ECHO (None: never)."""
    path, found_at = EchoPath(), None
    for i in range(0, ref.size, APM_FRAME):
        r, m = ref[i : i + APM_FRAME], mic[i : i + APM_FRAME]
        path.push(r, m, energy_db(r), energy_db(m))
        if found_at is None and path.state == Path.ECHO:
            found_at = i / RATE
    return path, found_at


def test_the_echo_path_starts_at_the_rooms_first_tap_not_its_strongest() -> None:
    # A weaker first path at 100 ms and the strongest 30 ms after it: the envelope that
    # gates the residual must follow the first, or the echo of a far-end onset arrives
    # before the gate expects it (a bench room did this, peak 37 ms after its direct path).
    n = RATE * 3
    ref = _far_end(np.random.default_rng(3), n)
    first, strongest = RATE * 100 // 1000, RATE * 130 // 1000
    mic = np.zeros(n)
    mic[first:] += 0.06 * ref[: n - first]
    mic[strongest:] += 0.1 * ref[: n - strongest]
    path, _ = _detect(ref, mic.astype(np.int16))
    assert path.state == Path.ECHO
    assert path.lag is not None and path.onset_lag is not None
    assert abs(path.lag - strongest) <= 32
    assert abs(path.onset_lag - first) <= 32


@pytest.mark.parametrize("seed", range(6))
def test_an_echo_whose_strongest_tap_moves_between_two_is_found_as_soon_as_one(seed: int) -> None:
    # Two equal taps 14 ms apart: the correlation's peak jumps between them block by block.
    # Asked for one lag to 2 ms, the verdict waited for two blocks in a row at the same tap
    # (1.1-1.3 s into the reply for half these seeds), and a user who spoke meanwhile met
    # the strict gate of an unknown path; the earliest verdict is 0.79 s (the window full,
    # then two blocks).
    rng = np.random.default_rng(seed)
    n = RATE * 4
    ref = _far_end(rng, n)
    mic = rng.normal(0, 30, n)
    for ms in (100, 114):
        k = RATE * ms // 1000
        mic[k:] += 0.08 * ref[: n - k]
    path, found_at = _detect(ref, mic.astype(np.int16))
    assert found_at is not None and found_at <= 0.9
    assert path.onset_lag is not None and abs(path.onset_lag - RATE * 100 // 1000) <= 32


def test_the_reference_carries_the_silence_the_client_played_between_chunks() -> None:
    ref = Reference()
    chunk = np.full(320, 1000, np.int16)
    ref.sent(0, chunk, near=100)  # the client starts it at mic sample ~100
    ref.ack(160, near=260)  # in step with the model: nothing moves
    assert ref.read(100, 320).tolist() == chunk.tolist()
    # The TTS is late: the client runs dry at 420 and the next chunk comes at 900.
    assert not ref.read(420, 480).any()  # the silence the client really played
    ref.sent(320, chunk * 2, near=900)
    assert ref.read(900, 320).tolist() == (chunk * 2).tolist()
    assert ref.resumes == 1 and ref.reanchors == 0


def test_a_clear_ends_the_reference_where_the_client_stopped() -> None:
    ref = Reference()
    ref.sent(0, np.full(3200, 1000, np.int16), near=0)
    ref.ack(800, near=800)
    ref.ack(800, near=1600)  # the count stands still: it dropped the rest (a clear)
    assert not ref.read(1600, 1600).any()


def test_aec3_output_lags_its_input_by_the_latency_the_gate_assumes() -> None:
    from livekit.rtc import AudioFrame, AudioProcessingModule

    apm = AudioProcessingModule(echo_cancellation=True)
    x = np.zeros(8000, np.int16)
    x[4000] = 20000
    out = np.zeros_like(x)
    for i in range(0, x.size, 160):
        apm.process_reverse_stream(AudioFrame(bytes(320), RATE, 1, 160))
        frame = AudioFrame(x[i : i + 160].tobytes(), RATE, 1, 160)
        apm.process_stream(frame)
        out[i : i + 160] = np.frombuffer(frame.data, np.int16)
    assert int(np.argmax(np.abs(out))) - 4000 == AEC3_LATENCY
