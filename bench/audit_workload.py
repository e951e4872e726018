"""A classifier's traffic for bench/audit_bench.py: templated prompts that differ in a word or two and need
other answers, with the ground truth of every one, and a deterministic upstream that answers it.

The prompts ask one of two tasks about a short customer review (5 to 25 words), at temperature 0, under a
fixed system prompt per task:

* **positive** ("Is this review positive? Answer yes or no."): "yes" when every aspect the review mentions is
  praised, else "no";
* **sentiment** ("... positive, negative or mixed"): "positive", "negative" or "mixed".

Reviews are made from parts (an opener naming the product, one or two aspects, a neutral closer, a style:
plain, lower case, excited, terse, with a typo). A *family* shares everything but the aspects' polarity, so
its members differ by a word or two ("The battery lasts all day" / "The battery barely lasts half a day") and
often need other labels. Each prompt's answer is a function of (task, normalized review) only: a reworded
instruction, another layout or a review in other case, punctuation or spacing asks the same question and gets
the same answer, so a cache may serve it.

The request stream mixes, in a seeded order:

* **new**: a review asked for the first time in that task, either from a new family or a sibling of a review
  already asked (`flip`: the sibling asked before needs another answer; these are the traps);
* **exact**: a prompt sent before, byte for byte;
* **reword**: a review asked before, with another instruction, layout or formatting (should be a hit).

Two splits with disjoint seeds, products, aspects, openers, instructions and system prompts: "heldout" (what
the benchmark reports) and "tuning" (what one may tune on while building). `python bench/audit_workload.py
--split heldout --requests 5000` prints a summary and a few examples; `serve` runs the upstream
(`--labels FILE`, written by `write_labels`): POST /v1/chat/completions answers the label of the review it
finds after "Review:" in the last message, for the task its system prompt names; GET /calls counts the calls
(and any prompt it could not read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script too (`serve`)
from bench.fake_upstream import request_body

TASKS = ("positive", "sentiment")
LABELS = {"positive": ("yes", "no"), "sentiment": ("positive", "negative", "mixed")}
KINDS = ("new", "flip", "exact", "reword")
MODEL = "gpt-4o-mini"

# ------------------------------------------------------------------------------------------- the parts
# Every list is split in two: even positions belong to "tuning", odd ones to "heldout" (`_half`).

PRODUCTS = {
    "electronics": ["wireless earbuds", "headphones", "bluetooth speaker", "power bank", "phone charger",
                    "e-reader", "smart watch", "fitness tracker", "tablet", "laptop", "webcam", "portable monitor"],
    "kitchen": ["coffee maker", "blender", "toaster", "air fryer", "kettle", "espresso machine", "rice cooker",
                "stand mixer"],
    "home": ["desk lamp", "robot vacuum", "vacuum", "fan", "space heater", "humidifier", "air purifier",
             "floor lamp"],
    "apparel": ["rain jacket", "hiking boots", "running shoes", "winter coat", "backpack", "sneakers",
                "yoga pants", "wool socks"],
}
ASPECTS = {  # (praised, criticized): the two differ in a word or a few
    "electronics": [
        ("The battery lasts all day", "The battery barely lasts half a day"),
        ("The sound is crisp and clear", "The sound is muffled and tinny"),
        ("It pairs with my phone instantly", "It never pairs with my phone"),
        ("Charges really fast", "Charges really slow"),
        ("The screen is bright and sharp", "The screen is dim and blurry"),
        ("The app works fine", "The app crashes constantly"),
        ("Connection is rock solid", "Connection drops all the time"),
        ("Battery life is amazing", "Battery life is terrible"),
        ("The buttons feel great", "The buttons feel cheap"),
        ("Volume goes plenty loud", "Volume barely goes loud"),
    ],
    "kitchen": [
        ("Heats up fast", "Takes forever to heat up"),
        ("Super easy to clean", "Impossible to clean"),
        ("Quiet even on high", "Loud even on low"),
        ("Everything comes out evenly cooked", "Everything comes out half burnt"),
        ("The lid seals tight", "The lid leaks"),
        ("Makes a great cup every morning", "Makes a bitter cup every morning"),
        ("Fits nicely on the counter", "Takes up the whole counter"),
        ("The handle stays cool", "The handle gets way too hot"),
    ],
    "home": [
        ("Bright enough to read by", "Too dim to read by"),
        ("Quiet at night", "Noisy at night"),
        ("Cleans the whole room", "Misses half the room"),
        ("The remote works from across the room", "The remote only works up close"),
        ("Runs for hours without a problem", "Shuts off after an hour"),
        ("The filter is cheap to replace", "The filter is expensive to replace"),
        ("Easy to move around", "Heavy and hard to move around"),
        ("Does not smell at all", "Smells like burning plastic"),
    ],
    "apparel": [
        ("True to size", "Runs two sizes small"),
        ("Kept me dry in heavy rain", "Soaked through in light rain"),
        ("Comfortable right out of the box", "Painful right out of the box"),
        ("The zipper feels sturdy", "The zipper broke in a week"),
        ("The stitching is solid", "The stitching is coming apart"),
        ("Warm enough for winter", "Not warm enough for fall"),
        ("The color matches the photos", "The color looks nothing like the photos"),
        ("Still looks new after many washes", "Faded after one wash"),
    ],
    "any": [
        ("Arrived early and well packed", "Arrived late and badly packed"),
        ("Setup took five minutes", "Setup took five hours"),
        ("I would buy it again", "I would never buy it again"),
        ("Worth every penny", "Not worth a penny"),
        ("It feels solid", "It feels flimsy"),
        ("Customer service replied within a day", "Customer service never replied"),
        ("Does exactly what it says", "Does nothing it says"),
        ("Still works great after a month", "Stopped working after a month"),
        ("My kids love it", "My kids hate it"),
        ("Much better than my old one", "Much worse than my old one"),
        ("The instructions were clear", "The instructions were useless"),
        ("Highly recommend", "Do not recommend"),
        ("Great quality for the price", "Poor quality for the price"),
        ("Exceeded my expectations", "Fell short of my expectations"),
    ],
}
OPENERS = ["Bought {this} {p} for my dad.", "Got the {p} on sale.", "Second time buying {this} {p}.",
           "Ordered {this} {p} last week.", "Update on my {p}:", "We use {this} {p} every day.",
           "My wife picked {this} {p}.", "Got {this} {p} as a gift for my sister.", "Replaced my old {p}.",
           "Finally tried {this} {p}.", "Using the {p} for a month now.", "Bought {this} {p} twice now."]
CLOSERS = ["Shipping was normal.", "Used it daily.", "Came in a plain box.", "Paid full price.",
           "Got it in black.", "Ordered the large one."]
STYLES = ("plain", "plain", "lower", "excited", "terse", "typo")
FORMATS = ("as_is", "lower", "no_final_punct", "spaces", "exclaim", "upper_first")

INSTRUCTIONS = {  # (instruction, layouts it is used with)
    "positive": [
        "Is this review positive? Answer yes or no.",
        "Is the following review positive? Reply yes or no.",
        "Does the customer like the product? Answer yes or no.",
        "Is this customer happy with the product? Reply with yes or no.",
        "Answer yes or no: is the following review positive?",
        "Read the review below. Is it positive? yes/no",
        "Tell me if this review is positive. Just say yes or no.",
        "Yes or no: is this a positive review?",
        "Is the reviewer satisfied? Answer yes or no only.",
        "Would you say this review is positive? Answer only yes or no.",
    ],
    "sentiment": [
        "Classify the sentiment of this review as positive, negative or mixed.",
        "Classify the review's sentiment: positive, negative or mixed.",
        "What is the sentiment of the review below? One of: positive, negative, mixed.",
        "Is this review positive, negative or mixed? Answer with one word.",
        "Label this review as positive, negative or mixed.",
        "Sentiment of the following review (positive / negative / mixed)?",
        "Tag the review as positive, negative or mixed.",
        "Give the overall sentiment of this review (positive, negative, or mixed).",
    ],
}
LAYOUTS = ["{i}\n\nReview: {r}", "Review: {r}\n\n{i}", "{i}\nCustomer review: {r}", "{i}\n\nReview: \"{r}\"",
           "Customer review: {r}\n{i}", "{i}\n\nReview:\n{r}"]
SYSTEMS = {  # per split: task -> system prompt
    "tuning": {"positive": "You label customer reviews for an online shop. Reply with yes or no only.",
               "sentiment": "You label customer reviews for an online shop. Reply with positive, negative or "
                            "mixed only."},
    "heldout": {"positive": "You are a review classifier for a marketplace. Answer yes or no, nothing else.",
                "sentiment": "You are a review classifier for a marketplace. Answer positive, negative or "
                             "mixed, nothing else."},
}
MIN_WORDS, MAX_WORDS = 5, 25
SEEDS = {"tuning": 1701, "heldout": 2917}
MIX = {"new": 0.40, "exact": 0.25, "reword": 0.35}  # shares of the stream once something has been asked
SIBLING = 0.5  # a new review is a sibling of one asked before (same family) this often, when there is one


def _half(items: list[Any], split: str) -> list[Any]:
    return items[split == "heldout"::2]


# ------------------------------------------------------------------------------------------- reviews


@dataclasses.dataclass(frozen=True)
class Review:
    family: int
    text: str
    polarity: tuple[bool, ...]  # per aspect: praised?

    def label(self, task: str) -> str:
        if task == "positive":
            return "yes" if all(self.polarity) else "no"
        if all(self.polarity):
            return "positive"
        return "negative" if not any(self.polarity) else "mixed"


def normalize(review: str) -> str:
    """What the upstream's answer depends on: words in lower case, without punctuation or extra space."""
    return " ".join(re.sub(r"[^\w\s]", " ", review.lower()).split())


