#!/usr/bin/env python3
"""Put Smart Turn v3.2 (BSD-2-Clause) into speech/models/, once, at install time.

The model ships inside the pipecat-ai 1.14.0 wheel; pip downloads that one wheel without its
dependencies (none of Pipecat is installed) and the model file and the licence notice are
taken out of it. Nothing downloads at run time: speech/smart_turn.py only opens the file.
Idempotent: a file already there with the pinned SHA-256 is kept. Offline, it fails with what
to do instead (a wheel you copied: --wheel PATH; or run without it: vad.turn_model = "off").
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "pipecat-ai==1.14.0"
MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
LICENSE_MEMBER = "pipecat_ai-1.14.0.dist-info/licenses/LICENSE"
SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
DEST = Path(__file__).resolve().parent.parent / "speech" / "models"
MODEL = DEST / "smart-turn-v3.2-cpu.onnx"
LICENSE = DEST / "SMART-TURN-LICENSE"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp.glob("pipecat_ai-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise SystemExit(
            f"fetch-smart-turn: could not download the {WHEEL} wheel (offline?): {tail[0]}\n"
            "  copy that wheel here and run: python scripts/fetch-smart-turn.py --wheel PATH\n"
            '  or run without the turn model: vad.turn_model = "off" (VOXMESH_VAD_TURN_MODEL=off)'
        )
    return wheels[0]


def extract(wheel: Path) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        part = MODEL.with_name(MODEL.name + ".part")
        part.write_bytes(z.read(MEMBER))
        if sha256(part) != SHA256:
            part.unlink()
            raise SystemExit(f"fetch-smart-turn: {MEMBER} in {wheel.name} is not the pinned file")
        LICENSE.write_bytes(z.read(LICENSE_MEMBER))
        part.replace(MODEL)  # atomic: a half-written model is never taken for the real one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="a pipecat-ai 1.14.0 wheel already here")
    args = ap.parse_args()
    if MODEL.exists() and LICENSE.exists() and sha256(MODEL) == SHA256:
        print(f"fetch-smart-turn: {MODEL.relative_to(DEST.parent.parent)} is there")
        return
    if args.wheel is not None:
        if not args.wheel.is_file():
            raise SystemExit(f"fetch-smart-turn: no wheel at {args.wheel}")
        extract(args.wheel)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            extract(download(Path(tmp)))
    print(f"fetch-smart-turn: {MODEL.relative_to(DEST.parent.parent)} (from {WHEEL}, BSD-2-Clause)")


if __name__ == "__main__":
    main()
