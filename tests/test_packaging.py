"""The wheel ships every package of the tree, ``mesh.toml`` and the web page's static files,
and nothing else: no tests, no web sources or ``node_modules``, no top-level strays.

The wheel is built from a copy of the tree (so the build leaves no ``build/`` or egg-info in
the checkout) with ``pip wheel --no-deps --no-build-isolation``: setuptools>=68 (and
``wheel`` for setuptools < 70.1) must be installed, as the ``dev`` extra has them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STATIC = Path("actors/transport/static")
# Directories whose __init__.py files (if any) are not voxmesh packages: the tests, the web
# page's sources and npm packages, build outputs. Hidden directories (.git, caches) neither.
NOT_PACKAGES = {"tests", "web", "build", "dist"}
# Left out of the copy the wheel is built from: bulky, and not part of any package.
NOT_COPIED = shutil.ignore_patterns(
    ".*", "__pycache__", "*.egg-info", "build", "dist", "node_modules", "bin", "test-artifacts"
)

pytestmark = pytest.mark.timeout(360)


def package_dirs() -> list[Path]:
    """The package directories, relative to the root (the voxmesh package itself): each with
    an ``__init__.py`` inside a package, leaving out NOT_PACKAGES and hidden directories."""
    found = []
    for root, dirs, files in os.walk(REPO):
        rel = Path(root).relative_to(REPO)
        if "__init__.py" not in files:
            dirs[:] = []  # a package's subpackages sit inside packages only
            continue
        found.append(rel)
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and not (rel == Path() and d in NOT_PACKAGES)
        ]
    return found


def missing_build_backend() -> str | None:
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    if major < 68:
        return f"setuptools {setuptools.__version__} is older than 68"
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the wheel package"
    return None


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    why = missing_build_backend()
    if why:
        pytest.skip(f"cannot build the wheel without isolation: {why} (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "out"
    shutil.copytree(REPO, src, ignore=NOT_COPIED)
    decoy = src / "web" / "node_modules" / "decoy"  # npm packages may look like Python ones
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "index.js").write_text("module.exports = {}\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "--disable-pip-version-check", "-q", "-w", str(out), str(src)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("voxmesh-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_every_package_and_module_is_in_the_wheel(wheel_names: set[str]) -> None:
    packages = package_dirs()
    assert {Path(), Path("cli"), Path("mesh"), Path("actors/transport")} <= set(packages)
    missing = [
        f"voxmesh/{(package / py.name).as_posix()}"
        for package in packages
        for py in (REPO / package).glob("*.py")
        if py.name != "setup.py" or package != Path()
    ]
    missing = [name for name in missing if name not in wheel_names]
    assert not missing, missing


def test_the_data_files_are_in_the_wheel(wheel_names: set[str]) -> None:
    static = [p for p in (REPO / STATIC).rglob("*") if p.is_file()]
    assert any(p.name == "index.html" for p in static)
    expected = {"voxmesh/mesh.toml"} | {f"voxmesh/{p.relative_to(REPO).as_posix()}" for p in static}
    assert expected <= wheel_names, sorted(expected - wheel_names)


def test_the_turn_model_and_its_licence_are_in_the_wheel(wheel_names: set[str]) -> None:
    # Fetched by `make install` (scripts/fetch-smart-turn.py), not committed (.gitignore).
    models = "voxmesh/speech/models/"
    assert {models + "smart-turn-v3.2-cpu.onnx", models + "SMART-TURN-LICENSE"} <= wheel_names


def test_nothing_else_is_in_the_wheel(wheel_names: set[str]) -> None:
    top = {name.split("/")[0] for name in wheel_names}
    assert {n for n in top if not n.endswith(".dist-info")} == {"voxmesh"}, top
    strays = [
        name
        for name in wheel_names
        if name.startswith(("voxmesh/tests/", "voxmesh/web/", "voxmesh/bench/results/"))
        or "node_modules" in name
        or name in ("voxmesh/setup.py", "voxmesh/pyproject.toml")
    ]
    assert not strays, strays
