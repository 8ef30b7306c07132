"""Configuration: packaged defaults < --config FILE < VOXMESH_<SECTION>_<KEY> env < CLI flags.

The defaults are the repository's ``mesh.toml`` (shipped as package data ``voxmesh/mesh.toml``)
and they also define the schema: every section and key a user may set, and its type. A user
file may only name keys that exist there; a value must have the default's type (an ``int``
where the default is an int, a ``float`` or an int where it is a float, and so on; durations
in seconds, keys ending in ``_s``, accept either). Environment variables are parsed by the
default's type (lists are comma-separated); unknown ``VOXMESH_*`` variables are ignored, since
other tools use that prefix too (for example ``VOXMESH_LIVEKIT_SERVER`` in the tests).

The result is a plain nested dict: ``config["server"]["port"]``.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

Config = dict[str, dict[str, Any]]

ENV_PREFIX = "VOXMESH_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A config file, variable or flag that does not fit the schema; the message says where."""


def defaults() -> Config:
    """The built-in defaults (a fresh copy each call)."""
    text = resources.files("voxmesh").joinpath("mesh.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load(
    file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Merge the four layers; raises ConfigError naming the offending key and its origin."""
    config = defaults()
    if file is not None:
        merge(config, read_file(file), origin=str(file))
    merge(config, from_env(config, os.environ if environ is None else environ), origin="env")
    if overrides:
        merge(config, {s: dict(v) for s, v in overrides.items()}, origin="command line")
    check_ranges(config)
    return config


# (section, key) -> smallest allowed value (and the largest, where there is one)
RANGES: dict[tuple[str, str], tuple[float, float | None]] = {
    ("server", "port"): (0, 65535),
    ("server", "max_message_bytes"): (1, None),
    ("server", "slow_reader_s"): (0.001, None),
    ("mesh", "max_sessions"): (1, None),
    ("mesh", "mic_ring_frames"): (2, None),
    ("mesh", "out_ring_frames"): (2, None),
    ("mesh", "heartbeat_ms"): (1, None),
    ("mesh", "liveness"): (1, None),
    ("mesh", "ready_timeout_s"): (0.001, None),
    ("mesh", "shutdown_deadline_s"): (0, None),
    ("mesh", "restart_backoff_ms"): (0, None),
    ("mesh", "restart_max"): (0, None),
    ("mesh", "restart_window_s"): (0.001, None),
}


def check_ranges(config: Config) -> None:
    """Values the supervisor cannot work with, caught before anything starts."""
    for (section, key), (low, high) in RANGES.items():
        value = config.get(section, {}).get(key)
        if isinstance(value, (int, float)) and (value < low or (high is not None and value > high)):
            bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise ConfigError(f"{section}.{key} must be {bound}, got {value!r}")


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: 127.0.0.0/8, ::1, localhost."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # another name, or "" (every interface): assume others can reach it
        return False


def check_exposure(config: Config) -> None:
    """What ``voxmesh up`` refuses before binding anything: a server other machines can
    reach with no ``server.auth_token``, unless ``server.allow_unauthenticated`` says so
    (``--allow-unauthenticated``); and ``metrics_auth`` without a token to check."""
    server = config["server"]
    host, token = str(server["host"]), str(server["auth_token"])
    if not token and not server["allow_unauthenticated"] and not is_loopback(host):
        raise ConfigError(
            f"server.host = {host!r} can be reached from other machines but server.auth_token "
            "is empty: set a token, bind 127.0.0.1, or pass --allow-unauthenticated"
        )
    if server["metrics_auth"] and not token:
        raise ConfigError("server.metrics_auth = true needs a server.auth_token to check")


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from None


def merge(config: Config, layer: Mapping[str, Any], *, origin: str) -> None:
    """Validate ``layer`` against the schema (the keys already in ``config``) and apply it."""
    for section, values in layer.items():
        if section not in config:
            known = ", ".join(sorted(config))
            raise ConfigError(f"{origin}: unknown config section [{section}] (known: {known})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table of keys")
        for key, value in values.items():
            if key not in config[section]:
                known = ", ".join(sorted(config[section]))
                raise ConfigError(
                    f"{origin}: unknown config key {section}.{key} (keys of [{section}]: {known})"
                )
            config[section][key] = _checked(section, key, config[section][key], value, origin)


def from_env(schema: Config, environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The ``VOXMESH_<SECTION>_<KEY>`` variables that name a known key, parsed by its type."""
    layer: dict[str, dict[str, Any]] = {}
    for section, values in schema.items():
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        for key, default in values.items():
            name = prefix + key.upper()
            if name in environ:
                layer.setdefault(section, {})[key] = parse_text(name, environ[name], default)
    return layer


def parse_text(name: str, text: str, default: Any) -> Any:
    """Parse ``text`` (from the environment) as the type of ``default``."""
    try:
        if isinstance(default, bool):
            low = text.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
        if isinstance(default, int):
            try:
                return int(text)
            except ValueError:
                if name.lower().endswith("_s"):
                    return float(text)
                raise
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list):
            return [item.strip() for item in text.split(",") if item.strip()]
        return text
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r}: {exc}") from None


def _checked(section: str, key: str, default: Any, value: Any, origin: str) -> Any:
    where = f"{origin}: {section}.{key}"
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok or (key.endswith("_s") and isinstance(value, float))
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = list(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"{where} must be {_describe(default)}, got {type(value).__name__} {value!r}"
        )
    return value


def _describe(default: Any) -> str:
    if isinstance(default, list):
        return "a list of strings"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(default), type(default).__name__
    )


def with_overrides(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A validated copy of ``config`` with some keys replaced (used by tests and tools)."""
    out = copy.deepcopy(config)
    merge(out, sections, origin="overrides")
    return out
