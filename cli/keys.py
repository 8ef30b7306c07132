"""``voxmesh keys DIR``: a CURVE key pair for the mesh or for a worker (docs/protocol.md §5).

On the session host ``voxmesh keys keys`` makes ``keys/server.key`` (public) and
``keys/server.key_secret``; on a worker host ``voxmesh keys wkeys --name gpu1`` makes that
worker's pair. The worker's ``.key`` goes into the session host's ``remote.allowed``
directory, the mesh's ``server.key`` to the worker (``--server-key``); secret files stay put.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import CliError


@click.command("keys", help="make a CURVE key pair DIR/NAME.key (public) + DIR/NAME.key_secret")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="server", show_default=True, help="file name of the pair")
@click.option("--force", is_flag=True, help="replace a pair of that name")
def keys(directory: Path, name: str, force: bool) -> int:
    from voxmesh.mesh import curve

    public = directory / f"{name}.key"
    if public.exists() and not force:
        raise CliError(f"{public} exists (give --force to replace it)", code=2)
    try:
        public, secret = curve.make_keys(directory, name)
    except OSError as exc:
        raise CliError(f"cannot write keys into {directory}: {exc}", code=2) from None
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (keep it on this host)")
    return 0
