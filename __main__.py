"""``python -m voxmesh``: the same as the ``voxmesh`` command."""

import sys

from voxmesh.cli import main

sys.exit(main())
