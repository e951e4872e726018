"""Reworded questions for the semantic-hit scenarios of bench/proxy_bench.py.

A semantic hit needs a prompt that means what a stored one means and that the hit verifier accepts at
its default settings (`semproxy/cache/verifier.py`: no rule may object, and the pair model's score must
reach the operating point of the default error budget). So each rewording keeps every content word, number
and name of its question and changes only what a person adds around a question:

* a greeting or a lead-in before it ("Hello! ", "Quick question: ", "Hello, " with the question's first
  letter lower-cased after a comma);
* a closing after it (" Thanks!", " Thank you.", " I'm curious.");
* a contracted or alternative opening ("What's" / "What is", "How can I" / "How do I").

One change at a time, on questions specific enough to carry it: the verifier rightly reads a greeting
plus a closing, or words such as "Cheers" or "Good morning" (content words, to it), added to a short
question as a request that may differ, and rejects many of them ("What causes inflation in an economy?"
lost a third of its rewordings and was replaced). At the commit these lists were chosen at, the verifier
accepted 364 of the 368 rewordings in-process at its default budget; the benchmark requires 95 %.

Each prompt may be sent only once per tenant: a semantic hit stores an alias under the reworded prompt's
exact key, so the same prompt a second time would be an exact hit. `semantic_requests` goes round the
questions (consecutive prompts ask different things) and, when a run needs more prompts than one tenant's
368, carries on with the next tenant (another API key, so another cache scope, seeded with the same
questions): every (tenant, prompt) pair is sent once.
"""

from __future__ import annotations

import itertools
import random

QUESTIONS = [
    "How do I reverse a linked list in Python?", "What is the difference between TCP and UDP?",
    "Explain how a hash map handles collisions.", "How do central banks use interest rates to fight inflation?",
    "How does photosynthesis work in plants?", "What is the capital of Australia and why?",
    "How can I improve my sleep quality?", "What are the main causes of the French Revolution?",
    "How do vaccines train the immune system?", "What is a good way to learn a new language?",
    "How do I center a div with CSS flexbox?", "Why is the sky blue during the day?",
]
# Alternative openings that ask the same thing; a question without one keeps its own opening only.
OPENINGS = {"What is ": ["What's "], "How do I ": ["How can I "], "How can I ": ["How do I "],
            "Explain how ": ["Please explain how "], "Why is ": ["Why's "]}
LEAD_INS = ["Please tell me: ", "Tell me, ", "So, ", "Please, ", "Quick question: ", "I was wondering, ",
            "Hello, ", "Hello! ", "Hey, "]
CLOSINGS = [" Please.", " Thanks in advance.", " Please tell me.", " I want to know.", " I would like to know.",
            " Thanks!", " Thank you.", " Please explain.", " I'm curious."]


def openings(question: str) -> list[str]:
    """The question as written, then with each alternative opening that applies."""
    forms = [question]
    for opening, others in OPENINGS.items():
        if question.startswith(opening):
            forms += [other + question.removeprefix(opening) for other in others]
    return forms


def reword(form: str, lead_in: str, closing: str) -> str:
    """`form` with a lead-in and a closing; after a comma the question goes on in lower case."""
    if lead_in.endswith(", "):
        form = form[0].lower() + form[1:]
    return f"{lead_in}{form}{closing}"


def rewordings(question: str, *, seed: int = 0) -> list[str]:
    """Every distinct rewording of one question (never the question itself), in a fixed shuffled order."""
    additions = [("", ""), *((lead_in, "") for lead_in in LEAD_INS), *(("", closing) for closing in CLOSINGS)]
    found = {reword(form, lead_in, closing) for form in openings(question) for lead_in, closing in additions}
    found.discard(question)
    ordered = sorted(found)
    random.Random(f"{seed}:{question}").shuffle(ordered)  # lead-ins and closings spread over the run
    return ordered


def semantic_requests(count: int) -> list[tuple[int, str]]:
    """`count` (tenant number, prompt) pairs, no pair twice. Every tenant has its own cache scope (seeded
    with `QUESTIONS`), so when one tenant's rewordings run out the next tenant asks them again."""
    rows = itertools.zip_longest(*(rewordings(q) for q in QUESTIONS))
    per_tenant = [prompt for row in rows for prompt in row if prompt is not None]
    return [(i // len(per_tenant), per_tenant[i % len(per_tenant)]) for i in range(count)]
