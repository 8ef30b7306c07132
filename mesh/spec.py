"""An actor's place in the mesh, and the spec a supervisor starts an actor process with.

``MeshPlace`` is what every actor constructor takes besides its own settings: the endpoints
it links to, the ring segment, heartbeat timing and the run's secret. An embedder builds one
by hand; the supervisor puts one in each ``ActorSpec``, which travels to the child process
as one JSON line on stdin (it holds the secret and maybe API keys: never on a command line).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from .curve import ClientKeys
from .settings import section

T = TypeVar("T")


def data_endpoint(control: str, data: str = "") -> str:
    """The audio bridge's endpoint: ``data``, else the control endpoint's port + 1."""
    if data:
        return data
    host, _, port = control.rpartition(":")
    return f"{host}:{int(port) + 1}"


@dataclass(frozen=True)
class MeshPlace:
    router: str | None  # the router's ROUTER endpoint (the router binds it, others connect)
    supervisor: str | None = None  # the supervisor's ROUTER endpoint; None: unsupervised
    segment: str = ""  # shared-memory ring segment name
    heartbeat_s: float = 0.5
    liveness: int = 3  # heartbeats missed before a peer is presumed dead
    secret: str | None = None  # this run's mesh secret (mesh/auth.py)
    hold_s: float = 3.0  # how long a request waits for an actor that is away (mesh.hold_s)
    # Beyond one host (docs/protocol.md section 5): a worker reaches the router over tcp as a
    # CURVE client (z85 keys) and sends its audio to the bridge at ``data``, not to a ring.
    curve_server: str = ""  # the mesh's public key; empty: no CURVE (ipc on one host)
    curve_public: str = ""
    curve_secret: str = ""
    data: str = ""  # the audio bridge's endpoint; empty: this host's ring segment

    def curve(self) -> ClientKeys | None:
        if not self.curve_server:
            return None
        return ClientKeys(self.curve_server, self.curve_public, self.curve_secret)


@dataclass
class ActorSpec:
    kind: str
    name: str
    place: MeshPlace
    settings: dict[str, Any] = field(default_factory=dict)  # only this kind's sections
    env: dict[str, str] = field(default_factory=dict)  # extra environment (e.g. CUDA pinning)
    expected: list[str] = field(default_factory=list)  # the router: every other actor's name
    standby: bool = False  # load, then wait for "go" on stdin before joining (a warm spare)

    def to_json(self) -> str:
        """One line (the child reads the spec with readline: a standby's stdin stays open)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ActorSpec:
        data = json.loads(text)
        return cls(**{**data, "place": MeshPlace(**data["place"])})

    def section(self, cls: type[T]) -> T:
        """This actor's settings of one section (``spec.section(VadSettings)``)."""
        return section(cls, self.settings)
