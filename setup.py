"""Package discovery; everything else about the build is in pyproject.toml.

The repository root *is* the ``voxmesh`` package (``package-dir`` maps ``voxmesh`` to ``.``),
and ``[tool.setuptools.packages.find]`` cannot put the ``voxmesh.`` prefix on what it finds
(it would ship ``mesh/`` as a top-level ``mesh`` package), so the list is made here: the root
plus every directory below it with an ``__init__.py``. ``find_packages`` does not descend into
directories without one, so ``tests/``, ``web/`` (and its ``node_modules``), ``bench/micro``,
``bench/results``, ``docs/``, ``scripts/`` and ``bin/`` stay out; ``EXCLUDE`` keeps them out
should one ever get an ``__init__.py``. This file sits in the package's directory too, so
``BuildPy`` leaves it (``voxmesh.setup``) out of the wheel.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

EXCLUDE = ["tests", "tests.*", "web", "web.*", "build", "build.*", "dist", "dist.*"]


class BuildPy(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("voxmesh", "setup")]


setup(
    packages=["voxmesh", *(f"voxmesh.{name}" for name in find_packages(".", exclude=EXCLUDE))],
    cmdclass={"build_py": BuildPy},
)
