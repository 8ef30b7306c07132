"""One table of error codes: ``voxmesh.mesh.errors.ErrorCode``, shown in the transport's
README, and the only codes the code base sends a client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from voxmesh.actors.transport.errors import ClientError
from voxmesh.mesh.errors import ErrorCode, error_event, markdown_table

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the package
SOURCES = [
    p
    for p in ROOT.rglob("*.py")
    if not {"tests", "node_modules", "build"} & set(p.relative_to(ROOT).parts)
    and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)  # .git, .venv
]
CALLS = {"ClientError", "error_event"}


def test_the_readme_shows_the_table_verbatim() -> None:
    readme = (ROOT / "actors" / "transport" / "README.md").read_text(encoding="utf-8")
    table = markdown_table()
    assert table in readme
    assert readme.count("| code | when |") == 1  # no second, hand-made table


def test_the_router_and_transport_codes_are_there() -> None:
    values = {c.value for c in ErrorCode}
    router = {"tts_lost", "stuck_turn", "responder_failed", "tts_failed", "unavailable"}
    transport = {"bad_field", "slow_reader", "unauthorized", "no_slot", "internal"}
    assert router | transport <= values
    assert len(values) == len(ErrorCode)  # no two members share a code
    assert all(c.description for c in ErrorCode)
    assert [c for c in ErrorCode if c.retryable] == [ErrorCode.UNAVAILABLE]


def _codes_used(tree: ast.AST) -> list[tuple[int, ast.expr]]:
    """(line, expression) of every code handed to a client: the first argument of
    ClientError(...)/error_event(...), and the "code" of a {"type": "error", ...} literal."""
    found: list[tuple[int, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in CALLS:
                found.append((node.lineno, node.args[0]))
        elif isinstance(node, ast.Dict):
            items = {
                k.value: v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            }
            kind = items.get("type")
            if isinstance(kind, ast.Constant) and kind.value == "error" and "code" in items:
                found.append((node.lineno, items["code"]))
    return found


def test_every_code_sent_is_an_error_code_member() -> None:
    members = set(ErrorCode.__members__)
    values = {c.value for c in ErrorCode}
    bad: list[str] = []
    seen = 0
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, expr in _codes_used(tree):
            seen += 1
            where = f"{path.relative_to(ROOT)}:{line}"
            if isinstance(expr, ast.Constant):
                if expr.value not in values:
                    bad.append(f"{where}: {expr.value!r} is not an ErrorCode")
            elif (
                isinstance(expr, ast.Attribute)
                and isinstance(expr.value, ast.Name)
                and expr.value.id == "ErrorCode"
                and expr.attr not in members
            ):
                bad.append(f"{where}: ErrorCode.{expr.attr} does not exist")
    assert seen >= 30, seen  # the scan does find the call sites
    assert not bad, bad


def test_client_error_takes_only_codes() -> None:
    err = ClientError(ErrorCode.BAD_FIELD, "nope")
    assert err.code is ErrorCode.BAD_FIELD
    assert err.event() == {"type": "error", "code": "bad_field", "message": "nope"}
    assert ClientError("no_slot", "full").code is ErrorCode.NO_SLOT  # a str that is a code
    with pytest.raises(ValueError):
        ClientError("no_such_code", "x")
    assert error_event(ErrorCode.SLOW_READER, "m")["code"] == "slow_reader"
