"""CURVE on the mesh's tcp sockets: key files, the allow-list, the options of each side.

Beyond one host (docs/protocol.md section 5) every tcp socket is CURVE: the session host's
router and audio bridge are servers with the mesh's key pair; a worker is a client with
its own pair and the mesh's public key. Who may connect is an allow-list of client public
keys, the ``*.key`` files in one directory, checked by pyzmq's ZAP authenticator in the
server's process. A refused key is logged (rate-limited) and counted, and the directory is
read again when an unknown key knocks, so adding a worker needs no restart.

Key files are the ZeroMQ certificate format (``zmq.auth.create_certificates``): ``NAME.key``
holds the public key, ``NAME.key_secret`` both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from .sockets import Counters, log_drop

log = logging.getLogger("voxmesh.mesh")

# An unknown key re-reads the allow-list when the directory changed, else at most this often
# (a key file added just before its worker knocks must be seen: no race with the copy).
RELOAD_MIN_S = 1.0


class KeyError_(ValueError):
    """A key file that is missing or unreadable; the message says which and what to do."""


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client presents (z85 text: it travels in a JSON ActorSpec)."""

    server_public: str
    public: str
    secret: str


def make_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """A fresh key pair as ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(out), name)
    os.chmod(secret, 0o600)  # the secret half is for this host alone
    return Path(public), Path(secret)


def read_public(path: str) -> str:
    """The public key (z85) in a ``.key`` or ``.key_secret`` file."""
    public, _ = _load(path)
    return public.decode("ascii")


def read_pair(path: str) -> tuple[str, str]:
    """(public, secret) from a ``.key_secret`` file."""
    public, secret = _load(path)
    if not secret:
        raise KeyError_(f"{path} holds no secret key: give the .key_secret file")
    return public.decode("ascii"), secret.decode("ascii")


def _load(path: str) -> tuple[bytes, bytes | None]:
    if not path:
        raise KeyError_("no key file given (make one with `voxmesh keys DIR`)")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read key file {path}: {exc}") from None


def client_keys(key_file: str, server_key_file: str) -> ClientKeys:
    public, secret = read_pair(key_file)
    return ClientKeys(server_public=read_public(server_key_file), public=public, secret=secret)


def as_client(sock: zmq.Socket[bytes], keys: ClientKeys) -> None:
    """Make ``sock`` a CURVE client (before connect)."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public.encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode())


def as_server(sock: zmq.Socket[bytes], key_file: str) -> None:
    """Make the endpoints ``sock`` binds from now on CURVE servers (earlier binds, such as
    an ipc endpoint, keep the NULL mechanism: libzmq copies options at bind time)."""
    public, secret = read_pair(key_file)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret.encode())


class AllowList:
    """The client keys let in: the ``*.key`` files of one directory (a ZAP credentials
    provider for pyzmq's authenticator)."""

    def __init__(self, directory: str, counters: Counters) -> None:
        if not directory or not Path(directory).is_dir():
            raise KeyError_(f"allowed-keys directory {directory!r} does not exist")
        self.directory = directory
        self.counters = counters
        self._keys: set[bytes] = set()
        self._read_at = float("-inf")
        self._mtime = 0
        self._reload()

    def _changed(self) -> bool:
        """The directory changed (a key file added) since we read it."""
        try:
            return os.stat(self.directory).st_mtime_ns != self._mtime
        except OSError:
            return False

    def _reload(self) -> None:
        self._read_at = time.monotonic()
        with contextlib.suppress(OSError):
            self._mtime = os.stat(self.directory).st_mtime_ns
        keys = set()
        for path in sorted(Path(self.directory).glob("*.key")):
            try:
                keys.add(zmq.auth.load_certificate(str(path))[0])
            except (OSError, ValueError) as exc:
                log.warning("curve: skipping key file %s: %s", path, exc)
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator with the client's z85 public key."""
        if key in self._keys:
            return True
        if self._changed() or time.monotonic() - self._read_at >= RELOAD_MIN_S:
            self._reload()
            if key in self._keys:
                return True
        log_drop(self.counters, "curve_refused", f"a peer with key {key.decode()} is not allowed")
        return False


def start_authenticator(
    context: zmq.Context[zmq.Socket[bytes]], allowed: AllowList
) -> AsyncioAuthenticator:
    """The ZAP handler of ``context``, in the running asyncio loop; stop() it before term."""
    auth = AsyncioAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=allowed)
    return auth


def bind_server(
    context: zmq.Context[zmq.Socket[bytes]],
    sock: zmq.Socket[bytes],
    endpoint: str,
    key_file: str,
    allowed_dir: str,
    counters: Counters,
) -> AsyncioAuthenticator:
    """Bind ``endpoint`` on ``sock`` as a CURVE server behind the allow-list (the router's
    remote endpoint and the bridge's data socket). The authenticator starts before the bind,
    so no peer is ever let in unchecked; on failure nothing is left running (the caller
    still owns ``sock``). Stop the returned authenticator when the socket closes."""
    auth = start_authenticator(context, AllowList(allowed_dir, counters))
    try:
        as_server(sock, key_file)
        sock.bind(endpoint)
    except BaseException:
        auth.stop()
        raise
    return auth
