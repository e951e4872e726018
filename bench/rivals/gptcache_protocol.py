"""GPTCache's default semantic cache on a store-then-ask protocol, for bench/verifier_bench.py.

Run in the rivals' venv (``bash bench/rivals/install.sh``)::

    .venv-rivals/bin/python bench/rivals/gptcache_protocol.py INPUT.npz OUTPUT.json

``INPUT.npz`` holds ``stored_vectors`` and ``asked_vectors`` (MiniLM, unit length, float32) and the texts
(``stored_texts``, ``asked_texts``). GPTCache is set up as in its README (sqlite + faiss, the default
``SearchDistanceEvaluation`` and the default ``Config``, i.e. similarity threshold 0.8), with two changes:
the embedding function returns the precomputed MiniLM vector of a text instead of running the same model
again, so the run takes seconds per thousand prompts; and the store holds every prompt (GPTCache's default
``max_size`` of 1,000 would evict most of them). Each stored text is ``put`` with its index as the
answer, then every asked text is looked up with ``get``. The output lists, per asked text, the index of
the answer GPTCache returned, or null.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gptcache_lookup import EMBEDDING_DIMENSION, forbid_runtime_pip, storage_dir


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    data = np.load(source, allow_pickle=False)
    vectors: dict[str, Any] = {}
    for text, vector in zip(data["stored_texts"].tolist(), data["stored_vectors"], strict=True):
        vectors[text] = vector
    for text, vector in zip(data["asked_texts"].tolist(), data["asked_vectors"], strict=True):
        vectors[text] = vector
    forbid_runtime_pip()
    from gptcache import Cache, Config
    from gptcache.adapter.api import get, put
    from gptcache.manager import manager_factory
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=lambda text, **_: np.asarray(vectors[text], dtype=np.float32),
        # GPTCache evicts beyond 1,000 entries by default (its `max_size` argument is not used with the
        # default memory eviction; `eviction_params` is): here it must hold every stored prompt.
        data_manager=manager_factory("sqlite,faiss", data_dir=storage_dir(),
                                     eviction_params={"max_size": len(vectors) + 1000},
                                     vector_params={"dimension": EMBEDDING_DIMENSION}),
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(),
    )
    started = time.perf_counter()
    for i, text in enumerate(data["stored_texts"].tolist()):
        put(text, str(i), cache_obj=cache)
    answers = []
    for text in data["asked_texts"].tolist():
        answer = get(text, cache_obj=cache)
        answers.append(None if answer is None else int(answer))
    print(f"[gptcache] {len(answers)} lookups in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    target.write_text(json.dumps({"answers": answers, "similarity_threshold": Config().similarity_threshold}))


if __name__ == "__main__":
    main()
