"""Config precedence (defaults < file < env < flags) and the errors a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxmesh.cli import CliError, load_config
from voxmesh.cli.up import parse_up, up_config
from voxmesh.supervisor import config
from voxmesh.supervisor.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mesh.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_packaged_mesh_toml() -> None:
    cfg = config.load(environ={})
    assert cfg.server.port == 8080
    assert cfg.tts.engine == "piper"
    assert cfg.mesh.heartbeat_ms == 500
    assert cfg.tts.preload == ()


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 9001\nhost = "0.0.0.0"\n[tts]\nengine = "espeak"\n'
        "[vad]\nthreshold = 0.7\n",
    )
    env = {"VOXMESH_SERVER_PORT": "9002", "VOXMESH_TTS_ENGINE": "piper"}
    cfg = config.load(path, environ=env, overrides={"server": {"port": 9003}})
    assert cfg.server.port == 9003  # flag beats env, file and default
    assert cfg.tts.engine == "piper"  # env beats file
    assert cfg.server.host == "0.0.0.0"  # file beats default
    assert cfg.vad.threshold == 0.7
    assert cfg.mesh.liveness == 3  # untouched default

    assert config.load(path, environ=env).server.port == 9002
    assert config.load(path, environ={}).server.port == 9001


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
    assert cfg.mesh.run_dir == "/tmp/x"
    assert cfg.mesh.liveness == 5
    assert cfg.vad.threshold == 0.25
    assert cfg.tts.preload == ("joe", "amy")
    assert cfg.mesh.shutdown_deadline_s == 1.5


def test_env_bool_parsing() -> None:
    for text, want in [("1", True), ("yes", True), ("On", True), ("0", False), ("off", False)]:
        got = config.load(environ={"VOXMESH_SERVER_METRICS_AUTH": text}).server.metrics_auth
        assert got is want
    with pytest.raises(ConfigError, match="VOXMESH_SERVER_METRICS_AUTH"):
        config.load(environ={"VOXMESH_SERVER_METRICS_AUTH": "maybe"})


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
    assert cfg.vad.threshold == 1.0 and isinstance(cfg.vad.threshold, float)
    assert cfg.mesh.ready_timeout_s == 2.5  # durations in seconds accept fractions


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[server\nport=1"), environ={})


def test_cli_flags_override_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[server]\nport = 9001\n[tts]\nengine = "espeak"\n')
    monkeypatch.setenv("VOXMESH_SERVER_PORT", "9002")
    monkeypatch.setenv("VOXMESH_TTS_ENGINE", "piper")
    args = parse_up(["--config", str(path), "--port", "9003", "--tts", "mock"])
    cfg = load_config(args, tts={"engine": args.tts})
    assert cfg.server.port == 9003
    assert cfg.tts.engine == "mock"


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


# --- who may reach the server ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"]
)
def test_loopback_hosts_need_no_token(host: str) -> None:
    config.check_exposure(config.with_overrides(config.defaults(), server={"host": host}))


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.5", "example.com", "127.0.0.1x"])
def test_other_hosts_need_a_token_or_an_explicit_yes(host: str) -> None:
    cfg = config.with_overrides(config.defaults(), server={"host": host})
    with pytest.raises(ConfigError, match=r"server\.auth_token is empty"):
        config.check_exposure(cfg)
    for server in ({"auth_token": "s3cret"}, {"allow_unauthenticated": True}):
        config.check_exposure(config.with_overrides(cfg, server=server))


def test_metrics_auth_needs_a_token() -> None:
    cfg = config.with_overrides(config.defaults(), server={"metrics_auth": True})
    with pytest.raises(ConfigError, match="metrics_auth"):
        config.check_exposure(cfg)
    config.check_exposure(config.with_overrides(cfg, server={"auth_token": "s3cret"}))


def test_up_refuses_a_reachable_server_without_a_token(tmp_path: Path) -> None:
    """Refused before anything binds (0.0.0.0 is only configured here, never bound)."""
    path = write(tmp_path, '[server]\nhost = "0.0.0.0"\nport = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMESH_")}
    result = subprocess.run(
        [sys.executable, "-m", "voxmesh", "up", "--config", str(path), "--tts", "mock"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("voxmesh: error: server.host = '0.0.0.0'")
    assert "--allow-unauthenticated" in lines[0]


def test_allow_unauthenticated_flag_and_setting(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "0.0.0.0"\n')
    with pytest.raises(CliError) as refused:
        up_config(parse_up(["--config", str(path)]))
    assert refused.value.code == 2
    args = parse_up(["--config", str(path), "--allow-unauthenticated"])
    assert up_config(args).server.allow_unauthenticated is True
    allowed = write(tmp_path, '[server]\nhost = "0.0.0.0"\nallow_unauthenticated = true\n')
    up_config(parse_up(["--config", str(allowed)]))


def test_remote_only_without_listen_is_refused_at_start() -> None:
    from voxmesh.mesh.settings import RemoteSettings, Settings

    settings = Settings(remote=RemoteSettings(only=("asr",)))
    with pytest.raises(ConfigError, match=r"remote\.only leaves asr to workers.*--listen"):
        config.check_remote(settings)
    config.check_remote(Settings())  # nothing remote: nothing to check
