"""Whisper (tiny.en, CTranslate2 int8) on a short encoder window.

faster-whisper's `transcribe()` always pads features to Whisper's 30 s window, so the encoder
costs the same for a 1 s utterance as for a 30 s one. We call the model's lower-level API
instead: log-mel features of the audio, padded by `pad_s` seconds and to at least
`min_window_s` (the encoder accepts fewer than 3000 frames). Measured on 24 Piper and espeak
sentences (1-4 s): a window cut to the audio alone loops on hallucinated phrases; audio + 3 s
still repeats the sentence now and then, mostly on short utterances ("Yes. Yes. Yes."); a
5 s minimum plus `trim_repetition` gives the 30 s window's word error rate at ~1/10 of
its encoder cost.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxmesh.speech.assets import whisper_model_dir

SAMPLE_RATE = 16000
FRAMES_PER_S = 100  # mel frames (hop 160 samples)
MAX_FRAMES = 3000  # Whisper's 30 s window
MIN_AUDIO_S = 0.1  # shorter than this cannot hold a word; skip the model
# A window starts ANCHOR_LEAD_S before the first sample louder than ANCHOR_REL x its peak and
# ends ANCHOR_TAIL_S after the last: at the audio's own edges, not at the VAD's 32 ms chunk
# grid, which moves with when the audio arrived. That holds only if the request reaches past
# both edges: vad.pre_roll_ms covers the lead (Silero fires up to ~110 ms late), and a pause's
# segment ends 24-88 ms after the last loud sample (vad.speech_pad_ms), so no tail is asked
# for. Measured on 48 clips (bench/speech.py's 12 texts, Piper and 3 espeak voices), each at
# 4 alignments to that grid: windows cut at the VAD's bounds gave more than one transcript on
# 29 clips (WER 14.8 %); lead 0.2 s and tail 0.1 s when the audio was there, 0 (16.2 %); lead
# 0.1 s and no tail, 0 (12.4 %); lead 0.3 s, 15.8 %.
ANCHOR_LEAD_S = 0.1
ANCHOR_TAIL_S = 0.0
ANCHOR_REL = 0.02
# Transcripts remembered by their anchored window: a pause's final is often asked for audio
# already transcribed ahead of it (vad.quiet_ms), and the same window gives the same text.
MEMO_SIZE = 8


@dataclass(slots=True)
class AsrTiming:
    audio_s: float = 0.0
    frames: int = 0  # encoder window, in mel frames
    features_ms: float = 0.0
    encode_ms: float = 0.0
    decode_ms: float = 0.0
    remembered: bool = False  # the same window was transcribed before: no model run

    @property
    def total_ms(self) -> float:
        return self.features_ms + self.encode_ms + self.decode_ms


class WhisperAsr:
    """Greedy, no timestamps, English only. Safe to share between threads (calls serialise)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        cpu_threads: int = 2,
        compute_type: str = "int8",
        pad_s: float = 3.0,
        min_window_s: float = 5.0,
        full_window: bool = False,
        no_speech_threshold: float = 0.6,
        no_speech_alone: float = 0.8,
        memo_size: int = MEMO_SIZE,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model_path = whisper_model_dir(model_path)
        self._wm = WhisperModel(
            str(self.model_path), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads
        )
        multilingual = self._wm.model.is_multilingual
        # tiny.en has no language token; a multilingual override gets "en".
        self._tok = Tokenizer(
            self._wm.hf_tokenizer,
            multilingual,
            task="transcribe",
            language="en" if multilingual else None,
        )
        self._prompt = [*self._tok.sot_sequence, self._tok.no_timestamps]
        # -1 = Whisper's default non-speech set (music notes, speaker tags, ...) plus specials.
        self._suppress = list(get_suppressed_tokens(self._tok, [-1]))
        self.pad_s = pad_s
        self.min_window_s = min_window_s
        self.full_window = full_window
        self.no_speech_threshold = no_speech_threshold
        self.no_speech_alone = no_speech_alone
        self.last_timing = AsrTiming()
        self.last_no_speech = 0.0  # of the last transcribe(): its least speech-like window
        # ...and the mean token log-probability of its least sure window with text (0: none)
        self.last_logprob = 0.0
        self._lock = threading.Lock()
        self._memo: OrderedDict[tuple[bytes, bool], tuple[str, float, float]] = OrderedDict()
        self.memo_size = memo_size  # 0: every call runs the model (benches that time it)
        self.remembered = 0  # transcribe() calls answered from the memo

    def warmup(self) -> None:
        """First calls allocate buffers; pay that before the first user turn."""
        rng = np.random.default_rng(0)
        self.transcribe(rng.normal(0, 0.01, SAMPLE_RATE).astype(np.float32))

    def transcribe(self, audio: np.ndarray, *, full_window: bool | None = None) -> str:
        """Text of 16 kHz mono audio (float32 in [-1, 1], or int16). "" when there is none.

        A function of the anchored audio alone, so a window seen lately is answered from
        memory (``last_timing.remembered``)."""
        x = anchored(_to_float(audio))
        full = self.full_window if full_window is None else full_window
        if self.memo_size <= 0:
            return self._transcribe(x, full)
        key = (hashlib.blake2b(x.tobytes(), digest_size=16).digest(), full)
        with self._lock:
            known = self._memo.get(key)
            if known is not None:
                self._memo.move_to_end(key)
                self.remembered += 1
        if known is not None:
            self.last_timing = AsrTiming(audio_s=x.size / SAMPLE_RATE, remembered=True)
            text, self.last_no_speech, self.last_logprob = known
            return text
        text = self._transcribe(x, full)
        with self._lock:
            self._memo[key] = (text, self.last_no_speech, self.last_logprob)
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return text

    def _transcribe(self, x: np.ndarray, full: bool) -> str:
        self.last_no_speech = 1.0  # raised by each window decoded, below
        self.last_logprob = 0.0  # lowered by each window with text
        if x.size < MIN_AUDIO_S * SAMPLE_RATE:
            self.last_timing = AsrTiming(audio_s=x.size / SAMPLE_RATE)
            return ""
        self.last_no_speech = 0.0
        # Past 30 s, take Whisper-sized pieces; a voice turn rarely gets here.
        piece = int((30.0 - (0.0 if full else min(self.pad_s, 29.0))) * SAMPLE_RATE)
        texts: list[str] = []
        timing = AsrTiming(audio_s=x.size / SAMPLE_RATE)
        for at in range(0, x.size, piece):
            seg = x[at : at + piece]
            if seg.size >= MIN_AUDIO_S * SAMPLE_RATE:
                texts.append(self._window(seg, full, timing))
        self.last_timing = timing
        return " ".join(t for t in texts if t)

    def transcribe_partial(self, audio: np.ndarray) -> str:
        """Interim text of a turn still in progress: the same short-window path (it is cheap
        enough to rerun on the growing buffer, e.g. every 300-500 ms)."""
        return self.transcribe(audio)

    def _window(self, x: np.ndarray, full: bool, timing: AsrTiming) -> str:
        import ctranslate2

        t0 = time.perf_counter()
        feats = self._wm.feature_extractor(x)  # (80, frames) of the audio alone
        n = min(feats.shape[1], MAX_FRAMES)
        if full:
            frames = MAX_FRAMES
        else:
            want = max(n + self.pad_s * FRAMES_PER_S, self.min_window_s * FRAMES_PER_S)
            frames = min(MAX_FRAMES, int(want) + int(want) % 2)  # stride-2 conv: even count
        # Pad with the spectrogram's floor, i.e. what digital silence after the audio would
        # give (OpenAI's Whisper pads the audio itself); faster-whisper's zeros are louder.
        floor = max(float(feats.max()) - 2.0, -1.5)
        window = np.full((1, feats.shape[0], frames), floor, np.float32)
        window[0, :, :n] = feats[:, :n]
        # Cap the output by the audio length: a looping decoder stops early.
        max_new = min(440 - len(self._prompt), 10 + int(8 * x.size / SAMPLE_RATE))
        with self._lock:
            t1 = time.perf_counter()
            enc = self._wm.model.encode(ctranslate2.StorageView.from_array(window))
            t2 = time.perf_counter()
            res = self._wm.model.generate(
                enc,
                [self._prompt],
                beam_size=1,
                max_length=len(self._prompt) + max_new,
                suppress_blank=True,
                suppress_tokens=self._suppress,
                return_scores=True,
                return_no_speech_prob=True,
            )[0]
            t3 = time.perf_counter()
        timing.frames = max(timing.frames, frames)
        timing.features_ms += (t1 - t0) * 1e3
        timing.encode_ms += (t2 - t1) * 1e3
        timing.decode_ms += (t3 - t2) * 1e3
        tokens = res.sequences_ids[0]
        # scores[0] is length-normalised; undo that the way faster-whisper does.
        avg_logprob = res.scores[0] * len(tokens) / (len(tokens) + 1)
        # Whisper's silence rule (likely no speech and not confidently decoded), plus a
        # stricter no-speech bar alone: on silence tiny.en says "you" with good confidence.
        # Speech measured here stays below 0.5, silence/noise/tones above 0.85.
        nsp = res.no_speech_prob
        self.last_no_speech = max(self.last_no_speech, float(nsp))
        if nsp > self.no_speech_alone or (nsp > self.no_speech_threshold and avg_logprob < -1):
            return ""
        text = trim_repetition(str(self._tok.decode(tokens)).strip())
        if text:
            self.last_logprob = min(self.last_logprob, float(avg_logprob))
        return text


