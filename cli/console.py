"""``voxmesh console``: talk with the running mesh from the terminal, through this machine's
microphone and speaker.

The microphone (PortAudio through ``sounddevice``: ``pip install 'voxmesh[console]'``, and
the system's PortAudio library, ``libportaudio2`` on Debian/Ubuntu) streams into a WebSocket
session (``voxmesh.client``: ``WsClient`` and ``MicStream``, as ``voxmesh talk``), and the
reply frames play on the speaker. What the terminal shows: each state change
(``[listening]``, ``[user speaking]``, ``[thinking]``, ``[speaking]``, ...), what the mesh
heard (``you: ...``), each reply (``bot: ...``, marked when interrupted) and each turn's
latency (the end of your speech leaving this client -> its first reply frame received; the
speech end is the mesh's own ``vad`` ``speech_end`` sample). ``played`` acks report what
the speaker really played, so an interrupted reply resumes where you stopped hearing it.

The server cancels the speaker's echo in the mic (server.aec, the default). No audio
library, no PortAudio, no input or output device: one line, exit 1, before connecting; the
microphone or speaker stopping mid-session (a device unplugged, the sound server gone): one
line, exit 1. Ctrl-C ends the session (exit 0). Tested for real through a PulseAudio server
with virtual devices (tests/test_console_audio.py: PortAudio's ALSA host API, ALSA's pulse
plugin).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from .common import CliError, MeshOptions, mesh_options

if TYPE_CHECKING:
    import numpy as np

    from voxmesh.client import MicStream, WsClient

OUT_RATE = 48_000
BLOCK_MS = 20
ACK_INTERVAL_S = 0.1


@dataclass(frozen=True, kw_only=True)
class ConsoleOptions(MeshOptions):
    input_device: str | None = None
    output_device: str | None = None


def _device(text: str | None) -> int | str | None:
    if text is None or text == "":
        return None
    return int(text) if text.isdigit() else text


def audio_library() -> Any:
    """The ``sounddevice`` module, or a CliError that says what to install."""
    try:
        import sounddevice
    except ImportError:
        raise CliError(
            "voxmesh console needs the sounddevice package: pip install 'voxmesh[console]'"
        ) from None
    except OSError as exc:  # sounddevice is there, the PortAudio library is not
        raise CliError(
            f"voxmesh console cannot load PortAudio ({exc}): install it "
            "(Debian/Ubuntu: apt-get install libportaudio2)"
        ) from None
    return sounddevice


def pick_devices(sd: Any, options: ConsoleOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) device info, or a CliError naming the one missing."""
    found: list[dict[str, Any]] = []
    for kind, chosen, what in (
        ("input", options.input_device, "input device (microphone)"),
        ("output", options.output_device, "output device (speaker)"),
    ):
        try:
            info = sd.query_devices(_device(chosen), kind=kind)
        except (sd.PortAudioError, ValueError) as exc:
            named = f" {chosen!r}" if chosen else ""
            raise CliError(
                f"no audio {what}{named} here ({exc}); voxmesh console needs a microphone and a "
                "speaker (see 'voxmesh console --list-devices'; without them, use "
                "'voxmesh talk IN.wav -o OUT.wav')"
            ) from None
        found.append(dict(info))
    return found[0], found[1]


@click.command("console", help="talk with the mesh through this machine's microphone and speaker")
@click.option("--input", "input_device", metavar="DEVICE", help="input device (number or name)")
@click.option("--output", "output_device", metavar="DEVICE", help="output device (number or name)")
@click.option("--list-devices", is_flag=True, help="list the audio devices and exit")
@mesh_options
def console(
    input_device: str | None,
    output_device: str | None,
    list_devices: bool,
    config: str | None,
    port: int | None,
) -> int:
    sd = audio_library()
    if list_devices:
        print(sd.query_devices())
        return 0
    options = ConsoleOptions(
        config=config, port=port, input_device=input_device, output_device=output_device
    )
    mic_info, speaker_info = pick_devices(sd, options)
    return asyncio.run(_console(sd, options, mic_info, speaker_info))


