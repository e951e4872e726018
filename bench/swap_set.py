"""Requests changed in one place (a swap) and the same requests merely reworded, for bench/verifier_bench.py.

Generated from held-out prompts (``generate``): a number changed, a negation added, two names around a
direction word swapped, a name replaced by another of its kind, the programming language replaced; and, as
the control, the same prompt reworded without changing what it asks. Hand-written pairs (``HANDWRITTEN``)
add realistic chat requests of each kind, and the answer-language case: the same request written in
French, German or Spanish must not get the English answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    stored: str
    asked: str
    kind: str  # number, negation, direction, name, programming, written_in; or rewording
    swap: bool  # True: a different request (must not hit); False: the same request reworded (should hit)


NAME_GROUPS = {
    "country": "France Germany Spain Italy India China Japan Brazil Canada Mexico Russia Australia Egypt Kenya "
               "Nigeria Poland Sweden Norway Turkey Iran Pakistan Indonesia Argentina Chile Portugal Greece".split(),
    "city": "Paris London Berlin Madrid Rome Tokyo Delhi Mumbai Beijing Moscow Sydney Toronto Chicago Boston "
            "Seattle Dubai Singapore Bangalore Amsterdam Vienna Prague Lisbon Dublin".split(),
    "company": "Google Apple Microsoft Amazon Facebook Netflix Tesla Samsung IBM Intel Oracle Uber Airbnb "
               "Twitter LinkedIn Flipkart Infosys Nokia Sony Adobe".split(),
    "person": "Trump Obama Clinton Modi Putin Einstein Newton Gandhi Shakespeare Lincoln Hitler Musk Gates "
              "Jobs Zuckerberg Messi Ronaldo Federer Nadal Kejriwal".split(),
    "currency": "USD EUR GBP JPY INR CHF CAD AUD CNY".split(),
}
PROGRAMMING = "Python Java JavaScript C++ C# Ruby PHP Rust Swift Kotlin Scala Perl Haskell TypeScript".split()
PER_KIND = 400  # generated swaps kept per kind, so no kind dominates the total
_NAME_GROUP = {name: group for group, names in NAME_GROUPS.items() for name in names}
_AUXILIARIES = "is are was were can could should would will do does did has have".split()
_SUBJECTS = "i you we they it he she there people".split()
_DIRECTION = re.compile(r"\b([A-Za-z][\w+#.-]*) (to|than|into) ([A-Za-z][\w+#.-]*)\b")
_STOP = set("a an the my your our their his her its this that these those some any be get go".split())


def generate(texts: list[str], seed: int = 0) -> list[Variant]:
    """Swaps of each kind that applies to a text, and one rewording per text that got a swap."""
    rng = random.Random(seed)
    variants: list[Variant] = []
    kept: dict[str, int] = {}
    for text in texts:
        swaps = [v for v in (_number(text, rng), _negation(text), _direction(text), _name(text, rng),
                             _programming(text, rng)) if v is not None and kept.get(v[0], 0) < PER_KIND]
        for kind, asked in swaps:
            kept[kind] = kept.get(kind, 0) + 1
            variants.append(Variant(text, asked, kind, True))
        if swaps:
            variants.append(Variant(text, reword(text, rng), "rewording", False))
    return variants


def _number(text: str, rng: random.Random) -> tuple[str, str] | None:
    match = re.search(r"(?<![\w.])\d+(?![\w.]*\d)(?![A-Za-z])", text)
    if match is None:
        return None
    value = int(match.group())
    other = value + rng.randint(1, 9) if value < 1000 else value + 1
    return "number", text[:match.start()] + str(other) + text[match.end():]


def _negation(text: str) -> tuple[str, str] | None:
    words = text.split(" ")
    for i, word in enumerate(words[:-1]):
        if word.lower() in _AUXILIARIES and "not" not in text.lower().split():
            at = i + 2 if words[i + 1].lower().strip("?,.") in _SUBJECTS else i + 1
            return "negation", " ".join([*words[:at], "not", *words[at:]])
    return None


def _direction(text: str) -> tuple[str, str] | None:
    for match in _DIRECTION.finditer(text):
        left, word, right = match.groups()
        if left.lower() in _STOP or right.lower() in _STOP or left.lower() == right.lower():
            continue
        if not (left[0].isupper() and right[0].isupper()) or match.start() == 0:
            continue  # only names: "Paris to Rome", not "how to cook" or "immigrate to America"
        return "direction", text[:match.start()] + f"{right} {word} {left}" + text[match.end():]
    return None


def _name(text: str, rng: random.Random) -> tuple[str, str] | None:
    for match in re.finditer(r"\b[A-Z][A-Za-z]+\b", text):
        group = _NAME_GROUP.get(match.group())
        if group is not None and match.start() > 0:
            other = rng.choice([n for n in NAME_GROUPS[group] if n != match.group()])
            return "name", text[:match.start()] + other + text[match.end():]
    return None


def _programming(text: str, rng: random.Random) -> tuple[str, str] | None:
    for language in PROGRAMMING:
        match = re.search(rf"(?<![\w+#]){re.escape(language)}(?![\w+#])", text, flags=re.IGNORECASE)
        if match is not None and (len(language) > 2 or text[match.start():match.end()] == language):
            other = rng.choice([p for p in PROGRAMMING if p.lower() != language.lower() and len(p) > 2])
            return "programming", text[:match.start()] + other + text[match.end():]
    return None


_REWORDINGS = (
    (r"^What is\b", "What's"), (r"^What's\b", "What is"), (r"^How do I\b", "How can I"),
    (r"^How can I\b", "How do I"), (r"^Which is\b", "Which one is"), (r"^Why do\b", "Why is it that"),
    (r"\bdo not\b", "don't"), (r"\bdon't\b", "do not"), (r"\bcannot\b", "can't"),
)


def reword(text: str, rng: random.Random) -> str:
    """The same request in slightly other words: a contraction, another opening, a polite frame."""
    for pattern, replacement in _REWORDINGS:
        changed = re.sub(pattern, replacement, text, count=1)
        if changed != text:
            return changed
    frame = rng.choice(["Can you tell me: {}", "Quick question: {}", "{} Thanks!", "Please answer: {}"])
    return frame.format(text)


def _pairs(kind: str, swap: bool, rows: list[tuple[str, str]]) -> list[Variant]:
    return [Variant(a, b, kind, swap) for a, b in rows]


HANDWRITTEN: list[Variant] = [
    *_pairs("number", True, [
        ("Convert 5 km to miles", "Convert 15 km to miles"),
        ("What is 15% of 80?", "What is 15% of 90?"),
        ("Give me 3 ideas for a birthday party", "Give me 10 ideas for a birthday party"),
        ("How much is a 20 dollar tip on a 150 dollar bill in percent?",
         "How much is a 25 dollar tip on a 150 dollar bill in percent?"),
        ("Write a haiku with 17 syllables about autumn", "Write a poem with 14 lines about autumn"),
        ("What happened in 1989 in Germany?", "What happened in 1990 in Germany?"),
        ("Summarize this in 50 words", "Summarize this in 200 words"),
        ("Is 97 a prime number?", "Is 91 a prime number?"),
    ]),
    *_pairs("negation", True, [
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
        ("Which foods should I eat during pregnancy?", "Which foods should I not eat during pregnancy?"),
        ("Why does my code compile?", "Why doesn't my code compile?"),
        ("List countries that use the euro", "List countries that don't use the euro"),
        ("Can I take ibuprofen with coffee?", "Can I take ibuprofen without coffee?"),
        ("What should I do before an interview?", "What should I never do before an interview?"),
    ]),
    *_pairs("direction", True, [
        ("Convert 100 EUR to USD", "Convert 100 USD to EUR"),
        ("Translate this sentence from French to English", "Translate this sentence from English to French"),
        ("Is Python faster than Java?", "Is Java faster than Python?"),
        ("How long is the flight from Paris to Tokyo?", "How long is the flight from Tokyo to Paris?"),
        ("How do I migrate from MySQL to PostgreSQL?", "How do I migrate from PostgreSQL to MySQL?"),
        ("Why is Canada colder than Norway?", "Why is Norway colder than Canada?"),
        ("How do I switch from Android to iPhone?", "How do I switch from iPhone to Android?"),
    ]),
    *_pairs("name", True, [
        ("What is the capital of Australia?", "What is the capital of Austria?"),
        ("Who is the CEO of Microsoft?", "Who is the CEO of Google?"),
        ("What is the weather in Berlin today?", "What is the weather in Munich today?"),
        ("Tell me about the history of Rome", "Tell me about the history of Athens"),
        ("How tall is Mount Everest?", "How tall is Mount Kilimanjaro?"),
        ("When did Einstein die?", "When did Newton die?"),
    ]),
    *_pairs("programming", True, [
        ("How do I read a file line by line in Python?", "How do I read a file line by line in Go?"),
        ("Write a function to reverse a string in JavaScript", "Write a function to reverse a string in Rust"),
        ("How do I sort a dictionary by value in Python?", "How do I sort a map by value in Java?"),
        ("Explain async/await in C#", "Explain async/await in JavaScript"),
        ("How do I parse JSON in PHP?", "How do I parse JSON in Ruby?"),
    ]),
    *_pairs("written_in", True, [
        ("What is the capital of France?", "Quelle est la capitale de la France ?"),
        ("How do I learn to play the guitar?", "Comment apprendre à jouer de la guitare ?"),
        ("What are the health benefits of green tea?", "Quels sont les bienfaits du thé vert pour la santé ?"),
        ("How can I improve my sleep?", "Wie kann ich meinen Schlaf verbessern?"),
        ("What is the best way to save money?", "Was ist der beste Weg, um Geld zu sparen?"),
        ("Explain photosynthesis in simple terms", "Erkläre die Photosynthese in einfachen Worten"),
        ("How do I make a good cup of coffee?", "¿Cómo puedo hacer una buena taza de café?"),
        ("What are the symptoms of the flu?", "¿Cuáles son los síntomas de la gripe?"),
        ("Why is the sky blue?", "¿Por qué el cielo es azul?"),
        ("Write a short poem about the sea", "Écris un court poème sur la mer"),
        ("What is the meaning of life?", "Was ist der Sinn des Lebens?"),
        ("How does a credit card work?", "¿Cómo funciona una tarjeta de crédito?"),
    ]),
    *_pairs("rewording", False, [
        ("How do I make my phone battery last longer?", "How can I make my phone's battery last longer?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("Convert 100 EUR to USD", "Convert 100 euros into USD"),
        ("Is it safe to eat raw eggs?", "Is eating raw eggs safe?"),
        ("How do I read a file line by line in Python?", "Read a file line by line in Python: how?"),
        ("Why is the sky blue?", "Why's the sky blue?"),
        ("Give me 3 ideas for a birthday party", "Give me three ideas for a birthday party"),
        ("How long is the flight from Paris to Tokyo?", "How long does the flight from Paris to Tokyo take?"),
        ("What are the symptoms of the flu?", "What are flu symptoms?"),
        ("How can I improve my sleep?", "How do I improve my sleep?"),
        ("Explain photosynthesis in simple terms", "Explain photosynthesis in simple words"),
        ("Who is the CEO of Microsoft?", "Who's the CEO of Microsoft?"),
    ]),
]
