"""Silero VAD (v6, the copy shipped with faster-whisper) plus a turn segmenter.

Model I/O, read from the ONNX metadata and faster-whisper's own feeding code:
  input  float32 [seq_len, 576]: 64 samples of context (tail of the previous chunk, zeros at
         stream start) followed by one 512-sample 16 kHz chunk; seq_len runs the LSTM over
         consecutive chunks, so streaming uses seq_len = 1.
  h, c   float32 [1, 1, 128]: LSTM state, carried from one call to the next.
  output speech_probs [seq_len], hn, cn.
There is no sample-rate input: this export is 16 kHz only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from voxmesh.mesh.settings import VadSettings
from voxmesh.speech.assets import silero_vad_path

if TYPE_CHECKING:
    import onnxruntime

SAMPLE_RATE = 16000
CHUNK = 512  # samples per model call (32 ms)
CONTEXT = 64  # samples of the previous chunk the model sees before each chunk

EventKind = Literal["speech_start", "speech_pause", "speech_resume", "speech_end"]


@dataclass(frozen=True, slots=True)
class VadEvent:
    kind: EventKind
    sample: int  # absolute 16 kHz sample index in the stream


class SileroVad:
    """One shared ONNX session; every audio stream gets its own `VadStream` state."""

    def __init__(self, model_path: str | Path | None = None, *, intra_op_threads: int = 1) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        # One thread: the per-chunk graph is tiny, so extra threads cost more in wake-ups than
        # they save, and many sessions' streams share the box.
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.model_path = silero_vad_path(model_path)
        self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def new_stream(self) -> VadStream:
        return VadStream(self.session)


class VadStream:
    """Per-stream LSTM state and context. Not thread-safe; the session underneath is."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session
        self._x = np.zeros((1, CONTEXT + CHUNK), np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget everything (new stream, or a gap in the audio)."""
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._x[:] = 0.0

    def probability(self, chunk: np.ndarray) -> float:
        """Speech probability of one 512-sample 16 kHz chunk: float32 in [-1, 1] (or int16)."""
        if chunk.shape != (CHUNK,):
            raise ValueError(f"expected {CHUNK} samples, got shape {chunk.shape}")
        x = self._x
        x[0, :CONTEXT] = x[0, -CONTEXT:]  # previous chunk's tail becomes this one's context
        x[0, CONTEXT:] = chunk if chunk.dtype != np.int16 else chunk / 32768.0
        prob, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        return float(np.asarray(prob).reshape(-1)[0])


class SpeechSegmenter:
    """Turns per-chunk probabilities into speech start/pause/resume/end events. Pure logic.

    Hysteresis: speech starts at prob >= threshold and only counts as stopped below
    neg_threshold. The first silent chunk after confirmed speech emits `speech_pause` at once
    (so ASR can start speculatively); speech within min_silence_ms emits `speech_resume`,
    otherwise `speech_end` follows with the same sample as the pause.
    """

    def __init__(
        self,
        *,
        threshold: float = VadSettings.threshold,
        neg_threshold: float | None = None,
        min_speech_ms: int = VadSettings.min_speech_ms,
        min_silence_ms: int = VadSettings.min_silence_ms,
        speech_pad_ms: int = VadSettings.speech_pad_ms,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.threshold = threshold
        self.neg_threshold = (
            neg_threshold if neg_threshold is not None else max(threshold - 0.15, 0.01)
        )
        if self.neg_threshold > threshold:
            raise ValueError("neg_threshold must not exceed threshold")
        self.min_speech = sample_rate * min_speech_ms // 1000
        self.min_silence = sample_rate * min_silence_ms // 1000
        self.pad = sample_rate * speech_pad_ms // 1000
        self.reset()

    def reset(self) -> None:
        self.state: Literal["silence", "pending", "speech", "paused"] = "silence"
        self._start = 0  # first sample of the candidate/current segment (unpadded)
        self._silence_start = 0
        self._end = 0  # padded end reported by the pause
        self._floor = 0  # segments never reach back before the previous one's end

    @property
    def in_speech(self) -> bool:
        """True between speech_start and speech_end (paused counts as still in a turn)."""
        return self.state in ("speech", "paused")

    def feed(self, prob: float, start: int, n: int = CHUNK) -> list[VadEvent]:
        """One chunk's probability; `start` is its first sample, `n` its length."""
        end = start + n
        events: list[VadEvent] = []
        if self.state == "silence":
            if prob >= self.threshold:
                self._start = start
                self.state = "pending"
                self._confirm(end, events)
        elif self.state == "pending":
            if prob >= self.neg_threshold:
                self._confirm(end, events)
            else:
                self.state = "silence"  # too short: a click, not speech
        elif self.state == "speech":
            if prob < self.neg_threshold:
                self._silence_start = start
                # Clamp the pad to audio already seen, so the pause's segment is complete now.
                self._end = min(start + self.pad, end)
                self.state = "paused"
                events.append(VadEvent("speech_pause", self._end))
        elif prob >= self.threshold:  # paused, and speech came back
            self.state = "speech"
            events.append(VadEvent("speech_resume", start))
        elif end - self._silence_start >= self.min_silence:
            events.append(self._finish())
        return events

    def flush(self, end_sample: int) -> list[VadEvent]:
        """Close an open segment at the end of the stream (audio ended mid-speech)."""
        if self.state == "speech":
            self._end = end_sample
            return [VadEvent("speech_pause", end_sample), self._finish()]
        if self.state == "paused":
            return [self._finish()]
        self.state = "silence"
        return []

    def _confirm(self, end: int, events: list[VadEvent]) -> None:
        if end - self._start >= self.min_speech:
            self.state = "speech"
            events.append(VadEvent("speech_start", max(self._start - self.pad, self._floor)))

    def _finish(self) -> VadEvent:
        self.state = "silence"
        self._floor = self._end
        return VadEvent("speech_end", self._end)


class StreamingVad:
    """Arbitrary-length int16 16 kHz PCM in (e.g. 20 ms frames), VAD events out.

    Buffers to 512-sample chunks. Each push names its absolute start sample; a jump forward
    (ring overrun) resets the model state, a step back (duplicate audio) is skipped.
    """

    def __init__(self, vad: SileroVad, segmenter: SpeechSegmenter | None = None) -> None:
        self.stream = vad.new_stream()
        self.segmenter = segmenter if segmenter is not None else SpeechSegmenter()
        self._buf = np.zeros(CHUNK, np.float32)
        self._fill = 0
        self._next: int | None = None  # absolute index of the next expected sample
        self.last_probability = 0.0
        self.chunks = 0

    @property
    def wanted(self) -> int:
        """Samples still missing before the next chunk is judged (no event comes sooner)."""
        return CHUNK - self._fill

    def push(self, pcm: np.ndarray, start_sample: int | None = None) -> list[VadEvent]:
        x = np.asarray(pcm).reshape(-1)
        if start_sample is None:
            start_sample = self._next if self._next is not None else 0
        events: list[VadEvent] = []
        if self._next is not None and start_sample != self._next:
            if start_sample < self._next:
                skip = self._next - start_sample
                x, start_sample = x[skip:], self._next
            else:
                # Lost audio: the context and LSTM state no longer describe what comes next.
                self._fill = 0
                self.stream.reset()
        samples = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        pos = 0
        while pos < samples.size:
            take = min(CHUNK - self._fill, samples.size - pos)
            self._buf[self._fill : self._fill + take] = samples[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == CHUNK:
                chunk_start = start_sample + pos - CHUNK
                self.last_probability = self.stream.probability(self._buf)
                self.chunks += 1
                events += self.segmenter.feed(self.last_probability, chunk_start, CHUNK)
                self._fill = 0
        self._next = start_sample + samples.size
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: close any open segment at the last sample pushed."""
        return self.segmenter.flush(self._next or 0)

    def reset(self) -> None:
        self.stream.reset()
        self.segmenter.reset()
        self._fill = 0
        self._next = None
