"""Config precedence (defaults < file < env < flags) and the errors a user sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from voxmesh.cli import build_parser, load_config
from voxmesh.supervisor import config
from voxmesh.supervisor.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mesh.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_packaged_mesh_toml() -> None:
    cfg = config.load(environ={})
    assert cfg["server"]["port"] == 8080
    assert cfg["tts"]["engine"] == "piper"
    assert cfg["mesh"]["heartbeat_ms"] == 500
    assert cfg["tts"]["preload"] == []


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 9001\nhost = "0.0.0.0"\n[tts]\nengine = "espeak"\n'
        "[vad]\nthreshold = 0.7\n",
    )
    env = {"VOXMESH_SERVER_PORT": "9002", "VOXMESH_TTS_ENGINE": "piper"}
    cfg = config.load(path, environ=env, overrides={"server": {"port": 9003}})
    assert cfg["server"]["port"] == 9003  # flag beats env, file and default
    assert cfg["tts"]["engine"] == "piper"  # env beats file
    assert cfg["server"]["host"] == "0.0.0.0"  # file beats default
    assert cfg["vad"]["threshold"] == 0.7
    assert cfg["mesh"]["liveness"] == 3  # untouched default

    assert config.load(path, environ=env)["server"]["port"] == 9002
    assert config.load(path, environ={})["server"]["port"] == 9001


def test_env_values_are_parsed_by_the_default_type() -> None:
    env = {
        "VOXMESH_MESH_RUN_DIR": "/tmp/x",
        "VOXMESH_MESH_LIVENESS": "5",
        "VOXMESH_VAD_THRESHOLD": "0.25",
        "VOXMESH_TTS_PRELOAD": "joe, amy ,",
        "VOXMESH_MESH_SHUTDOWN_DEADLINE_S": "1.5",
        "VOXMESH_LIVEKIT_SERVER": "/not/a/config/key",  # other tools share the prefix
    }
    cfg = config.load(environ=env)
    assert cfg["mesh"]["run_dir"] == "/tmp/x"
    assert cfg["mesh"]["liveness"] == 5
    assert cfg["vad"]["threshold"] == 0.25
    assert cfg["tts"]["preload"] == ["joe", "amy"]
    assert cfg["mesh"]["shutdown_deadline_s"] == 1.5


def test_env_bool_parsing() -> None:
    schema = {"x": {"flag": False}}
    for text, want in [("1", True), ("yes", True), ("On", True), ("0", False), ("off", False)]:
        assert config.from_env(schema, {"VOXMESH_X_FLAG": text}) == {"x": {"flag": want}}
    with pytest.raises(ConfigError, match="VOXMESH_X_FLAG"):
        config.from_env(schema, {"VOXMESH_X_FLAG": "maybe"})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="VOXMESH_SERVER_PORT='eighty'"):
        config.load(environ={"VOXMESH_SERVER_PORT": "eighty"})


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 9000\n")
    with pytest.raises(ConfigError, match=r"unknown config key server\.prot") as err:
        config.load(path, environ={})
    assert str(path) in str(err.value)


def test_unknown_section_in_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config section \[sever\]"):
        config.load(write(tmp_path, "[sever]\nport = 1\n"), environ={})


@pytest.mark.parametrize(
    "line",
    ['port = "8080"', "port = 80.5", "port = true", "host = 1", "max_message_bytes = [1]"],
)
def test_wrong_type_in_file_is_an_error(tmp_path: Path, line: str) -> None:
    key = line.split(" ")[0]
    with pytest.raises(ConfigError, match=rf"server\.{key} must be"):
        config.load(write(tmp_path, f"[server]\n{line}\n"), environ={})


def test_numbers_where_numbers_fit(tmp_path: Path) -> None:
    path = write(tmp_path, "[vad]\nthreshold = 1\n[mesh]\nready_timeout_s = 2.5\n")
    cfg = config.load(path, environ={})
    assert cfg["vad"]["threshold"] == 1.0 and isinstance(cfg["vad"]["threshold"], float)
    assert cfg["mesh"]["ready_timeout_s"] == 2.5  # durations in seconds accept fractions


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[server\nport=1"), environ={})


def test_cli_flags_override_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[server]\nport = 9001\n[tts]\nengine = "espeak"\n')
    monkeypatch.setenv("VOXMESH_SERVER_PORT", "9002")
    monkeypatch.setenv("VOXMESH_TTS_ENGINE", "piper")
    args = build_parser("up").parse_args(
        ["up", "--config", str(path), "--port", "9003", "--tts", "mock"]
    )
    cfg = load_config(args, tts={"engine": args.tts})
    assert cfg["server"]["port"] == 9003
    assert cfg["tts"]["engine"] == "mock"


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 9000\n")
    result = subprocess.run(
        [sys.executable, "-m", "voxmesh", "up", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown config key server.prot" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VOXMESH_SERVER_PORT": "70000"}, "server.port must be between 0 and 65535"),
        ({"VOXMESH_MESH_LIVENESS": "0"}, "mesh.liveness must be at least 1"),
        ({"VOXMESH_MESH_HEARTBEAT_MS": "-5"}, "mesh.heartbeat_ms must be at least 1"),
    ],
)
def test_values_out_of_range_are_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=env)
