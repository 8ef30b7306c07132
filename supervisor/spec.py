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

    def to_json(self) -> str:
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
        }

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name, {})
        return dict(value) if isinstance(value, dict) else {}