def _family(rng: random.Random, split: str, number: int) -> list[Review]:
    """The members of one family: the same parts, each aspect praised or criticized."""
    category = rng.choice(sorted(PRODUCTS))
    product = rng.choice(_half(PRODUCTS[category], split))
    pool = _half(ASPECTS[category], split) + _half(ASPECTS["any"], split)
    aspects = rng.sample(pool, 2 if rng.random() < 0.5 else 1)
    this = "these" if product.endswith("s") else "this"
    opener = rng.choice(_half(OPENERS, split)).format(p=product, this=this) if rng.random() < 0.7 else None
    closer = rng.choice(_half(CLOSERS, split)) if rng.random() < 0.3 else None
    style, typo_at = rng.choice(STYLES), rng.random()
    polarities: list[tuple[bool, ...]] = [(True,), (False,)]
    if len(aspects) == 2:
        polarities = rng.sample([(True, True), (True, False), (False, True), (False, False)], 3)
    rng.shuffle(polarities)
    members = []
    for polarity in polarities:
        said = [pair[0] if good else pair[1] for pair, good in zip(aspects, polarity, strict=True)]
        text = _styled([s for s in (opener, *said, closer) if s], style, typo_at)
        members.append(Review(number, text, polarity))
    return members


def _styled(sentences: list[str], style: str, typo_at: float) -> str:
    if style == "terse":
        return ", ".join(s.rstrip(".:").lower() if i else s.rstrip(".:") for i, s in enumerate(sentences))
    ends = "!" if style == "excited" else "."
    text = " ".join(s if s.endswith((".", ":")) else s + ends for s in sentences)
    if style == "lower":
        return text.lower().rstrip(".")
    if style == "typo":
        words = text.split(" ")
        at = int(typo_at * len(words[:3]))  # in the opener or the first words: shared by the whole family
        word = words[at]
        if len(word) > 3:
            words[at] = word[:1] + word[2] + word[1] + word[3:]
        return " ".join(words)
    return text


