"""Value checks built from type annotations: what the wire registry (``protocol.py``) and the
client events (``events.py``) use to refuse a decoded value of the wrong shape.

Values are as msgpack or ``json.loads`` give them, so a whole float may arrive as an int.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, Literal

Check = Callable[[Any], bool]


def checker(tp: Any) -> Check:
    """A predicate for values of the annotated type ``tp`` (the few shapes messages use)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        subs = [checker(a) for a in typing.get_args(tp)]
        return lambda v: any(s(v) for s in subs)
    if origin is Literal:
        allowed = typing.get_args(tp)
        return lambda v: isinstance(v, str) and v in allowed
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        check = checker(item)
        return lambda v: isinstance(v, list) and all(check(x) for x in v)
    if origin is dict or tp is dict:
        return lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)
    simple: dict[Any, Check] = {
        type(None): lambda v: v is None,
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        bytes: lambda v: isinstance(v, bytes),
        Any: lambda v: True,
    }
    if tp in simple:
        return simple[tp]
    raise TypeError(f"unsupported field type {tp!r}")
