"""Who may speak on the mesh: a per-run secret and the token each actor derives from it.

The supervisor draws a fresh secret for every run and hands it to each actor it starts on
standard input (never argv or the environment: both are visible to other processes). An
actor proves it belongs to the mesh by putting ``token_for(secret, name)`` in its READY; a
hub built with the same secret refuses a READY without the right token, and gives nothing
to a peer that has not sent a good one. The token is bound to the actor's name, so a
process that learns one actor's token cannot register under another name. docs/protocol.md
says what an embedding program must present. On tcp, CURVE authenticates the socket as
well; this check stays the same there.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_BYTES = 32
_CONTEXT = b"voxmesh-ready-v1:"


def new_secret() -> str:
    """A fresh per-run secret, as hex (it travels in the JSON ActorSpec)."""
    return secrets.token_hex(SECRET_BYTES)


def token_for(secret: str, name: str) -> str:
    """The token an actor called ``name`` presents in READY (hex HMAC-SHA256)."""
    key = bytes.fromhex(secret)
    return hmac.new(key, _CONTEXT + name.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(secret: str, name: str, token: str) -> bool:
    """Constant-time check of ``token`` for ``name``."""
    return hmac.compare_digest(token_for(secret, name), token)