def _formatted(review: str, fmt: str) -> str:
    if fmt == "lower":
        return review.lower()
    if fmt == "no_final_punct":
        return review.rstrip(".!")
    if fmt == "spaces":
        return "  ".join(review.split(" ")).replace(".  ", ".   ") + " "
    if fmt == "exclaim":
        return review.replace(".", "!") if "." in review else review + "!"
    if fmt == "upper_first":
        return review[:1].upper() + review[1:] if review[:1].islower() else review[:1].lower() + review[1:]
    return review


# ------------------------------------------------------------------------------------------- the stream


@dataclasses.dataclass(frozen=True)
class Request:
    """One request of the stream and what its answer must be."""

    index: int
    kind: str  # new | flip | exact | reword
    task: str
    review: str  # the review as generated (the key of its label, normalized)
    system: str
    prompt: str  # the last user message
    truth: str
    variant: tuple[int, int, str]  # (instruction, layout, format) of the prompt

    def body(self) -> dict[str, Any]:
        return {"model": MODEL, "temperature": 0,
                "messages": [{"role": "system", "content": self.system}, {"role": "user", "content": self.prompt}]}


@dataclasses.dataclass
class Workload:
    """The stream of a split, with what the generator knows about it."""

    split: str
    requests: list[Request]
    reviews: dict[str, Review]  # normalized text -> review, every one made (asked or not)
    asked: dict[tuple[str, str], set[tuple[int, int, str]]]  # (task, review) -> (instruction, layout, format) sent
    texts: set[tuple[str, str]]  # (task, prompt trimmed) of every request made

    def labels(self) -> dict[str, Any]:
        """What the upstream needs: task per system prompt, label per task and normalized review."""
        return {"systems": {prompt: task for task, prompt in SYSTEMS[self.split].items()},
                "labels": {task: {key: review.label(task) for key, review in self.reviews.items()} for task in TASKS}}

    def summary(self) -> dict[str, Any]:
        """Counts that say whether the stream is what the docstring promises."""
        asked_reviews = {(r.task, normalize(r.review)) for r in self.requests}
        words = [len(r.review.split()) for r in self.requests]
        return {"split": self.split, "seed": SEEDS[self.split], "requests": len(self.requests),
                "kinds": dict(Counter(r.kind for r in self.requests)),
                "tasks": dict(Counter(r.task for r in self.requests)),
                "distinct_reviews_asked": len({key for _, key in asked_reviews}),
                "distinct_task_reviews_asked": len(asked_reviews),
                "distinct_prompts": len({(r.system, r.prompt) for r in self.requests}),
                "review_words": {"min": min(words, default=0), "max": max(words, default=0)},
                "labels": dict(Counter(r.truth for r in self.requests)),
                "near_pairs_different_label": near_pairs(self)}


