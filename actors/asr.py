"""The ASR actor: faster-whisper (tiny.en) over each session's mic audio, on request.

It keeps the last ``KEEP_S`` of every session's mic stream and transcribes the span the
router asks for. Finals go before partials, and only the newest request per session and
kind is kept: a partial that is overtaken is worthless, and the CPU is shared.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import zmq

from voxmesh.mesh.actor import Actor
from voxmesh.mesh.protocol import AsrRequest, Message, SessionClose, SessionOpen, Transcript
from voxmesh.mesh.ring import MIC_ASR, MIC_RATE, RingSegment
from voxmesh.mesh.settings import AsrSettings
from voxmesh.mesh.sockets import log
from voxmesh.mesh.spec import ActorSpec, MeshPlace
from voxmesh.speech.asr import WhisperAsr

from .micreader import Idle, MicSession, check_slot

KEEP_S = 30


class MicBuffer:
    """The last ``keep`` samples of one session's mic stream at absolute sample positions
    (gaps = silence), in a fixed array: sample ``i`` lives at ``i % keep``, so an append
    costs its own samples, never a copy of the buffer."""

    def __init__(self, keep: int = KEEP_S * MIC_RATE) -> None:
        self.keep = keep
        self.end = 0  # absolute index of the next sample
        self._ring = np.zeros(keep, np.int16)

    @property
    def start(self) -> int:
        """Absolute index of the oldest sample kept."""
        return max(0, self.end - self.keep)

    def append(self, at: int, pcm: np.ndarray) -> None:
        if at < self.end:  # already have the start of it
            pcm = pcm[self.end - at :]
            at = self.end
        if at > self.end:  # frames lost to an overrun: keep positions right
            gap = min(at - self.end, self.keep)
            self._put(at - gap, np.zeros(gap, np.int16))
        self._put(at, pcm)
        self.end = at + pcm.size

    def _put(self, at: int, pcm: np.ndarray) -> None:
        if pcm.size > self.keep:  # only its last ``keep`` samples survive
            at, pcm = at + pcm.size - self.keep, pcm[-self.keep :]
        lo = at % self.keep
        first = min(pcm.size, self.keep - lo)
        self._ring[lo : lo + first] = pcm[:first]
        self._ring[: pcm.size - first] = pcm[first:]

    def span(self, start: int, end: int) -> np.ndarray:
        """A copy of samples [start, end) that are still kept (the buffer moves on)."""
        lo, hi = max(start, self.start), min(end, self.end)
        if hi <= lo:
            return np.zeros(0, np.int16)
        at = lo % self.keep
        first = min(hi - lo, self.keep - at)
        return np.concatenate([self._ring[at : at + first], self._ring[: hi - lo - first]])


class AsrActor(Actor):
    kind = "asr"

    def __init__(
        self,
        name: str,
        place: MeshPlace,
        settings: AsrSettings | None = None,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        super().__init__(name, place, context=context)
        self.settings = settings or AsrSettings()
        self.segment_name = place.segment
        self.model_path = self.settings.model or None
        self.threads = self.settings.threads
        self.window_pad_s = self.settings.window_pad_s
        self.asr: WhisperAsr | None = None
        self.segment: RingSegment | None = None
        self.sessions: dict[str, tuple[MicSession, MicBuffer]] = {}
        self.idle = Idle()
        self.pending: dict[tuple[bool, str], AsrRequest] = {}  # (final, session) -> newest
        self._wake = asyncio.Event()
        self.busy = False

    async def prepare(self) -> None:
        log.info("%s: loading Whisper tiny.en", self.name)
        self.asr = await asyncio.to_thread(
            WhisperAsr, self.model_path, cpu_threads=self.threads, pad_s=self.window_pad_s
        )
        await asyncio.to_thread(self.asr.warmup)

    async def on_start(self) -> None:
        self.segment = RingSegment.attach(self.segment_name)
        self.idle.bell = self.segment.doorbell()
        self.spawn(self._read_loop())
        self.spawn(self._work_loop())

    async def on_stop(self) -> None:
        self.sessions.clear()
        if self.segment is not None:
            self.segment.close()

    def info(self) -> dict[str, Any]:
        return {
            "sessions": len(self.sessions),
            "queued": len(self.pending),
            "busy": self.busy,
            # windows it remembers: the router asks it ahead of a pause (vad.quiet_ms)
            "remembers": self.asr.memo_size if self.asr is not None else 0,
            "remembered": self.asr.remembered if self.asr is not None else 0,
        }

    def handle(self, msg: Message) -> None:
        if isinstance(msg, AsrRequest):
            if msg.session not in self.sessions or msg.end <= msg.start:
                self.counters.bump("bad_request")
                return
            self.pending[(msg.final, msg.session)] = msg
            self._wake.set()
        elif isinstance(msg, SessionOpen):
            assert self.segment is not None
            if not check_slot(self.segment, msg.slot):
                self.counters.bump("bad_slot")
                return
            known = self.sessions.get(msg.session)
            if known is not None and known[0].generation == msg.generation:
                return  # announced again (the router restarted): keep reading where we are
            # from the oldest frame: a final transcript asked again after a restart spans audio
            # from before it
            mic = MicSession.open(
                self.segment, msg.session, msg.slot, msg.generation, from_start=True
            )
            self.sessions[msg.session] = (mic, MicBuffer())
            self.idle.opened()
        elif isinstance(msg, SessionClose):
            self.sessions.pop(msg.session, None)
            for final in (True, False):
                self.pending.pop((final, msg.session), None)
        else:
            self.counters.bump("unexpected")

    def _drain_mic(self) -> None:
        for sid, (mic, buf) in list(self.sessions.items()):
            if mic.stale:
                del self.sessions[sid]
                continue
            for start, pcm in mic.frames():
                buf.append(start, pcm)

    async def _read_loop(self) -> None:
        while True:
            await self.idle.until_any(self.sessions)
            self._drain_mic()
            # Audio is needed only when a request comes (and it drains first): wake only
            # often enough that no ring laps us.
            await self.idle.until_frames(
                MIC_ASR, [(mic, mic.slot.mic.capacity // 2) for mic, _ in self.sessions.values()]
            )

    def _next_request(self) -> AsrRequest | None:
        for final in (True, False):
            for key in list(self.pending):
                if key[0] == final:
                    return self.pending.pop(key)
        return None

    async def _work_loop(self) -> None:
        assert self.asr is not None
        while True:
            req = self._next_request()
            if req is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._drain_mic()  # the VAD may have seen frames we have not copied yet
            entry = self.sessions.get(req.session)
            if entry is None:
                continue
            audio = entry[1].span(req.start, req.end)
            t0 = time.perf_counter()
            self.busy = True
            no_speech = logprob = 0.0
            remembered = False
            try:
                text = await asyncio.to_thread(self.asr.transcribe, audio)
                # One request at a time, so these are the call's (an ASR without it: unknown).
                no_speech = float(getattr(self.asr, "last_no_speech", 0.0))
                logprob = float(getattr(self.asr, "last_logprob", 0.0))
                remembered = self.asr.last_timing.remembered
            except Exception:  # a model failure must not kill the actor
                log.exception("%s: transcription failed", self.name)
                self.counters.bump("asr_errors")
                text = ""
            finally:
                self.busy = False
            elapsed_ms = (time.perf_counter() - t0) * 1000
            kind = "final" if req.final else "partial"
            log.debug(
                "%s: %s %s [%d, %d) in %.0f ms%s",
                *(self.name, req.session, kind, req.start, req.end, elapsed_ms),
                " (remembered)" if remembered else "",
            )
            self.send(
                Transcript(
                    session=req.session,
                    turn=req.turn,
                    text=text.strip(),
                    final=req.final,
                    end=req.end,
                    elapsed_ms=elapsed_ms,
                    no_speech=no_speech,
                    logprob=logprob,
                    remembered=remembered,
                )
            )


def build(spec: ActorSpec) -> AsrActor:
    return AsrActor(spec.name, spec.place, spec.section(AsrSettings))
