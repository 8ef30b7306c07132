"""Responders: what the bot says back. ``echo`` (default) or an OpenAI-compatible endpoint.

A responder streams text deltas; the router cuts them into speakable chunks as they come,
so the first clause can be synthesized while the rest is still being generated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp

from voxmesh.mesh.settings import RouterSettings


class Responder(Protocol):
    name: str

    def reply(self, history: list[dict[str, str]], text: str) -> AsyncIterator[str]:
        """Text deltas answering ``text`` after ``history`` (OpenAI-style role/content maps)."""
        ...

    async def aclose(self) -> None: ...


class EchoResponder:
    """Repeats what it heard: the test- and bench-friendly default."""

    name = "echo"

    async def reply(self, history: list[dict[str, str]], text: str) -> AsyncIterator[str]:
        yield text

    async def aclose(self) -> None:
        pass


class OpenAIResponder:
    """Streams chat completions from any OpenAI-compatible endpoint."""

    name = "openai"

    def __init__(self, url: str, model: str, api_key: str = "", system_prompt: str = "") -> None:
        if not url:
            raise ValueError("router.openai_url must be set for the openai responder")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.system_prompt = system_prompt
        self._http: aiohttp.ClientSession | None = None

    async def reply(self, history: list[dict[str, str]], text: str) -> AsyncIterator[str]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [*history, {"role": "user", "content": text}]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with self._http.post(self.url, json=body, headers=headers) as resp:
            if resp.status != 200:
                detail = (await resp.text())[:200]
                raise RuntimeError(f"responder HTTP {resp.status}: {detail}")
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                delta = _delta_text(data)
                if delta:
                    yield delta

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _delta_text(data: str) -> str:
    try:
        choices = json.loads(data).get("choices") or []
        return str((choices[0].get("delta") or {}).get("content") or "")
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def make_responder(settings: RouterSettings) -> Responder:
    if settings.responder == "openai":
        return OpenAIResponder(
            settings.openai_url,
            settings.openai_model,
            settings.openai_api_key,
            settings.system_prompt,
        )
    return EchoResponder()
