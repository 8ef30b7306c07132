"""livekit-server as a managed process: ``voxmesh up --livekit``, and the tests' throwaway server.

``voxmesh up --livekit`` loads ``service(settings)`` (see ``services.py``). When ``livekit.url``
is empty it starts ``livekit-server`` on loopback (free ports unless configured), waits until
it answers, and writes ``livekit.url`` (and a strong ``livekit.api_secret`` when the configured
one is shorter than 32 characters) into the settings, so the transport serves ``POST /session``.
With ``livekit.url`` set it starts nothing and the transport uses that server.

The server runs in its own session under ``setpriv --pdeathsig KILL`` (the kernel kills it if
its parent dies, even by SIGKILL), is stopped with SIGTERM, a second SIGTERM (its "force"),
then SIGKILL, and is always reaped. Its configuration is the one docs/browser.md found to
work for both the Python rtc SDK and headless Chromium on the same machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from voxmesh.mesh.settings import Settings

from .launch import free_port

log = logging.getLogger("voxmesh.livekit")

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSION = "1.13.5"
MIN_SECRET_CHARS = 32  # livekit-server logs an ERROR for shorter secrets (JWT HMAC key)
BINARY_ENV = "VOXMESH_LIVEKIT_SERVER"  # path override used by the tests and CI


class LiveKitServerError(RuntimeError):
    """livekit-server is missing, would not start, or died; the message says what to do."""


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


def find_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """``binary`` if given, else $VOXMESH_LIVEKIT_SERVER, ./bin, <repo>/bin, then PATH."""
    if binary:
        candidates = [Path(binary)]
    else:
        env = os.environ.get(BINARY_ENV)
        local = [Path.cwd() / "bin/livekit-server", REPO_ROOT / "bin/livekit-server"]
        candidates = [Path(c) for c in (env, *local, shutil.which("livekit-server")) if c]
    for cand in dict.fromkeys(candidates):  # ordered, without duplicates
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates)) or "PATH"
    raise LiveKitServerError(
        f"livekit-server binary not found (looked at: {looked}); run `make livekit` "
        "(scripts/install-livekit.sh) to build it into ./bin, or set livekit.binary"
    )


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
    binary: Path, *, port: int, tcp_port: int, udp_port: int, node_ip: str | None
) -> list[str]:
    """The command line (keys go in the environment); node_ip None = loopback only."""
    # stun_servers points at a dead loopback port: the server never asks a public STUN server
    # for its address, and it hands this list (not Google's) to clients as their ICE servers.
    # No --dev: it only adds debug logs and pprof (production mode wants 32+ char secrets).
    rtc = (
        f"tcp_port: {tcp_port}, udp_port: {udp_port}, use_external_ip: false, "
        'stun_servers: ["127.0.0.1:3478"]'
    )
    if node_ip is None:
        # Chromium gathers no loopback candidate but still connects: its ICE checks to
        # 127.0.0.1 make it a peer-reflexive candidate (docs/browser.md).
        rtc += ", enable_loopback_candidate: true, interfaces: {includes: [lo]}, "
        rtc += "ips: {includes: [127.0.0.1/32]}"
    else:
        rtc += f", ips: {{includes: [{node_ip}/32]}}"
    body = f"port: {port}\nlogging: {{level: info}}\nrtc: {{{rtc}}}\n"
    node = node_ip or "127.0.0.1"
    return [str(binary), "--bind", "127.0.0.1", "--node-ip", node, "--config-body", body]


def answers(port: int) -> bool:
    """``GET /`` says OK once the server listens."""
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


class LiveKitServer:
    """One livekit-server process: ``start()`` waits until it answers, ``stop()`` reaps it.

    Ports left at 0 are picked free on loopback. ``log_path`` None: a temp file, removed by
    ``stop()``.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        api_key: str = "devkey",
        api_secret: str,
        node_ip: str | None = None,
        port: int = 0,
        rtc_tcp_port: int = 0,
        rtc_udp_port: int = 0,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 20.0,
    ) -> None:
        self.binary = find_binary(binary)  # fail early, before any port is taken
        self.api_key = api_key
        self.api_secret = api_secret
        self.node_ip = node_ip
        self.ports = (port, rtc_tcp_port, rtc_udp_port)
        self.startup_timeout_s = startup_timeout_s
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else _temp_log()
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: LiveKitServerInfo | None = None

    def start(self) -> LiveKitServerInfo:
        port, tcp_port, udp_port = self.ports
        port = port or free_port()
        tcp_port = tcp_port or free_port()
        udp_port = udp_port or free_port(kind=socket.SOCK_DGRAM, host=self.node_ip or "127.0.0.1")
        cmd = server_command(
            self.binary, port=port, tcp_port=tcp_port, udp_port=udp_port, node_ip=self.node_ip
        )
        # setpriv (util-linux) makes the kernel SIGKILL the server if this process dies, even
        # by SIGKILL, so no orphan survives (preexec_fn is unsafe with threads).
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        # The keys travel in the environment, not on the command line `ps` shows everyone.
        env = {**os.environ, "LIVEKIT_KEYS": f"{self.api_key}: {self.api_secret}"}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_answering(port)
        except BaseException:
            self.stop()
            raise
        self.info = LiveKitServerInfo(
            url=f"ws://127.0.0.1:{port}",
            api_key=self.api_key,
            api_secret=self.api_secret,
            port=port,
            rtc_tcp_port=tcp_port,
            rtc_udp_port=udp_port,
            node_ip=self.node_ip or "127.0.0.1",
            pid=self.proc.pid,
            log_path=self.log_path,
        )
        return self.info

    def _wait_answering(self, port: int) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while not answers(port):
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                why = f"exited with {self.proc.returncode}" if exited else "did not answer in time"
                raise LiveKitServerError(
                    f"livekit-server {why} on port {port}; its log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _temp_log() -> Path:
    fd, name = tempfile.mkstemp(prefix="livekit-server-", suffix=".log")
    os.close(fd)
    return Path(name)


class LiveKitService:
    """The supervisor's ``Service`` for ``voxmesh up --livekit`` (see the module docstring)."""

    name = "livekit"

    def __init__(self, settings: Settings) -> None:
        self.server: LiveKitServer | None = None
        self._reported_death = False
        if not settings.livekit.url:  # one will be started: a missing binary fails now,
            try:  # as one line, before the supervisor has started anything
                find_binary(settings.livekit.binary or None)
            except LiveKitServerError as exc:
                from .services import ServiceUnavailable

                raise ServiceUnavailable(str(exc)) from None

    def start(self, settings: Settings, run_dir: Path) -> Settings:
        lk = settings.livekit
        if lk.url:
            log.info("livekit: using the server at %s (livekit.url); starting none", lk.url)
            return settings
        secret = lk.api_secret
        if len(secret) < MIN_SECRET_CHARS:  # e.g. the built-in "secret": one per run instead
            secret = secrets.token_urlsafe(32)
        self.server = LiveKitServer(
            lk.binary or None,
            api_key=lk.api_key or "devkey",
            api_secret=secret,
            port=lk.port,
            rtc_tcp_port=lk.rtc_tcp_port,
            rtc_udp_port=lk.rtc_udp_port,
            log_path=run_dir / "livekit-server.log",
        )
        info = self.server.start()
        log.info(
            "livekit-server %s (pid %d) at %s, media on udp %d / tcp %d, log %s",
            self.server.binary,
            info.pid,
            info.url,
            info.rtc_udp_port,
            info.rtc_tcp_port,
            info.log_path,
        )
        return settings.replace(
            livekit={"url": info.url, "api_key": info.api_key, "api_secret": info.api_secret}
        )

    def alive(self) -> bool:
        if self.server is None or self.server.alive():
            return True
        if not self._reported_death:  # the run dir (and its log) goes away with the mesh
            self._reported_death = True
            log.error("livekit-server exited; its log:\n%s", self.server.log_tail())
        return False

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def service(settings: Settings) -> LiveKitService:
    return LiveKitService(settings)
