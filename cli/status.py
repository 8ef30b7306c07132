"""``voxmesh status``: the actors of the running mesh, as a table or as JSON."""

from __future__ import annotations

import click

from .common import CliError, MeshOptions, mesh_options, running_mesh


@click.command(
    "status",
    help="Ask the running mesh's supervisor for the state, pid, restarts, sessions and last "
    "heartbeat of every actor. Exit 1 when no mesh is running.",
)
@mesh_options
@click.option("--json", "as_json", is_flag=True, help="print the raw STATUS as JSON")
@click.option("--timeout", type=float, default=3.0, metavar="S", help="seconds to wait (3)")
def status(config: str | None, port: int | None, as_json: bool, timeout: float) -> int:
    from voxmesh.supervisor.status import StatusUnavailable, format_table, query

    state = running_mesh(MeshOptions(config=config, port=port))
    try:
        answer = query(str(state["endpoint"]), timeout_s=timeout)
    except StatusUnavailable as exc:
        raise CliError(f"the mesh on port {state['port']} does not answer: {exc}") from None
    if as_json:
        import json

        print(json.dumps({"actors": answer.actors, "info": answer.info}, indent=1))
    else:
        print(format_table(answer))
    return 0
