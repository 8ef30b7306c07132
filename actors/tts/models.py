"""The TTS model manager: which voices are resident, loading, warm-up and eviction.

Each resident model owns a single-thread executor: its synthesis calls run there one at a
time (a voice object is not assumed thread-safe; onnxruntime releases the GIL, so the
event loop keeps serving control messages meanwhile). Policy:

- the default voice and the preload list are loaded (and warmed up) at start and are
  *pinned*: never evicted automatically (an explicit UNLOAD still works);
- any other voice is loaded on first use or by MODEL_LOAD;
- a model unused for ``idle_ttl_s`` is evicted; when more than ``resident_max`` are
  resident the least recently used idle ones are evicted;
- an evicted model still in use is retired: callers holding it finish their chunk, then
  its executor shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .adapters import Engine, Voice

log = logging.getLogger("voxmesh.tts")

WARMUP_TEXT = "Hello."


@dataclass(eq=False)
class LoadedModel:
    name: str
    voice: Voice
    executor: ThreadPoolExecutor
    last_used: float
    users: int = 0
    retired: bool = False
    load_s: float = 0.0

    async def stream(self, text: str, *, first: bool) -> AsyncGenerator[np.ndarray, None]:
        """The voice's pieces for ``text``, each computed in this model's thread.

        Stepping the generator one piece per executor call lets the sessions sharing this
        voice interleave piece by piece. Use under ``contextlib.aclosing``: when the caller
        stops early the generator is closed in its own thread, after any running step.
        """
        loop = asyncio.get_running_loop()
        pieces: Iterator[np.ndarray] | None = None

        def step() -> np.ndarray | None:  # runs in the model's thread
            nonlocal pieces
            if pieces is None:
                pieces = iter(self.voice.synthesize(text, first=first))
            return next(pieces, None)

        try:
            while (piece := await loop.run_in_executor(self.executor, step)) is not None:
                yield piece
        finally:
            with contextlib.suppress(RuntimeError):  # executor already shut down
                self.executor.submit(_close, lambda: pieces)

    def shutdown_if_unused(self) -> None:
        if self.retired and self.users == 0:
            self.executor.shutdown(wait=False, cancel_futures=True)


def _close(get: Callable[[], Iterator[np.ndarray] | None]) -> None:
    """Close a voice's generator in its own thread, after any step still running there."""
    close = getattr(get(), "close", None)
    if close is not None:
        close()


def _warm_up(voice: Voice, text: str) -> None:
    for _ in voice.synthesize(text, first=True):
        pass


@dataclass
class ModelManager:
    engine: Engine
    preload: Iterable[str] = ()
    resident_max: int = 2
    idle_ttl_s: float = 600.0
    warmup_text: str = WARMUP_TEXT
    clock: Callable[[], float] = time.monotonic
    _resident: OrderedDict[str, LoadedModel] = field(default_factory=OrderedDict, init=False)
    _loading: dict[str, asyncio.Task[LoadedModel]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.preload = [p for p in dict.fromkeys(self.preload) if p]
        self.pinned = frozenset({self.default, *self.preload})

    @property
    def default(self) -> str:
        return self.engine.default_voice

    def resolve(self, name: str) -> str:
        return name or self.default

    def resident(self) -> list[str]:
        """Resident model names, least recently used first."""
        return list(self._resident)

    def available(self) -> list[str]:
        return sorted({*self.engine.voices(), *self.pinned, *self._resident})

    async def start(self) -> None:
        """Load and warm up the default voice and the preload list (before READY)."""
        for name in [self.default, *self.preload]:
            await self.load(name)

    async def load(self, name: str) -> LoadedModel:
        """The resident model ``name`` (loading and warming it up if needed)."""
        name = self.resolve(name)
        model = self._resident.get(name)
        if model is not None:
            self._resident.move_to_end(name)
            return model
        task = self._loading.get(name)
        if task is None:
            task = asyncio.ensure_future(self._load(name))
            self._loading[name] = task
            task.add_done_callback(lambda t: self._load_finished(name, t))
        return await asyncio.shield(task)

    def _load_finished(self, name: str, task: asyncio.Task[LoadedModel]) -> None:
        self._loading.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("tts model %s failed to load: %s", name, task.exception())

    async def _load(self, name: str) -> LoadedModel:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"tts-{name[:24]}")
        started = self.clock()
        try:
            voice = await loop.run_in_executor(executor, self.engine.load, name)
            await loop.run_in_executor(executor, _warm_up, voice, self.warmup_text)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        now = self.clock()
        model = LoadedModel(name, voice, executor, last_used=now, load_s=now - started)
        self._resident[name] = model
        log.info("tts model %s loaded in %.2f s", name, model.load_s)
        self._enforce_cap(keep=name)
        return model

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[LoadedModel]:
        """Hold ``name`` for one synthesis: it will not be shut down while held."""
        model = await self.load(name)
        model.users += 1
        model.last_used = self.clock()
        try:
            yield model
        finally:
            model.users -= 1
            model.last_used = self.clock()
            model.shutdown_if_unused()

    def unload(self, name: str) -> bool:
        """Evict ``name`` now (retired if in use); False if it was not resident."""
        model = self._resident.pop(self.resolve(name), None)
        if model is None:
            return False
        model.retired = True
        model.shutdown_if_unused()
        log.info("tts model %s unloaded", model.name)
        return True

    def evict_idle(self, now: float | None = None) -> list[str]:
        """Evict unpinned models idle for idle_ttl_s; returns their names."""
        now = self.clock() if now is None else now
        idle = [
            m.name
            for m in self._resident.values()
            if m.name not in self.pinned and m.users == 0 and now - m.last_used >= self.idle_ttl_s
        ]
        for name in idle:
            self.unload(name)
        return idle

    def _enforce_cap(self, keep: str) -> None:
        excess = len(self._resident) - max(self.resident_max, 1)
        for model in list(self._resident.values()):  # least recently used first
            if excess <= 0:
                return
            if model.name in self.pinned or model.name == keep or model.users:
                continue
            self.unload(model.name)
            excess -= 1
        if excess > 0:
            log.warning("tts: %d models resident over the cap (pinned or busy)", excess)

    def close(self) -> None:
        for task in self._loading.values():
            task.cancel()
        for name in list(self._resident):
            self.unload(name)
