"""``voxmesh console`` for real, through a real sound server with virtual devices.

The console's own path, nothing faked: sounddevice -> PortAudio (its ALSA host API) -> ALSA's
``pulse`` plugin (libasound2-plugins) -> a private PulseAudio daemon that this module starts
(``-n``: only the modules of its own config; unix socket in a temp dir, no network, no D-Bus,
no autospawn). Two null sinks are its devices: ``speaker`` (the default sink; its monitor is
recorded with ``parec``) and ``mic``, whose monitor is the default source, i.e. the console's
microphone: ``pacat`` into ``mic`` is someone speaking into it, in real time.

A spoken turn: the console prints what was heard and the reply, and the reply's audio comes out
of the speaker (Whisper hears the sentence in the recording; the responder is ``echo``). The
sound server going away mid-session, or unreachable from the start, is one line and exit 1.
``make dev`` installs PulseAudio (``pulseaudio``, which brings ``pulseaudio-utils`` and
``libasound2-plugins``); without it these tests fail and say so.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import soxr
from meshproc import MeshProc, free_port, mesh_up, wait_for
from speechgen import pad_silence, piper_wav

from voxmesh.client import write_wav
from voxmesh.speech.asr import WhisperAsr
from voxmesh.speech.wer import word_error_rate

pytestmark = pytest.mark.timeout(120)

HELLO = "How far is the train station from here?"
MAX_WER = 0.25
RATE = 48000  # both virtual devices, and the speaker recording
WAIT_S = 30.0  # for anything that should take a few seconds (2 busy cores: generous)
MAX_GAP_WINDOWS = 3  # 10 ms windows of dropouts tolerated in the reply (a busy 2-core box)
QUIET_RMS = 200  # int16 RMS of a 10 ms window below which the speaker counts as silent
PULSE_PLUGIN = "libasound_module_pcm_pulse.so"
RAW_FORMAT = ["--format=s16le", f"--rate={RATE}", "--channels=1", "--latency-msec=20"]

# ALSA's default PCM and mixer are the sound server (a user's ~/.asoundrc can say the same;
# Debian's libasound2-plugins also does it by itself whenever a PulseAudio server is running).
ASOUNDRC = "pcm.!default { type pulse }\nctl.!default { type pulse }\n"


def need_pulseaudio() -> None:
    """Fail (not skip) when this machine lacks what the tests need, saying what installs it."""
    missing = [cmd for cmd in ("pulseaudio", "pactl", "pacat", "parec") if not shutil.which(cmd)]
    plugin_dirs = ["/usr/lib/*/alsa-lib", "/usr/lib*/alsa-lib", "/usr/local/lib/alsa-lib"]
    if not any(glob.glob(f"{d}/{PULSE_PLUGIN}") for d in plugin_dirs):
        missing.append(f"ALSA's pulse plugin ({PULSE_PLUGIN})")
    if missing:
        pytest.fail(
            f"voxmesh console's audio test needs PulseAudio: missing {', '.join(missing)}; "
            "run `make dev` (or: apt-get install pulseaudio pulseaudio-utils libasound2-plugins)"
        )


@dataclass
class Pulse:
    """A private sound server: ``env`` is what a client (PortAudio, pacat, parec) needs."""

    dir: Path
    env: dict[str, str]
    log: Path

    def tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=WAIT_S, check=False
        )


def pulse_env(base: Path, on: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``on`` as a client of the server whose socket is ``base/native`` (running or not)."""
    (base / "config" / "alsa").mkdir(parents=True, exist_ok=True)
    (base / "config" / "alsa" / "asoundrc").write_text(ASOUNDRC)
    (base / "client.conf").write_text("autospawn = no\n")  # never start a server of its own
    env = {k: v for k, v in on.items() if not k.startswith(("PULSE_", "ALSA_"))}
    return {
        **env,
        "PULSE_SERVER": f"unix:{base / 'native'}",
        "PULSE_CLIENTCONFIG": str(base / "client.conf"),
        "XDG_CONFIG_HOME": str(base / "config"),  # alsa/asoundrc; pulse/cookie (made there)
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={base / 'no-dbus'}",  # not the desktop's bus
    }


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A temp dir whose socket path fits a unix socket (pytest's tmp_path may not)."""
    path = Path(tempfile.mkdtemp(prefix="vx-pa-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def spawn(
    args: list[str],
    env: Mapping[str, str],
    stdout: int | IO[Any],
    stderr: int | IO[Any],
    cwd: Path | None = None,
) -> subprocess.Popen[str]:
    """A process in a group of its own, so that ``stop`` ends it and whatever it started."""
    return subprocess.Popen(
        args, env=env, stdout=stdout, stderr=stderr, cwd=cwd, start_new_session=True, text=True
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # the group's stragglers, if any
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def pulseaudio() -> Iterator[tuple[Pulse, subprocess.Popen[str]]]:
    """The daemon with its two virtual devices, up and answering; stopped after."""
    need_pulseaudio()
    with short_dir() as base:
        env = pulse_env(base)
        (base / "server.pa").write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={base}/native\n"
            f"load-module module-null-sink sink_name=speaker rate={RATE} channels=1\n"
            f"load-module module-null-sink sink_name=mic rate={RATE} channels=1\n"
            "set-default-sink speaker\n"
            "set-default-source mic.monitor\n"
        )
        server_env = {
            **env,
            "PULSE_RUNTIME_PATH": str(base / "runtime"),
            "PULSE_STATE_PATH": str(base / "state"),
        }
        pulse = Pulse(base, env, base / "pulseaudio.log")
        # as root it only warns ("not intended to be run as root"); -n: no system default.pa
        args = ["pulseaudio", "-n", "-F", str(base / "server.pa"), "--daemonize=no"]
        args += ["--exit-idle-time=-1", "--use-pid-file=no", "--system=no"]
        args += ["--realtime=no", "--high-priority=no", "--log-target=stderr"]
        with pulse.log.open("w") as log:
            daemon = spawn(args, server_env, stdout=log, stderr=subprocess.STDOUT)
        try:

            def answers() -> bool:
                if daemon.poll() is not None:
                    pytest.fail(f"pulseaudio exited {daemon.returncode}:\n{pulse.log.read_text()}")
                return pulse.tool("pactl", "info").returncode == 0

            wait_for(answers, WAIT_S, "pulseaudio to answer", interval_s=0.1)
            yield pulse, daemon
        finally:
            stop(daemon)


class Lines:
    """A process's stdout, line by line as it comes (a reader thread), to wait on."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait(
        self, found: Callable[[list[str]], bool], what: str, timeout_s: float = WAIT_S
    ) -> None:
        try:
            wait_for(lambda: found(list(self.lines)), timeout_s, what)
        except Exception as exc:
            raise AssertionError(f"{exc}; the console printed:\n{self.text()}") from None

    def join(self) -> None:
        self._thread.join(WAIT_S)


def after(lines: list[str], first: str, then: str) -> bool:
    """A line ``then`` after a line ``first``."""
    return first in lines and then in lines[lines.index(first) + 1 :]


@contextlib.contextmanager
def console(
    mesh: MeshProc, pulse: Pulse, stderr_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """``voxmesh console`` on the mesh, its audio through ``pulse``; Ctrl-C'd after if need be."""
    env = {**pulse_env(pulse.dir, mesh.env), "PYTHONUNBUFFERED": "1"}
    with stderr_path.open("w") as err:
        proc = spawn(
            [sys.executable, "-m", "voxmesh", "console", "--port", str(mesh.port)],
            env,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=mesh.tmp_path,
        )
    lines = Lines(proc)
    try:
        yield proc, lines
    finally:
        stop(proc, signal.SIGINT)
        lines.join()
        assert proc.stdout is not None
        proc.stdout.close()


def windows_rms(pcm: np.ndarray, win: int = RATE // 100) -> np.ndarray:
    n = pcm.size // win
    rms: np.ndarray = np.sqrt((pcm[: n * win].astype(np.float64).reshape(n, win) ** 2).mean(1))
    return rms


def recorded(path: Path) -> np.ndarray:
    data = path.read_bytes()
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2")


def played_out(path: Path, quiet_after_s: float = 0.6) -> bool:
    """The recording holds sound, then ``quiet_after_s`` of silence: a reply, played to its end."""
    rms = windows_rms(recorded(path))
    loud = np.flatnonzero(rms >= QUIET_RMS)
    return loud.size > 0 and rms.size - 1 - int(loud[-1]) >= quiet_after_s * 100


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    need_pulseaudio()  # before a mesh is started for nothing
    with mesh_up(tmp_path_factory.mktemp("console-audio"), tts="piper") as running:
        yield running


def test_console_speaks_a_turn_through_the_sound_server(mesh: MeshProc, tmp_path: Path) -> None:
    """Speech into the virtual mic: the console prints it and the reply, and the reply comes
    out of the virtual speaker; Ctrl-C ends it with exit 0."""
    speech, rate = piper_wav(HELLO, RATE)
    write_wav(tmp_path / "hello.wav", pad_silence(speech, 0.3, 0.3, rate), rate)
    speaker_raw = tmp_path / "speaker.raw"
    with pulseaudio() as (pulse, _daemon), speaker_raw.open("wb") as raw:
        parec = spawn(
            ["parec", "-d", "speaker.monitor", "--raw", *RAW_FORMAT],
            pulse.env,
            stdout=raw,
            stderr=subprocess.DEVNULL,
        )
        try:
            with console(mesh, pulse, tmp_path / "console.err") as (proc, out):
                out.wait(lambda ls: "[listening]" in ls, "the console to listen")
                assert re.match(
                    r"voxmesh console: mic 'default' at \d+ Hz, speaker 'default'", out.lines[0]
                ), out.text()
                # someone says HELLO into the mic (pacat plays it in real time, then drains)
                spoken = pulse.tool(
                    "pacat", "-d", "mic", "--file-format=wav", str(tmp_path / "hello.wav")
                )
                assert spoken.returncode == 0, spoken.stderr
                out.wait(
                    lambda ls: after(ls, "[speaking]", "[listening]"), "the reply to be spoken"
                )
                wait_for(lambda: played_out(speaker_raw), WAIT_S, "the reply to play out")
                stop(proc, signal.SIGINT)
                out.join()
                printed = out.text()
                errors = (tmp_path / "console.err").read_text()
                assert proc.returncode == 0 and out.lines[-1] == "bye", printed + errors
                assert "Traceback" not in errors, errors
        finally:
            stop(parec)
    heard = [ln.removeprefix("you: ") for ln in out.lines if ln.startswith("you: ")]
    assert len(heard) == 1 and word_error_rate(HELLO, heard[0]) <= MAX_WER, printed
    replies = [ln.removeprefix("bot: ") for ln in out.lines if ln.startswith("bot: ")]
    assert len(replies) == 1 and word_error_rate(HELLO, replies[0]) <= MAX_WER, printed
    assert re.search(r"latency: first reply audio \d+ ms after the end of your speech", printed)
    # what came out of the speaker is the reply, spoken (echo: the same sentence)
    pcm = recorded(speaker_raw)
    rms = windows_rms(pcm)
    loud = np.flatnonzero(rms >= QUIET_RMS)
    assert loud.size >= 100, "less than a second of reply audio"
    # played without dropouts: an underrun is digital silence (the callback's zeros) mid-reply
    gaps = int((rms[loud[0] : loud[-1]] == 0).sum())
    assert gaps <= MAX_GAP_WINDOWS, f"{gaps * 10} ms of dropouts in the reply"
    said = WhisperAsr(cpu_threads=1).transcribe(
        soxr.resample(pcm.astype(np.float32) / 32768.0, RATE, 16000)
    )
    assert word_error_rate(HELLO, said) <= MAX_WER, f"the speaker said {said!r}"


def test_console_stops_when_the_sound_server_goes_away(mesh: MeshProc, tmp_path: Path) -> None:
    with (
        pulseaudio() as (pulse, daemon),
        console(mesh, pulse, tmp_path / "console.err") as (proc, out),
    ):
        out.wait(lambda ls: "[listening]" in ls, "the console to listen")
        stop(daemon)
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the console still runs {WAIT_S:g} s after the sound server went away:\n"
                + out.text()
            ) from None
        out.join()
    errors = (tmp_path / "console.err").read_text()
    assert proc.returncode == 1, out.text() + errors
    ours = [ln for ln in errors.splitlines() if ln.startswith("voxmesh: ")]
    assert ours == [
        "voxmesh: error: the microphone or the speaker stopped (the audio device or the sound "
        "server went away)"
    ], errors
    assert "Traceback" not in errors and "bye" not in out.lines, out.text() + errors


def test_console_without_a_reachable_sound_server_is_one_clear_line(tmp_path: Path) -> None:
    """ALSA's default is the sound server, and none answers: no device (audio is checked
    before the mesh, so none is needed)."""
    need_pulseaudio()
    with short_dir() as base:
        env = {**pulse_env(base), "XDG_RUNTIME_DIR": str(tmp_path)}  # no mesh state here
        done = subprocess.run(
            [sys.executable, "-m", "voxmesh", "console", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert not (base / "native").exists()  # nothing started a server (autospawn = no)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
    assert len(lines) == 1 and "no audio input device (microphone)" in lines[0], done.stderr