_END = (".", "?", "!")


def _key(word: str) -> str:
    return word.strip(".,?!;:\"'").lower()


def trim_repetition(text: str) -> str:
    """Cut a decoder loop: after a complete sentence, text that only repeats the preceding
    sentence(s) ("Yes. Yes. Yes." or "Thanks for your help. Thanks for your") is dropped.

    Short windows make Whisper do this now and then; a real speaker repeating a whole
    sentence verbatim loses nothing a voice bot needs.
    """
    words = text.split()
    keys = [_key(w) for w in words]
    for k in range(1, len(words)):
        if not words[k - 1].endswith(_END):
            continue
        tail = keys[k:]
        for p in range(1, k + 1):
            if p < k and not words[k - p - 1].endswith(_END):
                continue  # the repeated unit must be whole sentences
            unit = keys[k - p : k]
            if all(t == unit[i % p] for i, t in enumerate(tail)):
                return " ".join(words[:k])
    return text


def anchored(x: np.ndarray) -> np.ndarray:
    """``x`` cut to its voiced part plus a margin (ANCHOR_*): the same audio gives the same
    window wherever the request's bounds fell in the silence around it."""
    mag = np.abs(x)
    peak = float(mag.max()) if mag.size else 0.0
    if peak <= 0.0:
        return x
    loud = np.flatnonzero(mag >= ANCHOR_REL * peak)
    lo = max(0, int(loud[0]) - int(ANCHOR_LEAD_S * SAMPLE_RATE))
    hi = min(x.size, int(loud[-1]) + 1 + int(ANCHOR_TAIL_S * SAMPLE_RATE))
    return x[lo:hi]


def _to_float(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio).reshape(-1)
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    return np.ascontiguousarray(a, dtype=np.float32)