def near_pairs(workload: Workload) -> int:
    """Pairs of asked reviews of one task, a few words apart (same family), that need different answers."""
    by_family: dict[tuple[str, int], set[str]] = {}
    for r in workload.requests:
        review = workload.reviews[normalize(r.review)]
        by_family.setdefault((r.task, review.family), set()).add(review.label(r.task) + "\0" + review.text)
    count = 0
    for members in by_family.values():
        labels = [m.split("\0")[0] for m in members]
        count += sum(a != b for i, a in enumerate(labels) for b in labels[i + 1:])
    return count


class _Builder:
    """Draws the stream one request at a time."""

    def __init__(self, split: str, seed: int) -> None:
        self.split, self.rng = split, random.Random(seed)
        self.family_rng = random.Random(seed * 7 + 1)
        self.reviews: dict[str, Review] = {}
        self.unasked: dict[str, dict[int, list[Review]]] = {task: {} for task in TASKS}  # task -> family -> rest
        self.asked: dict[tuple[str, str], set[tuple[int, int, str]]] = {}
        self.asked_labels: dict[tuple[str, int], set[str]] = {}
        self.sent: list[Request] = []
        self.texts: set[tuple[str, str]] = set()
        self.families = 0

    def build(self, n: int) -> Workload:
        for index in range(n):
            kind = "new" if not self.sent else self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
            self.sent.append(self._new(index) if kind == "new" else
                             self._exact(index) if kind == "exact" else self._reword(index))
        return Workload(self.split, self.sent, self.reviews, self.asked, self.texts)

    def _instructions(self, task: str) -> list[str]:
        return _half(INSTRUCTIONS[task], self.split)

    def _layouts(self) -> list[str]:
        return _half(LAYOUTS, self.split)

    def _new(self, index: int) -> Request:
        task = "positive" if self.rng.random() < 0.6 else "sentiment"
        open_families = [f for f, rest in self.unasked[task].items() if rest]
        if open_families and self.rng.random() < SIBLING:
            family = self.rng.choice(open_families)
            review = self.unasked[task][family].pop()
        else:
            review = self._start_family(task)
        seen = self.asked_labels.setdefault((task, review.family), set())
        kind = "flip" if seen - {review.label(task)} else "new"
        seen.add(review.label(task))
        fmt = "as_is" if self.rng.random() < 0.85 else self.rng.choice(FORMATS[1:])
        return self._request(index, kind, task, review, self._variant(task, fmt))

    def _variant(self, task: str, fmt: str) -> tuple[int, int, str]:
        return self.rng.randrange(len(self._instructions(task))), self.rng.randrange(len(self._layouts())), fmt

    def _start_family(self, task: str) -> Review:
        while True:
            members = _family(self.family_rng, self.split, self.families)
            self.families += 1
            words = [len(m.text.split()) for m in members]
            if min(words) >= MIN_WORDS and max(words) <= MAX_WORDS and \
                    not any(normalize(m.text) in self.reviews for m in members):
                break
        self.reviews.update((normalize(m.text), m) for m in members)
        for other in TASKS:
            self.unasked[other][members[0].family] = list(members)
        return self.unasked[task][members[0].family].pop()

    def _exact(self, index: int) -> Request:
        before = self.rng.choice(self.sent)
        return dataclasses.replace(before, index=index, kind="exact")

    def _reword(self, index: int) -> Request:
        earlier = self.rng.choice(self.sent)
        task, review = earlier.task, self.reviews[normalize(earlier.review)]
        used = self.asked[(task, review.text)]
        for _ in range(50):
            variant = self._variant(task, self.rng.choice(FORMATS))
            text = prompt_for(self.split, task, review.text, variant).strip()
            if variant not in used and (task, text) not in self.texts:
                return self._request(index, "reword", task, review, variant)
        return dataclasses.replace(earlier, index=index, kind="exact")

    def _request(self, index: int, kind: str, task: str, review: Review, variant: tuple[int, int, str]) -> Request:
        self.asked.setdefault((task, review.text), set()).add(variant)
        prompt = prompt_for(self.split, task, review.text, variant)
        self.texts.add((task, prompt.strip()))
        return Request(index, kind, task, review.text, SYSTEMS[self.split][task], prompt, review.label(task), variant)


