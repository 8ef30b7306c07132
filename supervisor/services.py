"""Extra processes started and stopped with the mesh (the hook for ``voxmesh up --livekit``).

A service is anything with this shape. The supervisor starts every service after it has
bound its own socket and before the first actor, so a service may fill in settings the
actors read (``--livekit`` sets ``livekit.url`` for the transport); it checks ``alive()`` on
every tick (a dead service stops the mesh with an error) and stops services after the actors.

Services are named in ``SERVICES`` (name -> "module:function"; the function takes the merged
settings and returns a Service) and loaded with ``load_service``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from voxmesh.mesh.settings import Settings

SERVICES: dict[str, str] = {
    "livekit": "voxmesh.supervisor.livekit:service",
}


class Service(Protocol):
    name: str

    def start(self, settings: Settings, run_dir: Path) -> Settings:
        """Start (and wait until usable); the settings the actors get (it may add some)."""

    def alive(self) -> bool:
        """False once the service has died."""

    def stop(self) -> None:
        """Stop and clean up; must not raise if already stopped."""


class ServiceUnavailable(RuntimeError):
    pass


def load_service(name: str, settings: Settings) -> Service:
    target = SERVICES.get(name)
    if target is None:
        raise ServiceUnavailable(f"unknown service {name!r}")
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ServiceUnavailable(f"{name} support is not installed ({module_name})") from None
    factory = getattr(module, function)
    service: Service = factory(settings)
    return service
