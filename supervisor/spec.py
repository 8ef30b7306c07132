"""What the supervisor hands each actor process: its name, endpoints and config.

Actors never read mesh.toml; each actor module exposes ``build(spec) -> Actor`` that maps
the relevant config section onto the actor's explicit constructor arguments.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# kind -> "module:function" building the actor from an ActorSpec
FACTORIES: dict[str, str] = {
    "router": "voxmesh.actors.router.actor:build",
    "transport": "voxmesh.actors.transport.actor:build",
    "vad": "voxmesh.actors.vad:build",
    "asr": "voxmesh.actors.asr:build",
    "tts": "voxmesh.actors.tts.actor:build",
}


@dataclass
class ActorSpec:
    kind: str
    name: str
    router: str  # the router's ROUTER endpoint (the router binds it, others connect)
    supervisor: str  # the supervisor's ROUTER endpoint
    segment: str  # shared-memory ring segment name
    heartbeat_s: float
    liveness: int
    config: dict[str, Any] = field(default_factory=dict)  # the whole merged config
    env: dict[str, str] = field(default_factory=dict)  # extra environment (e.g. CUDA pinning)
    secret: str = ""  # this run's mesh secret (mesh/auth.py); the spec travels on stdin
    hold_s: float = 3.0  # how long a request waits for an actor that is away (mesh.hold_s)
    standby: bool = False  # load, then wait for "go" on stdin before joining (a warm spare)

    def to_json(self) -> str:
        """One line (the child reads the spec with readline: a standby's stdin stays open)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ActorSpec:
        return cls(**json.loads(text))

    def mesh_args(self) -> dict[str, Any]:
        """The constructor arguments every connecting actor takes: its place in the mesh."""
        return {
            "router": self.router,
            "supervisor": self.supervisor,
            "segment": self.segment,
            "heartbeat_s": self.heartbeat_s,
            "liveness": self.liveness,
            "secret": self.secret or None,
        }

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name, {})
        return dict(value) if isinstance(value, dict) else {}
