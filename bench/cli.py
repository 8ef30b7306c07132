"""``python -m voxmesh.bench.cli [--quick] [--only ...]``: ``voxmesh bench``, standalone.

The command itself is ``voxmesh.cli.bench`` (click, like every ``voxmesh`` command); this
module keeps the old entry point, ``main(argv)`` -> exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from voxmesh.cli import run_command
    from voxmesh.cli.bench import bench

    code: int = run_command(bench, argv, prog_name="voxmesh bench")
    return code


if __name__ == "__main__":
    sys.exit(main())
