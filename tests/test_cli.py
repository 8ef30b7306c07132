"""The ``voxmesh`` command line itself (no mesh needed): --version, --help listing exactly the
commands that exist, one-line errors with the right exit codes, and a --help that stays light.
"""

from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys
import tomllib
import types
from importlib import metadata
from pathlib import Path

import click
import pytest
from meshproc import free_port

from voxmesh.cli import COMMANDS, main, version

REPO = Path(__file__).resolve().parent.parent
EXISTING = ["up", "status", "say", "talk", "console", "models", "bench", "keys", "worker"]
HEAVY = ("numpy", "onnxruntime", "faster_whisper", "ctranslate2", "aiohttp", "zmq", "soxr")


def run_cli(
    tmp_path: Path, *args: str | Path, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMESH_")}
    return subprocess.run(
        [sys.executable, *flags, "-m", "voxmesh", *map(str, args)],
        env={**env, "XDG_RUNTIME_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def float_wav(path: Path) -> Path:
    """A 32-bit float WAV (format 3), which the wave module cannot read."""
    data = struct.pack("<4f", 0.0, 0.1, 0.2, 0.3)
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


# --- version and help --------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"voxmesh {version()}\n"
    assert version() == metadata.version("voxmesh")


def test_version_without_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert version() == pyproject["project"]["version"]


def test_help_lists_exactly_the_commands_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == EXISTING, out
    for missing in ("dev", "start"):  # LiveKit Agents' names, not ours
        assert f"\n  {missing} " not in out


def test_the_registry_names_real_commands() -> None:
    assert list(COMMANDS) == EXISTING
    for name, (target, one_line) in COMMANDS.items():
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command) and command.name == name
        assert one_line and "\n" not in one_line


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("up", ["--config", "--port", "--tts", "--livekit", "--allow-unauthenticated"]),
        ("status", ["--config", "--port", "--json", "--timeout"]),
        ("say", ["TEXT", "-o, --output", "--timeout", "--port"]),
        ("talk", ["IN.wav", "-o, --output", "--fast", "--events", "--timeout", "--port"]),
        ("bench", ["--quick", "--only", "--out", "--sessions", "--tts", "--list"]),
    ],
)
def test_command_help(capsys: pytest.CaptureFixture[str], command: str, flags: list[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: voxmesh {command} ")
    for flag in flags:
        assert flag in out, (flag, out)


def test_help_imports_nothing_heavy() -> None:
    probe = (
        "import sys\n"
        "from voxmesh.cli import main\n"
        "assert main(['--help']) == 0\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stderr.split())
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    assert {m for m in loaded if m.startswith("voxmesh")} <= {
        "voxmesh",
        "voxmesh.cli",
        "voxmesh.cli.common",
    }


def test_python_m_voxmesh_help_does_not_import_numpy(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--help", flags=("-X", "importtime"))
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "voxmesh.cli" in imported and "numpy" not in imported


# --- user mistakes: one line, the right exit code ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], 2, "missing command"),
        (["dev"], 2, "no such command 'dev'"),
        (["keys"], 2, "missing argument 'DIR'"),
        (["worker", "tts"], 2, "worker.connect is empty"),
        (["models", "list", "--port", "{free}"], 1, "no voxmesh is running on port"),
        (["models", "load"], 2, "missing argument 'VOICE'"),
        (["up", "--bogus"], 2, "--bogus"),
        (["up", "--tts", "festival"], 2, "'festival' is not one of 'mock', 'piper', 'espeak'"),
        (["up", "--port", "many"], 2, "'many' is not a valid integer"),
        (["up", "--config", "{tmp}/nope.toml"], 2, "nope.toml' not found"),
        (["status", "--config", "{tmp}/bad.toml"], 2, "unknown config key server.prot"),
        (["status", "--port", "{free}"], 1, "no voxmesh is running on port"),
        (["say"], 2, "missing argument 'TEXT'"),
        (["say", "hi"], 2, "missing option '-o'"),
        (["say", "  ", "-o", "{tmp}/x.wav"], 2, "TEXT is empty"),
        (["say", "hi", "-o", "/nonexistent-dir/x.wav"], 2, "no directory /nonexistent-dir"),
        (["say", "hi", "-o", "{tmp}"], 2, "it is a directory"),
        (
            ["talk", "{tmp}/float.wav", "-o", "{tmp}/x.wav"],
            2,
            "is 32-bit float WAV; only 16-bit PCM is supported (convert with: sox",
        ),
        (["talk", "{tmp}/missing.wav", "-o", "{tmp}/x.wav"], 2, "cannot read"),
        (["talk", "{tmp}/float.wav", "-o", "/nonexistent-dir/x.wav"], 2, "/nonexistent-dir"),
        (["talk", "{tmp}/float.wav", "-o", "{tmp}/x.wav", "--events", "/no/e.jsonl"], 2, "/no"),
        (["bench", "--sessions", "1,x"], 2, "expected numbers like 1,4,16"),
        (["bench", "--tts", "espeak"], 2, "'espeak' is not one of 'mock', 'piper'"),
    ],
)
def test_mistakes_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    for name in [k for k in os.environ if k.startswith("VOXMESH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    float_wav(tmp_path / "float.wav")
    (tmp_path / "bad.toml").write_text("[server]\nprot = 9000\n")
    args = [a.format(tmp=tmp_path, free=free_port()) for a in argv]

    assert main(args) == code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxmesh: error: "), captured.err
    assert message in lines[0], lines[0]
    assert captured.out == ""
    assert not (tmp_path / "x.wav").exists()


def test_an_unwritable_output_fails_before_anything_else(tmp_path: Path) -> None:
    """Checked while parsing: before looking for a mesh, let alone synthesising."""
    done = run_cli(tmp_path, "say", "hi", "-o", "/nonexistent-dir/x.wav", "--port", free_port())
    assert done.returncode == 2
    assert done.stderr.startswith("voxmesh: error: ") and "Traceback" not in done.stderr
    assert "/nonexistent-dir" in done.stderr and "no voxmesh is running" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dev",), "no such command 'dev'"),
        (
            ("talk", "{tmp}/float.wav", "-o", "{tmp}/out.wav"),
            "is 32-bit float WAV; only 16-bit PCM is supported (convert with: sox",
        ),
    ],
)
def test_python_m_voxmesh_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    float_wav(tmp_path / "float.wav")
    done = run_cli(tmp_path, *(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("voxmesh: error: ") and message in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_up_livekit_without_the_binary_is_one_line(tmp_path: Path) -> None:
    """Before anything starts: no ZMQ socket, no actor, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMESH_")}
    env |= {"XDG_RUNTIME_DIR": str(tmp_path), "VOXMESH_LIVEKIT_BINARY": str(tmp_path / "nope")}
    done = subprocess.run(
        [sys.executable, "-m", "voxmesh", "up", "--livekit", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxmesh: error: --livekit: "), done.stderr
    assert "livekit-server binary not found" in lines[0] and "make livekit" in lines[0]


# --- voxmesh console: no audio library, no PortAudio, no device --------------------------------


class FakePortAudioError(Exception):
    pass


def fake_sounddevice(devices: dict[str, str | None]) -> types.ModuleType:
    """A sounddevice module with these default devices (kind -> name, None: there is none)."""
    module = types.ModuleType("sounddevice")

    def query_devices(device: object = None, kind: str | None = None) -> dict[str, object]:
        name = devices.get(kind or "")
        if name is None:
            raise FakePortAudioError("Error querying device -1")
        return {"name": name, "index": 0, "default_samplerate": 48000.0}

    module.PortAudioError = FakePortAudioError  # type: ignore[attr-defined]
    module.query_devices = query_devices  # type: ignore[attr-defined]
    return module


def console_error(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["console", "--port", str(free_port())]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxmesh: error: "), captured.err
    assert captured.out == ""
    return lines[0]


def test_console_without_sounddevice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    assert "pip install 'voxmesh[console]'" in console_error(capsys)


def test_console_without_portaudio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    line = console_error(capsys)
    assert "PortAudio library not found" in line and "apt-get install libportaudio2" in line


@pytest.mark.parametrize(
    ("devices", "missing"),
    [
        ({"input": None, "output": None}, "no audio input device (microphone)"),
        ({"input": "mic", "output": None}, "no audio output device (speaker)"),
    ],
)
def test_console_without_an_audio_device(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    devices: dict[str, str | None],
    missing: str,
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(devices))
    line = console_error(capsys)
    assert missing in line and "voxmesh talk" in line


def test_console_on_this_machine_is_one_clear_line(tmp_path: Path) -> None:
    """The real thing, whatever this machine lacks (no mesh needed: audio is checked first)."""
    try:
        import sounddevice

        sounddevice.query_devices(kind="input")
        sounddevice.query_devices(kind="output")
    except ImportError:
        expected = "pip install 'voxmesh[console]'"
    except OSError:
        expected = "apt-get install libportaudio2"
    except Exception:  # sounddevice.PortAudioError: no such device
        expected = "no audio"
    else:
        pytest.skip("this machine has a microphone and a speaker")
    done = run_cli(tmp_path, "console", "--port", str(free_port()))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and expected in done.stderr, done.stderr
