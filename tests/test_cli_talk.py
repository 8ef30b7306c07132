"""``voxmesh talk`` and ``voxmesh say`` against a running mesh (Piper TTS, echo responder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr
from meshproc import MeshProc, free_port, mesh_up
from speechgen import pad_silence, piper_wav

from voxmesh.client import MicStream, read_wav, write_wav
from voxmesh.speech.asr import WhisperAsr
from voxmesh.speech.wer import word_error_rate

pytestmark = pytest.mark.timeout(180)

MAX_WER = 0.25
HELLO = "How far is the train station from here?"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("talk"), tts="piper") as running:
        yield running


@pytest.fixture(scope="module")
def whisper() -> WhisperAsr:
    return WhisperAsr(cpu_threads=1)


def said(whisper: WhisperAsr, path: Path) -> str:
    """What the 48 kHz mono 16-bit WAV at ``path`` says."""
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48000, 1, 2)
        assert w.getnframes() >= 48000 // 2, "less than half a second of audio"
    pcm, _ = read_wav(path)
    return whisper.transcribe(soxr.resample(pcm.astype(np.float32) / 32768.0, 48000, 16000))


def voxmesh(
    mesh: MeshProc, *args: str | Path, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return mesh.cli(*map(str, args), "--port", str(mesh.port), timeout_s=timeout_s)


def test_talk_answers_a_spoken_wav_with_a_spoken_reply(
    mesh: MeshProc, whisper: WhisperAsr, tmp_path: Path
) -> None:
    speech, rate = piper_wav(HELLO, 22050)  # not 16 kHz: the server resamples
    write_wav(tmp_path / "hello.wav", pad_silence(speech, 0.3, 0.3, rate), rate)
    events = tmp_path / "events.jsonl"

    done = voxmesh(
        mesh, "talk", tmp_path / "hello.wav", "-o", tmp_path / "reply.wav", "--events", events
    )

    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "heard:" in done.stdout, done.stdout
    reply = said(whisper, tmp_path / "reply.wav")
    assert word_error_rate(HELLO, reply) <= MAX_WER, f"the reply says {reply!r}"
    log = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [e["type"] for e in log]
    assert "client.mic_end" in kinds and "client.first_frame" in kinds
    assert kinds.index("transcript") < kinds.index("audio_start") < kinds.index("audio_end")
    assert [e["t"] for e in log] == sorted(e["t"] for e in log)
    finals = [e["text"] for e in log if e["type"] == "transcript" and e["final"]]
    assert len(finals) == 1 and word_error_rate(HELLO, finals[0]) <= MAX_WER, finals
    # one turn: its latency from the end of speech, and the first audio against the file's end
    turn = re.search(
        r"^turn 1: first reply audio (\d+) ms after the end of speech$", done.stdout, re.M
    )
    file_end = re.search(r"first reply audio (\d+) ms (after|before) the file's end", done.stdout)
    assert turn and file_end and "turn 2" not in done.stdout, done.stdout
    from_file_end = int(file_end[1]) * (1 if file_end[2] == "after" else -1)
    # the speech ends 0.3 s of padding (plus Piper's own trailing silence) before the file
    speech_to_file_end = int(turn[1]) - from_file_end
    assert 300 - 40 <= speech_to_file_end <= 300 + 300, done.stdout


def test_talk_fast_takes_a_stereo_wav(mesh: MeshProc, tmp_path: Path) -> None:
    speech, rate = piper_wav(HELLO)
    padded = pad_silence(speech, 0.3, 0.5, rate)
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.stack([padded, padded // 2], axis=1).astype("<i2").tobytes())

    done = voxmesh(mesh, "talk", tmp_path / "stereo.wav", "-o", tmp_path / "out.wav", "--fast")

    assert done.returncode == 0, done.stderr
    heard = [
        ln.removeprefix("heard: ") for ln in done.stdout.splitlines() if ln.startswith("heard:")
    ]
    assert len(heard) == 1 and word_error_rate(HELLO, heard[0]) <= MAX_WER, done.stdout
    assert read_wav(tmp_path / "out.wav")[0].size > 48000 // 2


def test_say_writes_the_spoken_text(mesh: MeshProc, whisper: WhisperAsr, tmp_path: Path) -> None:
    text = "Good morning, the meeting starts at nine."
    done = voxmesh(mesh, "say", text, "-o", tmp_path / "say.wav")
    assert done.returncode == 0, done.stderr
    assert "first audio after" in done.stdout, done.stdout
    spoken = said(whisper, tmp_path / "say.wav")
    assert word_error_rate(text, spoken) <= MAX_WER, f"the WAV says {spoken!r}"


def test_talk_marks_an_interrupted_reply(mesh: MeshProc, tmp_path: Path) -> None:
    """Two sentences, the second while the first reply is being spoken: that reply is marked
    interrupted, and its audio having started before the file ended is said as such."""
    first, rate = piper_wav(HELLO)
    second, _ = piper_wav("Sorry, I meant the bus station.")
    gap = np.zeros(int(1.2 * rate), np.int16)  # the reply has started, and is still speaking
    write_wav(
        tmp_path / "two.wav",
        pad_silence(np.concatenate([first, gap, second]), 0.3, 0.3, rate),
        rate,
    )

    done = voxmesh(mesh, "talk", tmp_path / "two.wav", "-o", tmp_path / "out.wav")

    assert done.returncode == 0, done.stderr
    replies = [ln for ln in done.stdout.splitlines() if ln.startswith("reply")]
    assert replies[0].startswith("reply (interrupted): "), done.stdout
    assert replies[-1].startswith("reply: ") and "bus" in replies[-1].lower(), done.stdout
    assert "before the file's end" in done.stdout and not re.search(r"-\d+ ms", done.stdout)


def test_talk_stops_at_the_first_error(tmp_path: Path) -> None:
    """The LLM endpoint down: the mesh says responder_failed at once, and so does talk (not
    after its whole --timeout)."""
    config = {"router": {"responder": "openai", "openai_url": f"http://127.0.0.1:{free_port()}/v1"}}
    speech, rate = piper_wav(HELLO)
    write_wav(tmp_path / "hello.wav", pad_silence(speech, 0.3, 0.3, rate), rate)
    (tmp_path / "mesh").mkdir()
    with mesh_up(tmp_path / "mesh", tts="mock", config=config) as down:
        t0 = time.monotonic()
        done = voxmesh(
            down,
            "talk",
            tmp_path / "hello.wav",
            "-o",
            tmp_path / "out.wav",
            "--fast",
            "--timeout",
            "60",
        )
        took = time.monotonic() - t0
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "responder_failed" in lines[0] and "Traceback" not in done.stderr
    assert took < 20, f"talk took {took:.1f} s"
    assert not (tmp_path / "out.wav").exists()


# --- errors (no mesh needed) ---------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "voxmesh", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["talk", "say"])
def test_no_running_mesh_is_a_clear_error(tmp_path: Path, command: str) -> None:
    write_wav(tmp_path / "in.wav", np.zeros(1600, np.int16), 16000)
    first = tmp_path / "in.wav" if command == "talk" else "hello"
    port = str(free_port())
    done = run_cli(tmp_path, command, first, "-o", tmp_path / "out.wav", "--port", port)
    assert done.returncode == 1
    assert f"no voxmesh is running on port {port}" in done.stderr, done.stderr
    assert not (tmp_path / "out.wav").exists()


def test_unusable_wav_files_are_clear_errors(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(bytes(1600))
    (tmp_path / "text.wav").write_text("not a wav file at all")
    cases = {
        "8bit.wav": "8-bit samples; only 16-bit PCM",
        "text.wav": "cannot read",
        "missing.wav": "cannot read",
    }
    for name, message in cases.items():
        done = run_cli(tmp_path, "talk", tmp_path / name, "-o", tmp_path / "out.wav")
        assert done.returncode == 2, (name, done.stderr)
        assert message in done.stderr and name in done.stderr, done.stderr


# --- the microphone behind voxmesh talk -----------------------------------------------------


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append((time.monotonic(), data))


async def test_mic_positions_count_the_silence_sent_between_utterances() -> None:
    sock = FakeSocket()
    mic = MicStream(sock, 16000, speed=4.0)
    async with mic:
        await mic.wait_sent(3200, timeout=5)  # silence while idle
        voice = np.arange(1, 801, dtype=np.int16)
        end = mic.queue(voice)
        await mic.wait_sent(end + 320, timeout=5)
    stream = np.frombuffer(b"".join(data for _, data in sock.sent), "<i2")
    start = end - voice.size
    assert start >= 3200 and not stream[:start].any()
    np.testing.assert_array_equal(stream[start:end], voice)
    assert not stream[end:].any()
    t_voice = next(t for t, d in sock.sent if np.frombuffer(d, "<i2").any())
    assert mic.sent_time(start) == pytest.approx(t_voice, abs=1e-3)
    gaps = np.diff([t for t, _ in sock.sent])
    assert 0.5 * 0.005 <= np.median(gaps) <= 2 * 0.005  # 20 ms packets at 4x real time
