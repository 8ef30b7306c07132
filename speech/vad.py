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
from voxmesh.speech.asr import ANCHOR_REL
from voxmesh.speech.assets import silero_vad_path
from voxmesh.speech.onnx import cpu_session

if TYPE_CHECKING:
    import onnxruntime

SAMPLE_RATE = 16000
CHUNK = 512  # samples per model call (32 ms)
CONTEXT = 64  # samples of the previous chunk the model sees before each chunk

# When the turn model (speech/smart_turn.py) judges a pause, in ms of silence: at its first
# silent chunk, then every 100 ms while it calls the turn unfinished and the words do not
# say why (a pause after more speech is judged anew). Its verdict on one ending swings with
# a few ms more silence (espeak's "...in Paris today?": p 0.05 / 0.80 / 0.04 at 32 / 160 /
# 232 ms), so looking again soon rescues a finished turn one look at 200 ms missed: of 48
# finished turns offline (bench/turns.py's 16; 8 more sentences in 3 other espeak voices and
# Piper), one look at 200 ms left 4 to wait vad.words_silence_ms, these checks 2.
# Turns paused mid-sentence are kept open by the words (``words``: "go to", "colour is"),
# not by the model, which calls most such pauses finished at once anyway.
TURN_CHECKS_MS: tuple[int, ...] = (0, 100, 200, 300, 400)
# A "complete" verdict waits this long (of silence) for the router's words on the pause: they
# come with the speculative transcript (~50-150 ms here), which the reply needs anyway; an
# ASR that is slow or gone costs this much, not vad.max_silence_ms.
WORDS_WAIT_MS = 300
# Audio the turn model hears before the onset, as pipecat gives it (base_smart_turn.py).
TURN_PRE_SPEECH = SAMPLE_RATE * 500 // 1000
TURN_HISTORY = 8 * SAMPLE_RATE + TURN_PRE_SPEECH  # its 8 s window, with that pre-roll

EventKind = Literal["speech_start", "speech_pause", "speech_resume", "speech_end", "speech_quiet"]


@dataclass(frozen=True, slots=True)
class VadEvent:
    kind: EventKind
    sample: int  # absolute 16 kHz sample index in the stream


class SileroVad:
    """One shared ONNX session; every audio stream gets its own `VadStream` state."""

    def __init__(self, model_path: str | Path | None = None, *, intra_op_threads: int = 1) -> None:
        # One thread: the per-chunk graph is tiny, so extra threads cost more in wake-ups than
        # they save, and many sessions' streams share the box.
        self.model_path = silero_vad_path(model_path)
        self.session = cpu_session(self.model_path, threads=intra_op_threads)

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


@dataclass(frozen=True, slots=True)
class TurnCheck:
    """Ask the turn model about samples [start, end); answer with `SpeechSegmenter.verdict`."""

    token: int
    start: int
    end: int


