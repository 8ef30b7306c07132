"""Headless Debian Chromium driven by Playwright, kept off the network (docs/browser.md).

    pw_api, exe = require_browser()           # skip locally / fail in CI when missing
    wav = fake_mic_wav(tmp_path / "mic.wav", "Hello there.")
    async with pw_api.async_playwright() as pw:
        browser = await launch(pw, exe, wav)  # the WAV, looped, is the microphone

No ``playwright install``: Playwright drives the system's ``chromium`` (``$VOXMESH_CHROMIUM``
overrides the path).
"""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from speechgen import pad_silence, piper_wav

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"  # git-ignored: screenshots for a human to look at
FAKE_MIC_RATE = 48_000

# Fake media (no permission prompt, the WAV as the mic), autoplay, and no network but
# loopback: every host name except localhost is unresolvable (ICE uses raw IPs).
CHROMIUM_FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def chromium_path() -> str | None:
    exe = os.environ.get("VOXMESH_CHROMIUM")
    if exe:
        return exe if os.access(exe, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> tuple[ModuleType, str]:
    """(playwright.async_api, chromium path); when either is missing: a failure in CI
    (``CI=true``), a skip with the reason otherwise."""
    missing = []
    try:
        import playwright.async_api as pw_api
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    exe = chromium_path()
    if exe is None:
        missing.append("chromium (apt-get install chromium, or set $VOXMESH_CHROMIUM)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if in_ci():
            pytest.fail(reason + " (CI=true: a missing browser is a failure, not a skip)")
        pytest.skip(reason)
    assert exe is not None
    return pw_api, exe


def fake_mic_wav(path: Path, text: str, *, before_s: float = 0.5, after_s: float = 6.0) -> Path:
    """Piper saying ``text`` with silence around it, as a 48 kHz mono WAV for Chromium (which
    loops it): the silence after is long enough for the reply to finish before it repeats."""
    pcm, rate = piper_wav(text, FAKE_MIC_RATE)
    audio = pad_silence(np.asarray(pcm), before_s, after_s, rate=rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())
    return path


async def launch(pw: Any, exe: str, mic_wav: Path | None = None) -> Any:
    flags = list(CHROMIUM_FLAGS)
    if mic_wav is not None:
        flags.append(f"--use-file-for-fake-audio-capture={mic_wav.resolve()}")
    return await pw.chromium.launch(executable_path=exe, args=flags)


async def screenshot(page: Any, name: str) -> Path:
    """Keep a full-page screenshot under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    return path