def prompt_for(split: str, task: str, review: str, variant: tuple[int, int, str]) -> str:
    """The user message asking `task` about `review` with (instruction, layout, format) `variant`."""
    instruction, layout, fmt = variant
    template: str = _half(LAYOUTS, split)[layout]
    return template.format(i=_half(INSTRUCTIONS[task], split)[instruction], r=_formatted(review, fmt))


def build(split: str, requests: int) -> Workload:
    """The stream of `requests` requests of `split` (the same for the same arguments)."""
    if split not in SEEDS:
        raise ValueError(f"split must be one of {sorted(SEEDS)}")
    workload = _Builder(split, SEEDS[split]).build(requests)
    for r in workload.requests:  # the upstream reads every prompt back to the same label
        found = read_review(r.prompt)
        if found is None or workload.reviews.get(normalize(found)) is None or \
                workload.reviews[normalize(found)].label(r.task) != r.truth:
            raise AssertionError(f"the upstream would not read request {r.index} back: {r.prompt!r}")
    return workload


def reformatted(workload: Workload, sources: list[Request], seed: int) -> Iterator[Request]:
    """Requests never sent before: each source's prompt with its review in another format (same instruction
    and layout), round after round, for as long as the caller takes them."""
    rng = random.Random(seed)
    index = len(workload.requests)
    for _ in range(len(FORMATS)):
        for source in sources:
            instruction, layout, _ = source.variant
            used = workload.asked.setdefault((source.task, source.review), set())
            free = [(instruction, layout, f) for f in FORMATS if (instruction, layout, f) not in used
                    and (source.task, prompt_for(workload.split, source.task, source.review,
                                                 (instruction, layout, f)).strip()) not in workload.texts]
            if not free:
                continue
            variant = rng.choice(free)
            used.add(variant)
            prompt = prompt_for(workload.split, source.task, source.review, variant)
            workload.texts.add((source.task, prompt.strip()))
            yield dataclasses.replace(source, index=index, kind="reword", prompt=prompt, variant=variant)
            index += 1


