"""The typed settings: one definition per setting, the shipped mesh.toml rendered from it,
and a bad value refused by ``voxmesh up`` at once, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import typing
from importlib import resources

import pytest

from voxmesh.actors.tts.adapters import ENGINES
from voxmesh.mesh.settings import Settings, SettingsError, TtsSettings, render_toml, to_dict
from voxmesh.mesh.spec import ActorSpec, MeshPlace


def test_shipped_mesh_toml_is_the_rendered_defaults() -> None:
    shipped = resources.files("voxmesh").joinpath("mesh.toml").read_text(encoding="utf-8")
    assert shipped == render_toml(), "run: python -m voxmesh.mesh.settings > mesh.toml"
    assert tomllib.loads(shipped) == to_dict(Settings())


def test_every_setting_has_a_doc() -> None:
    text = render_toml()
    for section, values in to_dict(Settings()).items():
        assert f"\n[{section}]\n" in text
        for key in values:
            line = next(ln for ln in text.splitlines() if ln.startswith(f"{key} = "))
            before = text.splitlines()[text.splitlines().index(line) - 1]
            assert before.startswith("# ") and len(before) > 4, key


def test_engine_choices_are_the_registered_adapters() -> None:
    hints = typing.get_type_hints(TtsSettings)
    assert set(typing.get_args(hints["engine"])) == set(ENGINES)


def test_replace_validates() -> None:
    s = Settings().replace(tts={"engine": "mock"}, server={"port": 9000})
    assert (s.tts.engine, s.server.port, Settings().tts.engine) == ("mock", 9000, "piper")
    with pytest.raises(SettingsError, match=r"tts\.engine must be one of mock, piper"):
        Settings().replace(tts={"engine": "festival"})
    with pytest.raises(SettingsError, match=r"mesh\.standby\[1\] must be a string"):
        Settings().replace(mesh={"standby": ["router", 3]})


def test_spec_round_trips_with_only_its_sections() -> None:
    place = MeshPlace("ipc:///r/router.sock", "ipc:///r/sup.sock", "seg", 0.25, 4, "k", 1.5)
    spec = ActorSpec("tts", "tts0", place, settings={"tts": {"engine": "mock"}})
    again = ActorSpec.from_json(spec.to_json())
    assert again == spec and again.place.hold_s == 1.5
    tts = again.section(TtsSettings)
    assert tts.engine == "mock" and tts.resident_max == TtsSettings().resident_max


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VOXMESH_TTS_ENGINE": "festival"}, "tts.engine must be one of mock, piper, espeak"),
        ({"VOXMESH_TTS_DEVICES": "gpu0"}, 'tts.devices must be "auto", "cpu"'),
        ({"VOXMESH_VAD_THRESHOLD": "1.5"}, "vad.threshold must be between 0 and 1"),
        ({"VOXMESH_LOG_LEVEL": "LOUD"}, "log.level must be one of DEBUG, INFO"),
    ],
)
def test_up_refuses_a_bad_value_at_once(env: dict[str, str], message: str) -> None:
    """Before anything starts: one line, exit 2, no traceback, no actor restarts."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOXMESH_")}
    result = subprocess.run(
        [sys.executable, "-m", "voxmesh", "up", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **env},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0] and "env" in lines[0], lines[0]
