"""The events a client gets: ``voxmesh.mesh.events`` is the one definition, the doc's table
(docs/client-protocol.md) names exactly its types and fields, and what a real mesh sends
parses back through it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshproc import MeshProc, mesh_up
from speechgen import piper_wav

from voxmesh.actors.router.session import State
from voxmesh.client import MicStream, WsClient
from voxmesh.client.events import EventLog
from voxmesh.mesh import events
from voxmesh.mesh.errors import ErrorCode, error_event

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the package
DOC = ROOT / "docs" / "client-protocol.md"
RATE = 16000
TURN_S = 20.0  # one spoken turn (VAD, ASR) on a busy 2-core box
LONG = "Once upon a time there was a lighthouse keeper who counted the ships every night. " * 3


def doc_events() -> dict[str, tuple[set[str], set[str]]]:
    """type -> (fields, optional fields), from the table under "WebSocket: server → client"."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## WebSocket: server → client", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[set[str], set[str]]] = {}
    for line in section.splitlines():
        row = re.match(r"\| `(\w+)` \| ([^|]*) \|", line)
        if row is None:
            continue
        assert row[1] not in rows, f"{row[1]} has two rows"
        cells = re.findall(r"`(\w+)`( \(optional\))?", row[2])
        rows[row[1]] = ({name for name, _ in cells}, {name for name, opt in cells if opt})
    return rows


def test_the_doc_names_exactly_the_registered_events_and_fields() -> None:
    doc = doc_events()
    code = {
        name: (set(events.field_names(cls)), set(events.optional_fields(cls)))
        for name, cls in events.registry().items()
    }
    assert sorted(doc) == sorted(code)
    for name, (fields, optional) in code.items():
        assert doc[name] == (fields, optional), name


def test_error_event_is_the_registered_error() -> None:
    sent = error_event(ErrorCode.NO_SLOT, "full")
    assert sent == {"type": "error", "code": "no_slot", "message": "full"}
    assert events.parse(sent) == events.Error(code="no_slot", message="full")


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "dance"},
        {"text": "no type"},
        {"type": "reply"},
        {"type": "reply", "text": "hi", "extra": 1},
        {"type": "transcript", "text": "hi", "final": 1},
        {"type": "vad", "event": "speech_pause", "sample": 0},
        {"type": "audio_start", "utterance_id": True},
    ],
)
def test_parse_is_strict(bad: dict[str, object]) -> None:
    with pytest.raises(events.EventError):
        events.parse(bad)


def test_optional_fields_travel_only_when_set() -> None:
    assert events.Clear().as_dict() == {"type": "clear"}
    assert events.Clear(t_issued=1.5, t_last_frame=1.0).as_dict() == {
        "type": "clear",
        "t_issued": 1.5,
        "t_last_frame": 1.0,
    }
    assert events.parse({"type": "clear", "t_last_frame": None}) == events.Clear()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshProc]:
    with mesh_up(tmp_path, tts="mock") as running:
        yield running


async def test_every_event_a_mesh_sends_parses(mesh: MeshProc) -> None:
    speech, rate = piper_wav("Please send me the report by Friday.")
    async with (
        await WsClient.connect(mesh.ws_url, sample_rate=rate) as client,
        MicStream(client, rate) as mic,
    ):
        await client.send_json({"type": "voice", "voice": "mock:mock"})
        await client.wait_event("voice", 5)
        await client.send_json({"type": "voice", "voice": "nope:nope"})
        await client.wait_event("error", 5, code="unknown_voice")
        await client.send_str("{not json")
        await client.wait_event("error", 5, code="bad_json")

        since = client.mark()
        await client.say(LONG)
        await client.wait_event("audio_start", 5, since=since)
        await client.wait_until(lambda: len(client.frames) >= 10, 5, "10 frames")
        await client.interrupt()
        await client.wait_event("clear", 5, since=since)
        await client.wait_event("audio_end", 5, since=since, reason="interrupted")
        await client.wait_event("state", 5, since=since, state="listening")

        since = client.mark()
        await client.text("Hello there.")
        await client.wait_event("transcript", 5, since=since, final=True)
        await client.wait_event("audio_end", 10, since=since, reason="done")

        since = client.mark()
        mic.queue(speech)
        mic.queue_silence(1.5)
        await client.wait_event("vad", TURN_S, since=since, event="speech_end")
        await client.wait_event("transcript", TURN_S, since=since, final=True)
        await client.wait_event("audio_end", TURN_S, since=since, reason="done")

    bad: list[str] = []
    kinds: set[str] = set()
    for got in client.events:
        try:
            event = events.parse(got.data)
        except events.EventError as exc:
            bad.append(f"{got.data}: {exc}")
            continue
        kinds.add(event.TYPE)
        assert event.as_dict() == got.data  # parse is the exact inverse of what was sent
        if isinstance(event, events.State):
            assert event.state in {s.value for s in State}
        elif isinstance(event, events.AudioEnd):
            assert event.reason in {"done", "interrupted", "failed"}
        elif isinstance(event, events.Error):
            assert ErrorCode.of(event.code)
    assert not bad, bad
    assert kinds == set(events.registry()), set(events.registry()) - kinds


def test_a_transcript_that_continues_replaces_the_last_users_turn() -> None:
    log = EventLog()
    for text, final, continues in [
        ("Can you", False, None),
        ("Can you tell me that?", True, None),
        ("Can you tell me the way", False, True),
        ("Can you tell me the way to the museum?", True, True),
        ("Thanks.", True, None),
    ]:
        ev = events.Transcript(text=text, final=final, continues=continues)
        log.record(events.parse(ev.as_dict()).as_dict())
    assert log.user_turns() == ["Can you tell me the way to the museum?", "Thanks."]
    assert log.user_turns(since=4) == ["Thanks."]
