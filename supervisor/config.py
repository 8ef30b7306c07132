"""Configuration layers: defaults < packaged mesh.toml < --config FILE < env < CLI flags.

Each setting is defined once, in ``voxmesh/mesh/settings.py`` (type, default, range, doc);
this module only reads the layers and merges them into a validated ``Settings``. A user file
may only name keys that exist there, with the setting's type; environment variables are
``VOXMESH_<SECTION>_<KEY>``, parsed by that type (lists comma-separated); unknown
``VOXMESH_*`` variables are ignored, since other tools use that prefix too (for example
``VOXMESH_LIVEKIT_SERVER`` in the tests).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from voxmesh.mesh.settings import (
    Settings,
    SettingsError,
    convert,
    parse_env_text,
    section_types,
    to_dict,
)

ConfigError = SettingsError  # the name the CLI and tests know
ENV_PREFIX = "VOXMESH_"


def defaults() -> Settings:
    return Settings()


def load(
    file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Merge the layers; raises ConfigError naming the offending key and its origin."""
    data: dict[str, dict[str, Any]] = to_dict(Settings())
    packaged = resources.files("voxmesh").joinpath("mesh.toml").read_text(encoding="utf-8")
    merge(data, tomllib.loads(packaged), origin="mesh.toml")
    if file is not None:
        merge(data, read_file(file), origin=str(file))
    merge(data, from_env(os.environ if environ is None else environ), origin="env")
    if overrides:
        merge(data, overrides, origin="command line")
    return convert(Settings, data, origin="config")


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from None


def merge(data: dict[str, dict[str, Any]], layer: Mapping[str, Any], *, origin: str) -> None:
    """Apply ``layer`` to ``data``, checking it (against the settings model) as it comes."""
    types = section_types()
    for section, values in layer.items():
        if section not in types:
            known = ", ".join(sorted(types))
            raise ConfigError(f"{origin}: unknown config section [{section}] (known: {known})")
        merged = {**data[section], **values} if isinstance(values, Mapping) else values
        convert(types[section], merged, origin=origin, path=section)
        data[section] = dict(merged)


def from_env(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The ``VOXMESH_<SECTION>_<KEY>`` variables that name a known key, parsed by its type."""
    layer: dict[str, dict[str, Any]] = {}
    for section, cls in section_types().items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            name = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
            if name in environ and not is_dataclass(hints[f.name]):
                value = parse_env_text(hints[f.name], environ[name], name=name)
                layer.setdefault(section, {})[f.name] = value
    return layer


def with_overrides(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A validated copy of ``settings`` with some keys replaced (used by tests and tools)."""
    return settings.replace(**sections)


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: 127.0.0.0/8, ::1, localhost."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # another name, or "" (every interface): assume others can reach it
        return False


def check_exposure(settings: Settings) -> None:
    """What ``voxmesh up`` refuses before binding anything: a server other machines can
    reach with no ``server.auth_token``, unless ``server.allow_unauthenticated`` says so
    (``--allow-unauthenticated``); and ``metrics_auth`` without a token to check."""
    server = settings.server
    if not server.auth_token and not server.allow_unauthenticated and not is_loopback(server.host):
        raise ConfigError(
            f"server.host = {server.host!r} can be reached from other machines but "
            "server.auth_token is empty: set a token, bind 127.0.0.1, or pass "
            "--allow-unauthenticated"
        )
    if server.metrics_auth and not server.auth_token:
        raise ConfigError("server.metrics_auth = true needs a server.auth_token to check")


def check_remote(settings: Settings) -> None:
    """``remote.listen`` needs the mesh's key pair and the allow-list, readable now."""
    from voxmesh.mesh import curve

    remote = settings.remote
    if not remote.listen:
        if remote.only:
            kinds = " and ".join(remote.only)
            raise ConfigError(
                f"remote.only leaves {kinds} to workers, but no worker can join without "
                "remote.listen (voxmesh up --listen tcp://HOST:PORT)"
            )
        return
    try:
        curve.read_pair(remote.key)
    except curve.KeyError_ as exc:
        raise ConfigError(f"remote.listen needs remote.key: {exc}") from None
    if not remote.allowed or not os.path.isdir(remote.allowed):
        raise ConfigError(
            f"remote.listen needs remote.allowed, a directory of the workers' public keys "
            f"(*.key); {remote.allowed!r} is not one"
        )