class SpeechSegmenter:
    """Turns per-chunk probabilities into speech start/pause/resume/end events. Pure logic.

    Hysteresis: speech starts at prob >= threshold and only counts as stopped below
    neg_threshold. The first silent chunk after confirmed speech emits `speech_pause` at once
    (so ASR can start speculatively); speech within the end-of-turn silence emits
    `speech_resume`, otherwise `speech_end` follows with the same sample as the pause.

    The end-of-turn silence is min_silence_ms, or with ``turn_model`` it depends on two
    opinions of the pause: the turn model's verdict (``check_due`` says when to ask it,
    TURN_CHECKS_MS; ``verdict`` takes its answer) and the words of the transcript up to the
    pause (``words``: do they stop mid-sentence?). Both say finished: complete_silence_ms;
    the model says unfinished but the words end a sentence: words_silence_ms; words that
    stop mid-sentence, or no words yet: max_silence_ms. Either answer may end the turn at
    once; no I/O here, the caller runs the model.
    """

    def __init__(
        self,
        *,
        threshold: float = VadSettings.threshold,
        neg_threshold: float | None = None,
        min_speech_ms: int = VadSettings.min_speech_ms,
        min_silence_ms: int = VadSettings.min_silence_ms,
        speech_pad_ms: int = VadSettings.speech_pad_ms,
        pre_roll_ms: int = 0,
        turn_model: bool = False,
        complete_silence_ms: int = VadSettings.complete_silence_ms,
        words_silence_ms: int = VadSettings.words_silence_ms,
        max_silence_ms: int = VadSettings.max_silence_ms,
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
        # A turn starts this far before the onset, so ASR hears a soft first word ("Sure."
        # lost its "Sh": Silero fired 12-108 ms late on 24 Piper/espeak clips; the first word
        # was right in 14 of 24 with 30 ms before the onset, 19 with 200 ms).
        self.pre_roll = max(self.pad, sample_rate * pre_roll_ms // 1000)
        self.turn_model = turn_model
        self.complete_silence = sample_rate * complete_silence_ms // 1000
        self.words_silence = sample_rate * words_silence_ms // 1000
        self.max_silence = sample_rate * max_silence_ms // 1000
        self.checks = [sample_rate * ms // 1000 for ms in TURN_CHECKS_MS]
        self.words_wait = sample_rate * WORDS_WAIT_MS // 1000
        self.pre_speech = sample_rate * TURN_PRE_SPEECH // SAMPLE_RATE
        self._token = 0  # one per pause: a verdict on an earlier pause is not this one's
        self._inflight: int | None = None  # the check being run (one at a time)
        self.reset()

    def reset(self) -> None:
        self.state: Literal["silence", "pending", "speech", "paused"] = "silence"
        self._start = 0  # first sample of the candidate/current segment (unpadded)
        self._silence_start = 0
        self._end = 0  # padded end reported by the pause
        self._floor = 0  # segments never reach back before the previous one's end
        self._seen = 0  # end of the last chunk fed
        self.complete: bool | None = None  # the turn model's verdict on this pause
        self.mid_sentence: bool | None = None  # what the words up to this pause say
        self._checked = 0  # how many of self.checks this pause has had

    @property
    def in_speech(self) -> bool:
        """True between speech_start and speech_end (paused counts as still in a turn)."""
        return self.state in ("speech", "paused")

    def feed(self, prob: float, start: int, n: int = CHUNK) -> list[VadEvent]:
        """One chunk's probability; `start` is its first sample, `n` its length."""
        end = start + n
        self._seen = end
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
                self._token += 1
                self.complete, self.mid_sentence, self._checked = None, None, 0
                events.append(VadEvent("speech_pause", self._end))
        elif prob >= self.threshold:  # paused, and speech came back
            self.state = "speech"
            events.append(VadEvent("speech_resume", start))
        elif end - self._silence_start >= self._silence_needed():
            events.append(self._finish())
        return events

    def _silence_needed(self) -> int:
        if not self.turn_model:
            return self.min_silence
        if self.mid_sentence:
            return self.max_silence
        if not self.complete:  # unfinished, or not judged (yet): the words end a sentence?
            return self.max_silence if self.mid_sentence is None else self.words_silence
        if self.mid_sentence is None:  # the words are not in yet
            return max(self.complete_silence, self.words_wait)
        return self.complete_silence

    def check_due(self) -> TurnCheck | None:
        """A turn-model check to run now (at most one at a time), or None."""
        if not self.turn_model or self.state != "paused" or self._inflight is not None:
            return None
        silence = self._seen - self._silence_start
        if self._checked >= len(self.checks) or silence < self.checks[self._checked]:
            return None
        if self._checked > 0 and (self.complete is not False or self.mid_sentence):
            return None  # re-check only an "unfinished" the words do not already explain
        self._checked = sum(1 for at in self.checks if at <= silence)
        self._inflight = self._token
        start = max(self._start - self.pre_speech, self._floor, self._seen - TURN_HISTORY)
        return TurnCheck(self._token, start, self._seen)

    def verdict(self, token: int, complete: bool | None) -> list[VadEvent]:
        """The turn model's answer to check ``token`` (None: it failed); may end the turn."""
        if token == self._inflight:
            self._inflight = None
        if token != self._token or self.state != "paused" or complete is None:
            return []  # speech came back, or the turn ended (max silence) meanwhile
        self.complete = complete
        if self._seen - self._silence_start >= self._silence_needed():
            return [self._finish()]
        return []

    def words(self, sample: int, mid_sentence: bool) -> list[VadEvent]:
        """What the transcript of the turn up to the pause at ``sample`` says: does it stop
        mid-sentence? May end the turn at once; about an earlier pause, ignored."""
        if self.state != "paused" or sample != self._end:
            return []
        self.mid_sentence = mid_sentence
        if self.turn_model and self._seen - self._silence_start >= self._silence_needed():
            return [self._finish()]
        return []

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
            events.append(VadEvent("speech_start", max(self._start - self.pre_roll, self._floor)))

    def _finish(self) -> VadEvent:
        self.state = "silence"
        self._floor = self._end
        return VadEvent("speech_end", self._end)


class QuietCue:
    """Speech that has gone quiet, before Silero says so: ``quiet`` samples under ANCHOR_REL
    of the loudest since the onset. Pure logic over the audio pushed.

    Silero calls the first silence 30-100 ms after the last voiced sample (bench/turns.py's
    clips); the ASR cuts a window at its last sample louder than ANCHOR_REL of its peak
    (speech/asr.py ``anchored``), so a transcript asked at this cue is the pause's final
    whenever nothing loud came in between, and the ASR answers that one from memory.
    Offline on those 20 clips (40 ms, -70 dBFS noise) it came 40 ms (median) before the
    pause; stop closures inside words go quiet too, so the ASR ran 2.6 times a turn in
    the bench against 2.0 without it (docs/turn-taking.md).
    """

    def __init__(self, quiet: int) -> None:
        self.quiet = quiet
        self.reset()

    def reset(self) -> None:
        self._peak = 0
        self._last_loud: int | None = None
        self._told: int | None = None  # the last loud sample the last cue was about

    def push(self, pcm: np.ndarray, start: int) -> int | None:
        """int16 ``pcm`` from sample ``start``; the sample to transcribe up to when the audio
        has just gone quiet, else None (at most one cue per quiet stretch)."""
        if self.quiet <= 0 or pcm.size == 0:
            return None
        mag = np.abs(pcm.astype(np.int32))
        self._peak = max(self._peak, int(mag.max()))
        loud = np.flatnonzero(mag >= ANCHOR_REL * self._peak) if self._peak else mag[:0]
        if loud.size:
            self._last_loud = start + int(loud[-1])
        end = start + pcm.size
        if self._last_loud is None or self._told == self._last_loud:
            return None
        if end - self._last_loud <= self.quiet:
            return None
        self._told = self._last_loud
        return end

    def wanted(self, next_sample: int) -> int | None:
        """Samples from ``next_sample`` until the cue can come if nothing loud comes first,
        or None when no cue is armed (nothing loud yet, or this quiet already told)."""
        if self.quiet <= 0 or self._last_loud is None or self._told == self._last_loud:
            return None
        return max(1, self._last_loud + self.quiet + 1 - next_sample)


class StreamingVad:
    """Arbitrary-length int16 16 kHz PCM in (e.g. 20 ms frames), VAD events out.

    Buffers to 512-sample chunks. Each push names its absolute start sample; a jump forward
    (ring overrun) resets the model state, a step back (duplicate audio) is skipped.
    """

    def __init__(
        self, vad: SileroVad, segmenter: SpeechSegmenter | None = None, *, quiet_ms: int = 0
    ) -> None:
        self.stream = vad.new_stream()
        self.segmenter = segmenter if segmenter is not None else SpeechSegmenter()
        self.cue = QuietCue(SAMPLE_RATE * quiet_ms // 1000)
        self._buf = np.zeros(CHUNK, np.float32)
        self._fill = 0
        self._next: int | None = None  # absolute index of the next expected sample
        self.last_probability = 0.0
        self.chunks = 0
        # The audio the turn model hears (only kept when the segmenter asks it).
        self._history = np.zeros(TURN_HISTORY if self.segmenter.turn_model else 0, np.int16)

    @property
    def wanted(self) -> int:
        """Samples still missing before an event can come: the next chunk's judgement, or in
        speech the sample where the quiet cue fires if the audio stays quiet (a 32 ms chunk
        cadence alone delayed the cue by up to a chunk; docs/turn-taking.md)."""
        chunk = CHUNK - self._fill
        if self.segmenter.state != "speech" or self._next is None:
            return chunk
        cue = self.cue.wanted(self._next)
        return chunk if cue is None else min(chunk, cue)

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
        self._remember(x, start_sample)
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
        return events + self._quiet(x, start_sample)

    def _quiet(self, pcm: np.ndarray, start: int) -> list[VadEvent]:
        """``speech_quiet`` while in speech (not yet paused): the audio went quiet here."""
        if self.cue.quiet <= 0:
            return []
        if self.segmenter.state == "silence":
            self.cue.reset()  # the next turn's peak is its own
            return []
        at = self.cue.push(_int16(pcm), start)
        if at is None or self.segmenter.state != "speech":
            return []
        return [VadEvent("speech_quiet", at)]

    def flush(self) -> list[VadEvent]:
        """End of stream: close any open segment at the last sample pushed."""
        return self.segmenter.flush(self._next or 0)

    def _remember(self, pcm: np.ndarray, start: int) -> None:
        size = self._history.size
        if size == 0 or pcm.size == 0:
            return
        tail = _int16(pcm[-size:])
        first = start + pcm.size - tail.size
        self._history[np.arange(first, first + tail.size) % size] = tail

    def turn_check(self) -> tuple[TurnCheck, np.ndarray] | None:
        """A due turn-model check and its int16 audio (a copy, safe to hand to a thread)."""
        check = self.segmenter.check_due()
        if check is None:
            return None
        size = self._history.size
        start = max(check.start, check.end - size)
        return check, self._history[np.arange(start, check.end) % size]

    def verdict(self, token: int, complete: bool | None) -> list[VadEvent]:
        return self.segmenter.verdict(token, complete)

    def words(self, sample: int, mid_sentence: bool) -> list[VadEvent]:
        return self.segmenter.words(sample, mid_sentence)

    def reset(self) -> None:
        self.stream.reset()
        self.segmenter.reset()
        self.cue.reset()
        self._fill = 0
        self._next = None


def _int16(pcm: np.ndarray) -> np.ndarray:
    """``pcm`` as int16 (float32 in [-1, 1] is scaled; int16 is returned as it is)."""
    if pcm.dtype == np.int16:
        return pcm
    out: np.ndarray = np.rint(np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
    return out
