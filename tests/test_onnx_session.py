"""The ONNX models whose batch shapes follow the traffic run without onnxruntime's memory arena, which keeps
every block it ever handed out."""

from __future__ import annotations

import numpy as np

from semproxy.cache.onnx_minilm import OnnxMiniLM
from semproxy.cache.pair_encoder import PairEncoder
from semproxy.compress.classifier import KeepClassifier


def test_the_models_whose_batches_follow_the_traffic_run_without_the_arena_and_still_answer() -> None:
    minilm, pairs = OnnxMiniLM(), PairEncoder.packaged()
    for model in (minilm, pairs):
        assert model._session.get_session_options().enable_cpu_mem_arena is False
    vectors = minilm.embed(["how do I reset my password", "a much longer prompt " * 30])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    scores = pairs.score([("how do I reset my password", "how can I reset my password")])
    assert 0.0 <= float(scores[0]) <= 1.0


def test_the_compressor_keeps_its_bounded_arena_and_leaves_the_cores_to_the_event_loop() -> None:
    options = KeepClassifier.packaged(threads=1)._session.get_session_options()
    assert options.enable_cpu_mem_arena is True
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
