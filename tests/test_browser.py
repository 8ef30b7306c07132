"""The real page, served by ``voxmesh up``, in headless Chromium with a Piper WAV as its mic.

Both ways a browser talks: (a) a mesh without LiveKit (``POST /session`` answers 404, so the
page uses the WebSocket) and (b) ``voxmesh up --livekit``. In each the test clicks Start
(which opens the mic), and reads from the page that a final transcript and the spoken reply
arrived. Screenshots are kept under ``test-artifacts/``. Without Playwright or Chromium the
tests skip locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from browser import fake_mic_wav, launch, require_browser, screenshot
from meshproc import MeshProc, mesh_up, wait_for
from promtext import sample, scrape

from voxmesh.speech.wer import word_error_rate

SENTENCE = "Can you remind me to call my mother tomorrow?"
TESTID = "[data-testid={}]"
# Chromium + a whole mesh on 2 shared cores: more than the default 120 s, to be safe.
pytestmark = pytest.mark.timeout(180)


def sessions(mesh: MeshProc) -> int:
    found = sample(scrape(mesh.url), "voxmesh_transport_sessions")
    assert found is not None
    return int(found)


def talk_in_browser(mesh: MeshProc, tmp_path: Path, transport: str) -> dict[str, object]:
    """Open the page, click Start, wait for transcript + reply + heard audio; what it showed."""
    pw_api, exe = require_browser()
    wav = fake_mic_wav(tmp_path / "mic.wav", SENTENCE)

    async def main() -> dict[str, object]:
        async with pw_api.async_playwright() as pw:
            browser = await launch(pw, exe, wav)
            try:
                page = await browser.new_page(viewport={"width": 800, "height": 900})
                page.set_default_timeout(30_000)
                await page.goto(mesh.url)
                await page.click(TESTID.format("start"))
                await page.wait_for_function("window.voxmesh.state === 'listening'")
                shown = await page.text_content(TESTID.format("transport"))
                assert shown == transport, f"the page used {shown}, not {transport}"
                # The WAV plays as the mic: a final transcript, then the echoed reply.
                await page.wait_for_function("window.voxmesh.transcript !== ''")
                await page.wait_for_function("window.voxmesh.reply !== ''")
                await page.wait_for_function("window.voxmesh.latencyMs !== null")
                if transport == "livekit":  # the reply was audible on the agent's track
                    heard = "window.voxmesh.audioStats().then(s => s && s.energy > 0.01)"
                else:  # the page played (and acked) reply samples
                    heard = "window.voxmesh.played > 48000"
                await page.wait_for_function(heard, polling=100)
                seen = {
                    "transcript": await page.text_content(TESTID.format("transcript")),
                    "reply": await page.text_content(TESTID.format("reply")),
                    "latency": await page.text_content(TESTID.format("latency")),
                    "error": await page.text_content(TESTID.format("error")),
                }
                await screenshot(page, f"browser-{transport}.png")
                await page.click(TESTID.format("hangup"))
                await page.wait_for_function("window.voxmesh.state === 'disconnected'")
                return seen
            finally:
                await browser.close()

    seen = asyncio.run(main())
    assert word_error_rate(SENTENCE, str(seen["transcript"])) <= 0.25, seen
    assert word_error_rate(SENTENCE, str(seen["reply"])) <= 0.25, seen  # the echo responder
    assert seen["error"] == "", seen
    assert re.fullmatch(r"\d+ ms", str(seen["latency"])), seen
    wait_for(lambda: sessions(mesh) == 0, 10, "the session to end after Hang up")
    return seen


def test_page_over_websocket(tmp_path: Path) -> None:
    require_browser()  # before starting a mesh for nothing
    with mesh_up(tmp_path, tts="piper") as mesh:
        talk_in_browser(mesh, tmp_path, "websocket")


def test_page_over_livekit(tmp_path: Path) -> None:
    require_browser()
    with mesh_up(tmp_path, tts="piper", args=["--livekit"]) as mesh:
        talk_in_browser(mesh, tmp_path, "livekit")
