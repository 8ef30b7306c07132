"""An onnxruntime session on the CPU, as the small models here want it (Silero, Smart Turn)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime


def cpu_session(path: Path, *, threads: int = 1) -> onnxruntime.InferenceSession:
    """``threads`` intra-op threads, one inter-op thread, warnings and worse logged only."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(
        str(path), sess_options=opts, providers=["CPUExecutionProvider"]
    )