class Speaker:
    """The reply frames into the output stream's callback; what it has played, for the
    ``played`` acks; ``clear`` drops what it has not played yet."""

    def __init__(self) -> None:
        import threading

        import numpy

        self._np = numpy
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self.played = 0  # 48 kHz samples played (underrun silence not counted)

    def feed(self, pcm: bytes) -> None:
        with self._lock:
            self._buffer += pcm

    def clear(self) -> None:
        with self._lock:
            self._buffer.clear()

    def callback(self, out: np.ndarray, frames: int, _time: Any, _status: Any) -> None:
        """PortAudio's thread: the next ``frames`` samples, silence where there are none."""
        with self._lock:
            n = min(frames, len(self._buffer) // 2)
            data = bytes(self._buffer[: 2 * n])
            del self._buffer[: 2 * n]
            self.played += n
        out[:n, 0] = self._np.frombuffer(data, "<i2")
        out[n:] = 0


async def _console(
    sd: Any, options: ConsoleOptions, mic_info: dict[str, Any], speaker_info: dict[str, Any]
) -> int:
    import signal

    import numpy as np

    from voxmesh.client import MicStream

    from .session import mesh_session

    rate = int(min(48000, max(8000, mic_info.get("default_samplerate") or 16000)))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with mesh_session(options, sample_rate=rate) as client:
        mic = MicStream(client, rate, chunk_ms=BLOCK_MS, speed=0.0)  # sent as it is captured
        mic.silence = False
        speaker = Speaker()

        def captured(indata: np.ndarray, _frames: int, _time: Any, _status: Any) -> None:
            block = indata.reshape(-1).astype(np.int16).copy()  # PortAudio's thread
            loop.call_soon_threadsafe(mic.queue, block)

        try:
            mic_stream = sd.InputStream(
                device=mic_info.get("index", mic_info.get("name")),
                samplerate=rate,
                channels=1,
                dtype="int16",
                blocksize=rate * BLOCK_MS // 1000,
                latency="low",
                callback=captured,
            )
            out_stream = sd.OutputStream(
                device=speaker_info.get("index", speaker_info.get("name")),
                samplerate=OUT_RATE,
                channels=1,
                dtype="int16",
                blocksize=OUT_RATE * BLOCK_MS // 1000,
                latency="low",
                callback=speaker.callback,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise CliError(f"cannot open the audio devices: {exc}") from None
        print(
            f"voxmesh console: mic {mic_info.get('name')!r} at {rate} Hz, speaker "
            f"{speaker_info.get('name')!r}; session {client.session_id}; Ctrl-C to stop "
            "(the server cancels the speaker's echo; headphones hear best)",
            flush=True,
        )
        with mic_stream, out_stream:
            async with mic:
                view = ConsoleView(client, mic, speaker)
                acks = asyncio.create_task(view.ack_loop())
                try:
                    await view.run(stop, lambda: mic_stream.active and out_stream.active)
                finally:
                    acks.cancel()
                    await asyncio.gather(acks, *view.acks, return_exceptions=True)
    print("bye")
    return 0


class ConsoleView:
    """Follows the session: plays frames, applies ``clear``, prints states, transcripts,
    replies and each turn's latency."""

    def __init__(self, client: WsClient, mic: MicStream, speaker: Speaker) -> None:
        self.client = client
        self.mic = mic
        self.speaker = speaker
        self.n_events = 0
        self.n_frames = 0
        self.state = ""
        self.speech_end: int | None = None  # the mesh's sample where the last speech ended
        self.pending: tuple[float, float] | None = None  # (audio_start t, speech end t)
        self.reply_text = ""
        self.acks: list[asyncio.Future[None]] = []  # acks sent at once, after a clear

    async def run(self, stop: asyncio.Event, audio_running: Callable[[], bool]) -> None:
        """Until ``stop``; a CliError when the mesh closes the session or the audio streams
        stop (``audio_running``: PortAudio ends a stream whose device or sound server went
        away, and nothing else would tell: the console would sit there deaf and mute)."""
        client = self.client
        while not stop.is_set():
            if client.closed.is_set():
                raise CliError("the mesh closed the session")
            if not audio_running():
                raise CliError(
                    "the microphone or the speaker stopped (the audio device or the sound "
                    "server went away)"
                )
            try:
                await client.wait_until(
                    lambda: (
                        stop.is_set()
                        or client.closed.is_set()
                        or not audio_running()
                        or len(client.events) > self.n_events
                        or len(client.frames) > self.n_frames
                    ),
                    timeout=1.0,
                    what="the mesh",
                    poll_s=0.05,
                )
            except TimeoutError:
                continue
            self.step()

    def step(self) -> None:
        """Apply what arrived since the last step, events and frames in arrival order."""
        client = self.client
        events, frames = client.events[self.n_events :], client.frames[self.n_frames :]
        self.n_events += len(events)
        self.n_frames += len(frames)
        merged: list[tuple[float, int, Any]] = [(e.t, 0, e) for e in events]
        merged += [(f.t, 1, f) for f in frames]
        for t, is_frame, item in sorted(merged, key=lambda m: (m[0], m[1])):
            if is_frame:
                self.speaker.feed(item.data)
                if self.pending is not None and t >= self.pending[0]:
                    ms = (t - self.pending[1]) * 1000
                    print(f"  latency: first reply audio {ms:.0f} ms after the end of your speech")
                    self.pending = None
            else:
                self.on_event(item.t, item.data)

    def on_event(self, t: float, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "clear":  # drop what is not played yet, and say at once what was
            self.speaker.clear()
            self.acks.append(asyncio.ensure_future(self._ack(self.speaker.played)))
        elif kind == "state" and data.get("state") != self.state:
            self.state = str(data.get("state"))
            print(f"[{self.state.replace('_', ' ')}]", flush=True)
        elif kind == "vad":
            sample = data.get("sample")
            if data.get("event") == "speech_end" and isinstance(sample, int):
                self.speech_end = sample
            elif data.get("event") == "speech_start":
                self.speech_end = None
        elif kind == "transcript" and data.get("final"):
            print(f"you: {data.get('text', '')}", flush=True)
        elif kind == "reply":
            self.reply_text = str(data.get("text", ""))
            print(f"bot: {self.reply_text}", flush=True)
        elif kind == "audio_start" and self.speech_end is not None:
            t_end = self.mic.mesh_sample_time(self.speech_end)
            self.speech_end = None
            if t_end is not None:
                self.pending = (t, t_end)
        elif kind == "audio_end" and data.get("reason") not in (None, "done"):
            print(f"  (reply {data.get('reason')})", flush=True)
        elif kind == "error":
            print(f"mesh error {data.get('code')}: {data.get('message')}", flush=True)

    async def _ack(self, samples: int) -> None:
        try:
            await self.client.send_played(samples)
        except (ConnectionError, RuntimeError):  # the socket is closing: nothing to tell
            pass

    async def ack_loop(self) -> None:
        """A ``played`` ack every ``ACK_INTERVAL_S`` while the count moves (as the page)."""
        last = -1
        while not self.client.ws.closed:
            await asyncio.sleep(ACK_INTERVAL_S)
            if self.speaker.played != last:
                last = self.speaker.played
                await self._ack(last)
