"""voxmesh: realtime full-duplex voice chat on a ZeroMQ + shared-memory mesh."""

__version__ = "0.1.0"
