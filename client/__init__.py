"""A client library for the voxmesh client protocol (docs/client-protocol.md), one job a module:

- ``ws.py``: ``WsClient``, one WebSocket session (hello, messages, frames received);
- ``events.py``: ``EventLog``, the events received with their times, and waiting for them
  (shared with the LiveKit test client, ``tests/lkclient.py``);
- ``mic.py``: ``MicStream``, mic PCM on a real-time schedule;
- ``player.py``: ``Player``, a model of the page's playout;
- ``session.py``: ``open_session``/``ws_session``, sessions with errors that say why;
- ``audio.py``: the protocol's audio format, WAV files.

    async with ws_session("ws://127.0.0.1:8080/ws") as c:
        since = c.mark()
        await c.say("hello there")
        await c.wait_event("audio_end", 30, since=since)
        write_wav("reply.wav", c.audio())
"""

from __future__ import annotations

from .audio import FRAME_BYTES, MAX_RATE, MIN_RATE, OUT_RATE, WavError, read_wav, rms, write_wav
from .events import Event, EventLog, EventPredicate, event_is
from .mic import MicStream, PcmSender
from .player import Player
from .session import ConnectError, open_session, ws_session
from .ws import AudioFrame, WsClient

__all__ = [
    "FRAME_BYTES",
    "MAX_RATE",
    "MIN_RATE",
    "OUT_RATE",
    "AudioFrame",
    "ConnectError",
    "Event",
    "EventLog",
    "EventPredicate",
    "MicStream",
    "PcmSender",
    "Player",
    "WavError",
    "WsClient",
    "event_is",
    "open_session",
    "read_wav",
    "rms",
    "write_wav",
    "ws_session",
]
