"""The tests' WebSocket client: ``voxmesh.client`` (see there), re-exported under its old name."""

from __future__ import annotations

from voxmesh.client import (
    FRAME_BYTES,
    OUT_RATE,
    AudioFrame,
    Event,
    MicStream,
    Player,
    WsClient,
)

__all__ = ["FRAME_BYTES", "OUT_RATE", "AudioFrame", "Event", "MicStream", "Player", "WsClient"]
