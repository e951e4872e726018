"""One way to open an ONNX model on the CPU, shared by the embedder, the pair encoder and the compressor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semproxy.errors import ConfigError


def cpu_session(model: Path, *, threads: int, spin: bool = True, arena: bool = False) -> Any:
    """An onnxruntime session on `threads` threads, by default without onnxruntime's memory arena.

    The arena keeps every block it ever handed out and grows by powers of two as larger batches come: the
    int8 MiniLM's grew 352 MB over 3,000 batches of mixed sizes against 38 MB without it, at the same median
    time per batch (43 ms). A proxy's batches vary with its traffic, so its memory crept up in steps for as
    long as it ran. Without the arena, tensors are freed after each run. The compressor keeps it (`arena`):
    its batches have a fixed largest shape, and without the arena its runs took twice as long (28 against
    15 ms a window on two threads), the pages of its large tensors being mapped afresh each run."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError("this model needs onnxruntime") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_cpu_mem_arena = arena
    if not spin:  # spinning threads would take the cores from the event loop between runs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
