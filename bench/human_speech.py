"""Recorded human speech for the end-of-turn bench, taken from three packages' sources on PyPI.

Every other speech bench speaks with espeak, which Smart Turn was not trained on. These are
people, with the pauses people make:
- pyannote-audio's test data: 13 AMI meeting excerpts (CC BY 4.0, far-field mics), and its
  sample, a phone call between two people; both with RTTM speaker labels;
- whisper.cpp's jfk.wav (inside pywhispercpp's sdist): "ask not what your country can do
  for you", read with long pauses;
- pocketsphinx's test data: five LibriVox sentences (Sense and Sensibility, public domain)
  and eight short commands and numbers.

Fetched when the bench first runs (pinned SHA-256; only the audio and labels are kept, under
``VOXMESH_HUMAN_SPEECH`` or ~/.cache/voxmesh/human-speech), never by the mesh itself.

A track is one speaker's audio: in the labelled recordings, the other speakers' solo speech
is silenced, so the track is what a voice bot would hear from that speaker, and the labels
say, of each pause, whether another speaker took the floor in it.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxmesh.speech.vad import SAMPLE_RATE

PYPI = "https://files.pythonhosted.org/packages"


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str
    members: tuple[str, ...]  # path prefixes inside the tarball to keep


SOURCES = {
    "pyannote_audio-4.0.7": Source(
        f"{PYPI}/6d/d7/03b1d00d431c7be1d98635fefb99c2da64d9b84b4b8a06d5302666a96c88/"
        "pyannote_audio-4.0.7.tar.gz",
        "3a903dfb5ca711d134cc2522561c9158b186836f5d62e8a57c46c6648e8a8229",
        ("src/pyannote/audio/sample/sample.", "tests/data/", "LICENSE"),
    ),
    "pocketsphinx-5.1.1": Source(
        f"{PYPI}/61/e7/13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c/"
        "pocketsphinx-5.1.1.tar.gz",
        "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
        (
            "test/data/librivox/",
            "test/data/cards/",
            "test/data/goforward.raw",
            "test/data/numbers.raw",
            "test/data/something.raw",
            "test/data/forever/",
            "LICENSE",
        ),
    ),
    "pywhispercpp-1.5.1": Source(
        f"{PYPI}/9f/35/610787a277e177e6b7983277a35a2969c0876b46c0d889bc6a0c4b4ac4a7/"
        "pywhispercpp-1.5.1.tar.gz",
        "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5",
        ("whisper.cpp/samples/jfk.wav", "whisper.cpp/LICENSE"),
    ),
}
OTHER_TURN_S = 1.0  # another speaker's segment this long takes the floor (not a backchannel)
MIN_SPEECH_S = 3.0  # a speaker with less than this in a recording makes no track


@dataclass
class Track:
    name: str
    kind: str  # "conversation" (labelled) or "read" (one speaker, every pause within a turn)
    pcm: np.ndarray  # float32, 16 kHz
    others: list[tuple[float, float]] = field(default_factory=list)  # other speakers' speech
    mine: list[tuple[float, float]] = field(default_factory=list)  # this speaker's segments


def corpus_dir() -> Path:
    env = os.environ.get("VOXMESH_HUMAN_SPEECH")
    return Path(env) if env else Path.home() / ".cache" / "voxmesh" / "human-speech"


def fetch(root: Path | None = None) -> Path:
    """The corpus directory, downloading what is not there yet (about 34 MB, once)."""
    root = root or corpus_dir()
    for name, src in SOURCES.items():
        if (root / name / ".complete").exists():
            continue
        with urllib.request.urlopen(src.url, timeout=120) as resp:
            blob = resp.read()
        if hashlib.sha256(blob).hexdigest() != src.sha256:
            raise RuntimeError(f"{src.url} is not the pinned file")
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            for m in tar.getmembers():
                rel = m.name.split("/", 1)[-1]
                if m.isfile() and rel.startswith(src.members):
                    out = root / name / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    data = tar.extractfile(m)
                    assert data is not None
                    out.write_bytes(data.read())
        (root / name / ".complete").touch()
    return root


def load(path: Path) -> np.ndarray:
    """16 kHz mono float32 from a WAV (PCM int16 or IEEE float32) or headerless int16 .raw."""
    raw = path.read_bytes()
    if path.suffix == ".raw":
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    fmt, at = None, 12  # RIFF chunks after "RIFF<size>WAVE"; wave.open refuses float
    while at + 8 <= len(raw):
        tag, size = raw[at : at + 4], struct.unpack_from("<I", raw, at + 4)[0]
        body = raw[at + 8 : at + 8 + size]
        if tag == b"fmt ":
            fmt = struct.unpack_from("<HHI", body)  # format, channels, rate
        elif tag == b"data" and fmt is not None:
            if fmt[1:] != (1, SAMPLE_RATE):
                raise ValueError(f"{path}: {fmt[1]} channels at {fmt[2]} Hz, not 16 kHz mono")
            if fmt[0] == 3:
                return np.frombuffer(body, "<f4").copy()
            return np.frombuffer(body, "<i2").astype(np.float32) / 32768
        at += 8 + size + (size & 1)
    raise ValueError(f"{path}: no audio in it")


def rttm(text: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{recording: {speaker: [(start_s, end_s), ...]}} of RTTM lines."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER":
            start = float(f[3])
            out.setdefault(f[1], {}).setdefault(f[7], []).append((start, start + float(f[4])))
    return out


def speaker_tracks(
    name: str, pcm: np.ndarray, speakers: dict[str, list[tuple[float, float]]]
) -> list[Track]:
    """One track a speaker: their segments kept, the rest silenced (overlaps stay mixed)."""
    tracks = []
    for who, mine in sorted(speakers.items()):
        if sum(e - s for s, e in mine) < MIN_SPEECH_S:
            continue
        keep = np.zeros(pcm.size, bool)
        for s, e in mine:
            keep[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)] = True
        others = sorted(seg for o, segs in speakers.items() if o != who for seg in segs)
        track = Track(
            f"{name}:{who}", "conversation", np.where(keep, pcm, 0.0), others, sorted(mine)
        )
        tracks.append(track)
    return tracks


def tracks(root: Path | None = None) -> list[Track]:
    root = fetch(root)
    out: list[Track] = []
    sample = root / "pyannote_audio-4.0.7/src/pyannote/audio/sample"
    labels = rttm((sample / "sample.rttm").read_text())["sample"]
    out += speaker_tracks("call", load(sample / "sample.wav"), labels)
    data = root / "pyannote_audio-4.0.7/tests/data"
    meetings = rttm("\n".join(p.read_text() for p in sorted(data.glob("debug.*.rttm"))))
    files = {p.stem.replace("ñ", "n"): p for p in data.glob("*.wav")}  # "trñ00.wav": trn00
    for uri, speakers in sorted(meetings.items()):
        out += speaker_tracks(f"ami-{uri}", load(files[uri]), speakers)
    read = [root / "pywhispercpp-1.5.1/whisper.cpp/samples/jfk.wav"]
    ps = root / "pocketsphinx-5.1.1/test/data"
    read += sorted(ps.glob("librivox/*.wav")) + sorted(ps.glob("cards/*.wav"))
    read += sorted(ps.glob("*.raw")) + sorted(ps.glob("forever/*.wav"))
    out += [Track(p.stem, "read", load(p)) for p in read]
    return out


def tracks_or_skip() -> list[Track]:
    """``tracks()``, or a bench Skip that says what to do when they cannot be fetched."""
    from .registry import Skip

    try:
        return tracks()
    except OSError as exc:  # offline: URLError is one
        raise Skip(
            f"the recordings could not be fetched ({exc}); put a copy of {corpus_dir()} "
            "there, or point VOXMESH_HUMAN_SPEECH at one"
        ) from exc
