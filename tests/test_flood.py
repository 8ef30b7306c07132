"""A flood or fuzz on the mesh's sockets costs the flooder, not the mesh.

A real ``voxmesh up`` (mock TTS). One foreign process of the same user floods
``router.sock`` (and fuzzes ``supervisor.sock``) while a client keeps talking to the mesh;
afterwards no actor was restarted, the client was served throughout, and the router holds
no state for the strangers. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshproc import MeshProc, http_status, mesh_up, wait_for

from voxmesh.client import WsClient
from voxmesh.mesh import protocol

FLOOD_S = float(os.environ.get("VOXMESH_TEST_FLOOD_S", "30"))
FLOOD_MAX = 3_000_000  # messages queued, whichever bound comes first
# The rate of the report (one process, ~6-8k messages/s); VOXMESH_TEST_FLOOD_RATE=0
# floods as fast as the sockets take it (~35k/s here: see the note on what that does).
FLOOD_RATE = float(os.environ.get("VOXMESH_TEST_FLOOD_RATE", "8000"))

# The flooder is its own process (as in the report), so that it competes for the
# CPU like a real one rather than sharing the test's loop.
FLOODER = r"""
import os, sys, time, zmq
from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import ClientText, Ready, SessionOpen
endpoint, seconds, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rate = float(sys.argv[4])
ctx = zmq.Context()
socks = []
for i in range(8):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 1000)
    s.connect(endpoint)
    socks.append(s)
msgs = [
    [b"garbage"],
    [b"VXM1", b"\x12", b"\x81\xa4text\xa3abc"],
    protocol.encode(Ready(name="transport", kind="transport", pid=os.getpid())),
    protocol.encode(SessionOpen(session="forged", slot=0, generation=1)),
    protocol.encode(ClientText(session="forged", text="x" * 2000)),
    [b"VXM1", b"\x12", b"\0" * 200_000],  # over the frame limit: the connection is dropped
]
sent, tried, t0 = 0, 0, time.monotonic()
while time.monotonic() < t0 + seconds and sent < limit:
    if rate and sent > rate * (time.monotonic() - t0):
        time.sleep(0.001)  # ahead of the rate: wait
        continue
    for s in socks:
        tried += 1
        try:
            s.send_multipart(msgs[tried % len(msgs)], zmq.NOBLOCK)
            sent += 1
        except zmq.Again:  # its queue is full: the router takes them no faster
            pass
print(sent, time.monotonic() - t0)
for s in socks:
    s.close(linger=0)
ctx.term()
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProc]:
    with mesh_up(tmp_path_factory.mktemp("flood"), tts="mock") as running:
        yield running


def restarts(mesh: MeshProc) -> dict[str, int]:
    return {row["name"]: int(row["restarts"]) for row in mesh.status().actors}


async def say_and_hear(client: WsClient, text: str, timeout: float = 10) -> float:
    """Seconds from ``say`` to its first audio frame (the reply must play to its end)."""
    since = client.mark()
    t0 = time.monotonic()
    await client.say(text)
    await client.wait_event("audio_start", timeout, since=since)
    took = time.monotonic() - t0
    end = await client.wait_event("audio_end", timeout, since=since)
    assert end["reason"] == "done", end
    return took


async def test_a_flood_of_router_sock_restarts_nothing_and_the_mesh_serves_on(
    mesh: MeshProc,
) -> None:
    before = restarts(mesh)
    endpoint = f"ipc://{mesh.run_dir}/router.sock"
    flooder = subprocess.Popen(
        [sys.executable, "-c", FLOODER, endpoint, str(FLOOD_S), str(FLOOD_MAX), str(FLOOD_RATE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    served: list[float] = []
    try:
        async with await WsClient.connect(mesh.ws_url) as client:
            deadline = time.monotonic() + FLOOD_S
            while flooder.poll() is None and time.monotonic() < deadline + 10:
                served.append(await say_and_hear(client, "Still here.", timeout=15))
        out, _ = flooder.communicate(timeout=FLOOD_S + 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            flooder.kill()
        flooder.wait(timeout=10)
    fields = out.split()
    sent, took = int(fields[0]), float(fields[1])
    served.sort()
    print(  # the figures (run with -s): how hard the flood was, what the client saw
        f"flood: {sent} messages queued in {took:.1f} s; {len(served)} says during it, "
        f"say -> first audio median {1000 * served[len(served) // 2]:.0f} ms, "
        f"max {1000 * served[-1]:.0f} ms"
    )
    assert sent > 10_000, f"the flooder sent only {sent} messages"
    assert len(served) >= 3, f"only {len(served)} replies during the flood"
    assert max(served) < 5.0, f"a say waited {max(served):.1f} s for audio during the flood"
    assert restarts(mesh) == before, mesh.log_text()[-3000:]
    # No actor was lost for a moment either (the router kept up with every heartbeat).
    assert "presumed dead" not in mesh.log_text() and "disconnected" not in mesh.log_text()
    assert http_status(mesh.url + "health") == 200

    def router_info() -> dict[str, object]:
        return next(r for r in mesh.status().actors if r["name"] == "router")["info"]

    # Our client has left; a forged session would stay (the heartbeat info lags by 0.5 s).
    wait_for(lambda: router_info().get("sessions") == 0, 5, "no session in the router")
    assert "forged" not in json.dumps(router_info())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    frames=st.lists(st.binary(max_size=64), min_size=1, max_size=4),
    command=st.integers(0, 255),
    body=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=20),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids),
        max_leaves=8,
    ),
)
def test_fuzzed_frames_on_every_mesh_socket_change_nothing(
    mesh: MeshProc, frames: list[bytes], command: int, body: object
) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = []
    try:
        for name in ("router.sock", "supervisor.sock"):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"ipc://{mesh.run_dir}/{name}")
            socks.append(sock)
            sock.send_multipart(frames)
            sock.send_multipart([b"VXM1", bytes((command,)), msgpack.packb(body)])
            sock.send_multipart([protocol.VERSION, *frames[:2]])
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


async def test_after_the_fuzz_every_actor_is_as_it_was(mesh: MeshProc) -> None:
    """Runs after the fuzz (file order): nothing restarted, the mesh serves."""
    assert all(n == 0 for n in restarts(mesh).values()), restarts(mesh)
    assert http_status(mesh.url + "health") == 200
    async with await WsClient.connect(mesh.ws_url) as client:
        await say_and_hear(client, "The mesh survived the fuzz.")
    await asyncio.sleep(0)
