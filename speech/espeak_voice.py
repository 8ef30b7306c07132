"""espeak-ng as a `Voice`: robotic but tiny and fast; audio streams while it is made.

Needs the `espeak-ng` program (Debian/Ubuntu: `apt-get install espeak-ng`). Piper bundles
espeak-ng's data for phonemes only, not the program.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import IO

import numpy as np

from voxmesh.speech.voice import OUTPUT_RATE, LeadingSilenceTrimmer, to_output_rate

_HEADER = 44  # espeak-ng --stdout writes a plain 44-byte PCM WAV header, sizes left open
_READ = 4096


class EspeakVoice:
    name = "espeak"
    provider = "espeak-ng"
    sample_rate = OUTPUT_RATE

    def __init__(
        self,
        voice: str = "en-us",
        *,
        words_per_minute: int = 175,
        pitch: int | None = None,
        executable: str = "espeak-ng",
        trim_leading_silence: bool = True,
        trim_threshold: int = 64,
        trim_keep_ms: float = 5.0,
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(
                f"{executable!r} not found; install it (apt-get install espeak-ng)"
            )
        self.executable = path
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.pitch = pitch
        self.trim = trim_leading_silence
        self.trim_threshold = trim_threshold
        self.trim_keep_ms = trim_keep_ms

    def _command(self) -> list[str]:
        cmd = [self.executable, "--stdout", "-v", self.voice, "-s", str(self.words_per_minute)]
        if self.pitch is not None:
            cmd += ["-p", str(self.pitch)]
        return cmd

    def synthesize(self, text: str, *, first: bool = True) -> Iterator[np.ndarray]:
        if not text.strip():
            return
        # Text goes in on stdin, so a chunk starting with "-" is never read as an option.
        proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _feed(proc.stdin, text.encode("utf-8"))
            fd = proc.stdout.fileno()
            header = _read_exactly(fd, _HEADER)
            if len(header) < _HEADER or header[:4] != b"RIFF" or header[36:40] != b"data":
                raise RuntimeError("espeak-ng did not produce a WAV stream")
            rate = struct.unpack_from("<I", header, 24)[0]
            trimmer = None
            if first and self.trim:
                trimmer = LeadingSilenceTrimmer(
                    rate, threshold=self.trim_threshold, keep_ms=self.trim_keep_ms
                )
            yield from to_output_rate(_samples(fd), rate, trimmer)
        finally:
            # The consumer may stop early (barge-in): never leave the process behind.
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()


def _samples(fd: int) -> Iterator[np.ndarray]:
    """int16 samples as espeak writes them: os.read returns as soon as there is something,
    so audio streams out while espeak is still speaking."""
    odd = b""
    while block := os.read(fd, _READ):
        block = odd + block
        cut = len(block) // 2 * 2
        odd = block[cut:]
        yield np.frombuffer(block[:cut], "<i2").astype(np.int16)


def _feed(stdin: IO[bytes], data: bytes) -> None:
    # A pipe takes 64 KiB without blocking; beyond that espeak may be blocked writing audio
    # we have not read yet, so a writer thread avoids the deadlock.
    def write() -> None:
        with contextlib.suppress(BrokenPipeError):
            stdin.write(data)
            stdin.close()

    if len(data) < 32768:
        write()
    else:
        threading.Thread(target=write, daemon=True).start()


def _read_exactly(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = os.read(fd, n - len(buf))
        if not part:
            break
        buf += part
    return buf
