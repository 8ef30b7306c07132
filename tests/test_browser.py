"""The real page, served by ``voxmesh up``, in headless Chromium with a Piper WAV as its mic.

Both ways a browser talks: (a) a mesh without LiveKit (``POST /session`` answers 404, so the
page uses the WebSocket) and (b) ``voxmesh up --livekit``. In each the test picks a
microphone, clicks Start (which opens it), and reads from the page what a user sees: the
final transcript, the spoken reply, the bot's audio meter moving, the responder in use, the
turn's latency by stage, and a typed message shown once in Conversation. Over the WebSocket
it also interrupts a long reply (only the heard part is left, marked interrupted) and kills
the transport actor with SIGKILL: the page says why the connection went and reconnects by
itself. Screenshots are kept under ``test-artifacts/``. Without Playwright or Chromium the
tests skip locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from browser import fake_mic_wav, launch, require_browser, screenshot
from meshproc import MeshProc, mesh_up, wait_for
from promtext import sample, scrape

from voxmesh.speech.wer import word_error_rate

SENTENCE = "Can you remind me to call my mother tomorrow?"
TYPED = "Please book a table for two."
LONG = (
    "Once upon a time there was a lighthouse keeper who counted the ships every night, "
    "and every morning he wrote their names into a big blue book that nobody ever read."
)
TESTID = "[data-testid={}]"
# Chromium + a whole mesh on 2 shared cores: more than the default 120 s, to be safe.
pytestmark = pytest.mark.timeout(240)


def sessions(mesh: MeshProc) -> int:
    found = sample(scrape(mesh.url), "voxmesh_transport_sessions")
    assert found is not None
    return int(found)


async def text_of(page: Any, testid: str) -> str:
    return str(await page.text_content(TESTID.format(testid)))


async def history(page: Any, who: str) -> list[str]:
    return list(
        await page.eval_on_selector_all(
            f"{TESTID.format('history')} li.{who}", "els => els.map(e => e.textContent)"
        )
    )


async def pick_microphone(page: Any) -> str:
    """Choose the last microphone the picker lists (not the default); its label."""
    await page.wait_for_function(
        "document.querySelectorAll('[data-testid=mic-select] option').length > 1"
    )
    options = await page.eval_on_selector_all(
        f"{TESTID.format('mic-select')} option", "os => os.map(o => [o.value, o.textContent])"
    )
    value, label = options[-1]
    await page.select_option(TESTID.format("mic-select"), value)
    return str(label)


async def typed_once(page: Any) -> None:
    """Send a typed message: it shows once in Conversation (the server's transcript adds it)."""
    bots = len(await history(page, "bot"))
    await page.fill(TESTID.format("text-input"), TYPED)
    await page.click(TESTID.format("send-text"))
    await page.wait_for_function(
        f"document.querySelectorAll('[data-testid=history] li.bot').length > {bots}"
    )
    await page.wait_for_function("window.voxmesh.state === 'listening'")
    users = await history(page, "user")
    assert users.count(TYPED) == 1, f"the typed message shown {users.count(TYPED)} times: {users}"
    assert (await history(page, "bot"))[-1] == TYPED  # the echo responder


def check_turn(turns: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The last timed turn of ``kind``: every stage measured, and they add up."""
    turn: dict[str, Any] = next(t for t in reversed(turns) if t["kind"] == kind)
    stages = ["responder", "tts", "playback"] + (["asr"] if kind == "voice" else [])
    for stage in stages:
        assert isinstance(turn[stage], int) and turn[stage] >= 0, (stage, turn)
    parts = sum(turn[s] for s in ("asr", "responder", "tts", "playback") if turn[s] is not None)
    assert abs(parts - turn["total"]) <= 4, turn  # each part rounded on its own
    return turn


def talk_in_browser(mesh: MeshProc, tmp_path: Path, transport: str) -> dict[str, object]:
    """Open the page, click Start, wait for transcript + reply + heard audio; what it showed."""
    pw_api, exe = require_browser()
    wav = fake_mic_wav(tmp_path / "mic.wav", SENTENCE)

    async def main() -> dict[str, object]:
        async with pw_api.async_playwright() as pw:
            browser = await launch(pw, exe, wav)
            try:
                # Microphone permission granted already (as for a returning user), so the
                # picker lists the devices by name before Start.
                context = await browser.new_context(
                    viewport={"width": 800, "height": 1100}, permissions=["microphone"]
                )
                page = await context.new_page()
                page.set_default_timeout(30_000)
                await page.goto(mesh.url)
                chosen = await pick_microphone(page)
                await page.click(TESTID.format("start"))
                await page.wait_for_function("window.voxmesh.connection === 'connected'")
                await page.wait_for_function("window.voxmesh.state === 'listening'")
                shown = await text_of(page, "transport")
                assert shown == transport, f"the page used {shown}, not {transport}"
                assert (await page.evaluate("window.voxmesh.mic"))["label"] == chosen
                # The WAV plays as the mic: a final transcript, then the echoed reply.
                await page.wait_for_function("window.voxmesh.transcript !== ''")
                await page.wait_for_function("window.voxmesh.reply !== ''")
                await page.wait_for_function("window.voxmesh.latencyMs !== null")
                if transport == "livekit":  # the reply was audible on the agent's track
                    heard = "window.voxmesh.audioStats().then(s => s && s.energy > 0.01)"
                else:  # the page played (and acked) reply samples
                    heard = "window.voxmesh.played > 48000"
                await page.wait_for_function(heard, polling=100)
                await page.wait_for_function("window.voxmesh.botPeak > 0.01")  # the bot meter
                await page.wait_for_function("window.voxmesh.responder !== null")
                seen: dict[str, object] = {
                    "transcript": await text_of(page, "transcript"),
                    "reply": await text_of(page, "reply"),
                    "latency": await text_of(page, "latency"),
                    "error": await text_of(page, "error"),
                    "responder": await text_of(page, "responder"),
                    "connection": await text_of(page, "connection"),
                    "turn": check_turn(await page.evaluate("window.voxmesh.turns"), "voice"),
                }
                # The looped WAV would speak again: mute it for the typed part.
                await page.click(TESTID.format("mic"))
                await page.wait_for_function("window.voxmesh.state === 'listening'")
                await typed_once(page)
                seen["typed_turn"] = check_turn(await page.evaluate("window.voxmesh.turns"), "text")
                seen["rows"] = await page.eval_on_selector_all(
                    f"{TESTID.format('turns')} tr", "rs => rs.map(r => r.textContent)"
                )
                if transport == "websocket":
                    seen.update(await interrupt_long_reply(page))
                await screenshot(page, f"browser-{transport}.png")
                seen.update(await survive_transport_kill(page, mesh, chosen, transport))
                await page.click(TESTID.format("hangup"))
                await page.wait_for_function("window.voxmesh.state === 'disconnected'")
                seen["after_hangup"] = await text_of(page, "connection")
                return seen
            finally:
                await browser.close()

    seen = asyncio.run(main())
    assert word_error_rate(SENTENCE, str(seen["transcript"])) <= 0.25, seen
    assert word_error_rate(SENTENCE, str(seen["reply"])) <= 0.25, seen  # the echo responder
    assert seen["error"] == "", seen
    assert re.fullmatch(r"\d+ ms", str(seen["latency"])), seen
    assert "echo" in str(seen["responder"]), seen
    assert seen["connection"] == "connected", seen
    assert seen["after_hangup"] == "hung up", seen
    wait_for(lambda: sessions(mesh) == 0, 10, "the session to end after Hang up")
    return seen


async def interrupt_long_reply(page: Any) -> dict[str, object]:
    """Say a long text, Interrupt after ~1 s of it: the reply keeps only what was heard."""
    await page.fill(TESTID.format("text-input"), LONG)
    played = await page.evaluate("window.voxmesh.played")
    await page.click(TESTID.format("send-say"))
    await page.wait_for_function("window.voxmesh.state === 'speaking'")
    await page.wait_for_function(f"window.voxmesh.played > {played + 48000}", polling=50)
    await page.click(TESTID.format("interrupt"))
    cut = f"{TESTID.format('history')} li.bot[data-interrupted=true]"
    await page.wait_for_selector(cut)
    await page.wait_for_function(f"document.querySelector('{cut}').textContent.endsWith('...')")
    heard = str(await page.text_content(cut))
    assert heard.endswith("...") and LONG.startswith(heard[:-3]), heard
    assert 0 < len(heard) - 3 < len(LONG) * 0.8, f"more than was played: {heard!r}"
    panel = await page.get_attribute(TESTID.format("reply"), "data-interrupted")
    assert panel == "true" and await text_of(page, "reply") == heard
    # Shown as a user sees it: the CSS adds the mark.
    mark = await page.evaluate(
        f"getComputedStyle(document.querySelector('{cut}'), '::after').content"
    )
    assert "interrupted" in mark, mark
    return {"heard": heard}


async def survive_transport_kill(
    page: Any, mesh: MeshProc, mic: str, transport: str
) -> dict[str, object]:
    """kill -9 of the transport actor (a standby takes over): the page shows why, then
    reconnects by itself with the same microphone, and the new session answers."""
    old_session = await page.evaluate("window.voxmesh.session")
    pid = wait_for(lambda: mesh.actor_pids().get("transport"), 10.0, "the transport's pid")
    os.kill(pid, signal.SIGKILL)
    await page.wait_for_function("window.voxmesh.connection === 'reconnecting'", timeout=45_000)
    lost = {
        "lost_state": await text_of(page, "state"),
        "lost_connection": await text_of(page, "connection"),
        "lost_error": await text_of(page, "error"),
    }
    assert lost["lost_state"] == "reconnecting", lost
    assert "went away" in lost["lost_connection"] and "reconnecting in" in lost["lost_connection"]
    assert "went away" in lost["lost_error"], lost
    if transport == "websocket":
        assert "1006" in lost["lost_error"], lost
    await screenshot(page, f"browser-{transport}-reconnecting.png")
    await page.wait_for_function(
        "window.voxmesh.reconnects === 1 && window.voxmesh.connection === 'connected'",
        timeout=60_000,
    )
    assert await page.evaluate("window.voxmesh.session") != old_session
    assert (await page.evaluate("window.voxmesh.mic"))["label"] == mic  # the picked one again
    assert await text_of(page, "error") == ""
    assert await page.is_enabled(TESTID.format("send-text"))
    sys_lines = await history(page, "sys")
    assert any("connection lost" in s for s in sys_lines), sys_lines
    assert any("reconnected" in s for s in sys_lines), sys_lines
    # The conversation goes on (the mic stays muted as it was).
    assert await text_of(page, "mic") == "Unmute mic"
    await page.wait_for_function("window.voxmesh.state === 'listening'")
    bots = len(await history(page, "bot"))
    await page.fill(TESTID.format("text-input"), "Are you back?")
    await page.click(TESTID.format("send-text"))
    await page.wait_for_function(
        f"document.querySelectorAll('[data-testid=history] li.bot').length > {bots}"
    )
    assert (await history(page, "bot"))[-1] == "Are you back?"
    await screenshot(page, f"browser-{transport}-reconnected.png")
    return {**lost, "reconnected": await text_of(page, "connection")}


def test_page_over_websocket(tmp_path: Path) -> None:
    require_browser()  # before starting a mesh for nothing
    with mesh_up(tmp_path, tts="piper") as mesh:
        talk_in_browser(mesh, tmp_path, "websocket")


def test_page_over_livekit(tmp_path: Path) -> None:
    require_browser()
    with mesh_up(tmp_path, tts="piper", args=["--livekit"]) as mesh:
        talk_in_browser(mesh, tmp_path, "livekit")
