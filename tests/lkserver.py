"""A throwaway livekit-server for tests (loopback, free ports) on voxmesh.supervisor.livekit.

    with running_livekit_server() as lk:          # lk.url, lk.api_key, lk.api_secret
        ...

`node_ip=None` (default) advertises 127.0.0.1 only, which works for the Python rtc SDK and for
headless Chromium on the same machine (docs/browser.md). `node_ip=host_ip()` advertises this
machine's own non-loopback address instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from voxmesh.supervisor.launch import free_port
from voxmesh.supervisor.livekit import (
    VERSION,
    LiveKitServer,
    LiveKitServerError,
    LiveKitServerInfo,
    find_binary,
    host_ip,
)

__all__ = [
    "VERSION",
    "LiveKitServerError",
    "LiveKitServerInfo",
    "find_binary",
    "free_port",
    "host_ip",
    "running_livekit_server",
]

TEST_SECRET = "voxmesh-test-secret-0123456789abcdef"


@contextlib.contextmanager
def running_livekit_server(
    binary: str | os.PathLike[str] | None = None,
    *,
    node_ip: str | None = None,
    api_key: str = "devkey",
    api_secret: str = TEST_SECRET,
    startup_timeout_s: float = 20.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[LiveKitServerInfo]:
    """Run livekit-server until the block exits (even by an error); stopped and reaped after."""
    server = LiveKitServer(
        binary,
        node_ip=node_ip,
        api_key=api_key,
        api_secret=api_secret,
        startup_timeout_s=startup_timeout_s,
        log_path=log_path,
    )
    try:
        yield server.start()
    finally:
        server.stop()


if __name__ == "__main__":  # manual use: python tests/lkserver.py [--browser]
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: stop the server
    ip = host_ip() if "--browser" in sys.argv else None
    with running_livekit_server(node_ip=ip, log_path="/dev/stderr") as info:
        print(info, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