# ------------------------------------------------------------------------------------------- the upstream

_REVIEW = re.compile(r"review:[ \t]*\n?([^\n]*)", re.IGNORECASE)


def read_review(prompt: str) -> str | None:
    """The review in a prompt: what follows "Review:" (on that line or the next one)."""
    found = _REVIEW.search(prompt)
    return found.group(1).strip().strip('"') if found else None


class Upstream:
    """An OpenAI-compatible chat endpoint that answers each review's label, keyed on the normalized review."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.systems: dict[str, str] = table["systems"]
        self.labels: dict[str, dict[str, str]] = table["labels"]
        self.counts: Counter[str] = Counter()

    def answer(self, body: dict[str, Any]) -> str | None:
        messages = body.get("messages") or [{}]
        system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
        task = self.systems.get(system)
        review = read_review(str(messages[-1].get("content", "")))
        if task is None or review is None:
            return None
        return self.labels[task].get(normalize(review))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, body = self._route(scope["method"], scope["path"], await request_body(receive))
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _route(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
        if method == "GET" and path == "/calls":
            return 200, dict(self.counts)
        if method == "POST" and path.endswith("/chat/completions"):
            body = json.loads(raw)
            self.counts["calls"] += 1
            label = self.answer(body)
            if label is None:
                self.counts["unreadable"] += 1
                return 400, {"error": {"message": "no review in this prompt", "type": "invalid_request_error"}}
            return 200, _completion(body, label)
        return 404, {"error": {"message": "not found", "type": "invalid_request_error"}}


def _completion(body: dict[str, Any], label: str) -> dict[str, Any]:
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    return {"id": "chatcmpl-audit", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", MODEL),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": label}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_words * 4 // 3 + 8, "completion_tokens": 1,
                      "total_tokens": prompt_words * 4 // 3 + 9}}


def write_labels(workload: Workload, path: Path) -> None:
    path.write_text(json.dumps(workload.labels()), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="summarize a split's stream and print examples")
    show.add_argument("--split", default="heldout", choices=sorted(SEEDS))
    show.add_argument("--requests", type=int, default=5000)
    run = commands.add_parser("serve", help="the upstream, on 127.0.0.1")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--labels", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "serve":
        import uvicorn

        upstream = Upstream(json.loads(args.labels.read_text(encoding="utf-8")))
        uvicorn.run(upstream, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                    lifespan="off")
        return
    workload = build(args.split, args.requests)
    print(json.dumps(workload.summary(), indent=2))
    for r in workload.requests[:: max(1, len(workload.requests) // 25)]:
        print(f"--- {r.index} {r.kind} {r.task} -> {r.truth}\n{r.prompt}")


if __name__ == "__main__":
    main()
