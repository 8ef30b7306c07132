"""Start and stop a throwaway livekit-server for tests (loopback only, free ports).

    with running_livekit_server() as lk:          # lk.url, lk.api_key, lk.api_secret
        ...

`node_ip=None` (default) advertises 127.0.0.1 only, which suits the Python rtc SDK. Chromium
gathers no loopback candidates, so for a browser pass `node_ip=host_ip()` (this machine's own
non-loopback address): media then flows on that address, still without leaving the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSION = "1.13.5"


@dataclass(frozen=True)
class LiveKitServerInfo:
    url: str  # ws://host:port, for clients and for livekit-api (it rewrites ws→http)
    api_key: str
    api_secret: str
    port: int
    rtc_tcp_port: int
    rtc_udp_port: int
    node_ip: str
    pid: int
    log_path: Path


class LiveKitServerError(RuntimeError):
    pass


def find_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """`binary` if given, else $VOXMESH_LIVEKIT_SERVER, <repo>/bin/livekit-server, PATH."""
    if binary is not None:
        candidates = [Path(binary)]
    else:
        env = os.environ.get("VOXMESH_LIVEKIT_SERVER")
        on_path = shutil.which("livekit-server")
        candidates = [Path(c) for c in (env, REPO_ROOT / "bin/livekit-server", on_path) if c]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise LiveKitServerError(
        f"livekit-server binary not found (looked at: {looked}); run `make livekit` "
        "(scripts/install-livekit.sh) to build it into ./bin"
    )


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def host_ip() -> str:
    """This machine's primary non-loopback IPv4 address (no packet is sent: UDP connect only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks a route, never reached
            ip = str(s.getsockname()[0])
        except OSError:
            ip = ""
    if not ip or ip.startswith("127."):
        raise LiveKitServerError("no non-loopback IPv4 address found for a browser to use")
    return ip


def server_command(
    binary: Path,
    *,
    port: int,
    tcp_port: int,
    udp_port: int,
    node_ip: str | None,
    api_key: str,
    api_secret: str,
) -> list[str]:
    """The command line; node_ip None = loopback only (127.0.0.1 advertised)."""
    # stun_servers points at a dead loopback port: the server never asks a public STUN server
    # for its address, and it hands this list (not Google's) to clients as their ICE servers.
    # No --dev: it only adds debug logs and pprof (production mode wants 32+ char secrets).
    rtc = (
        f"tcp_port: {tcp_port}, udp_port: {udp_port}, use_external_ip: false, "
        'stun_servers: ["127.0.0.1:3478"]'
    )
    if node_ip is None:
        rtc += ", enable_loopback_candidate: true, interfaces: {includes: [lo]}, "
        rtc += "ips: {includes: [127.0.0.1/32]}"
        bind = ["--bind", "127.0.0.1", "--node-ip", "127.0.0.1"]
    else:
        rtc += f", ips: {{includes: [{node_ip}/32]}}"
        bind = ["--bind", "127.0.0.1", "--node-ip", node_ip]
    body = f"port: {port}\nlogging: {{level: info}}\nrtc: {{{rtc}}}\n"
    return [
        str(binary),
        *bind,
        "--keys",
        f"{api_key}: {api_secret}",
        "--config-body",
        body,
    ]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 2.0) -> None:
    """SIGTERM; a second SIGTERM (livekit-server's "force") after grace_s; SIGKILL after that.

    A graceful stop can hang (e.g. a SIGTERM that lands during start-up), hence the escalation.
    Always reaps the process, so nothing is left behind.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # own session: its group id is its pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


@contextlib.contextmanager
def running_livekit_server(
    binary: str | os.PathLike[str] | None = None,
    *,
    node_ip: str | None = None,
    api_key: str = "devkey",
    api_secret: str = "voxmesh-test-secret-0123456789abcdef",
    startup_timeout_s: float = 20.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[LiveKitServerInfo]:
    """Run livekit-server on free loopback ports until the block exits (even by an error)."""
    exe = find_binary(binary)
    port, tcp_port = free_port(), free_port()
    udp_port = free_port(socket.SOCK_DGRAM, node_ip or "127.0.0.1")
    cmd = server_command(
        exe,
        port=port,
        tcp_port=tcp_port,
        udp_port=udp_port,
        node_ip=node_ip,
        api_key=api_key,
        api_secret=api_secret,
    )
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="livekit-server-", suffix=".log")
        os.close(fd)
        log = Path(name)
    else:
        log = Path(log_path)
    # setpriv (util-linux) makes the kernel SIGKILL the server if this process dies, even by
    # SIGKILL, so no orphan survives a killed test run (preexec_fn is unsafe with threads).
    setpriv = shutil.which("setpriv")
    if setpriv:
        cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                raise LiveKitServerError(f"livekit-server {why} on port {port}; log:\n{tail}")
            time.sleep(0.05)
        yield LiveKitServerInfo(
            url=f"ws://127.0.0.1:{port}",
            api_key=api_key,
            api_secret=api_secret,
            port=port,
            rtc_tcp_port=tcp_port,
            rtc_udp_port=udp_port,
            node_ip=node_ip or "127.0.0.1",
            pid=proc.pid,
            log_path=log,
        )
    finally:
        stop_process(proc)
        if log_path is None:
            log.unlink(missing_ok=True)


if __name__ == "__main__":  # manual use: python tests/lkserver.py [--browser]
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: stop the server
    ip = host_ip() if "--browser" in sys.argv else None
    with running_livekit_server(node_ip=ip, log_path="/dev/stderr") as info:
        print(info, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
