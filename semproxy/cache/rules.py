"""The hit verifier's rules: differences that make a cached answer wrong however similar the prompts look.

Each rule returns a reason a person can read; `rule_rejection` applies them in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from semproxy.cache.contrasts import opposite_words
from semproxy.cache.quantities import same_quantities
from semproxy.cache.text import DIRECTION_WORDS, NEGATIONS, STOPWORDS, PromptFacts

# Little words a swap of two roles may carry along ("a dog ... its owner" / "an owner ... its dog").
_DETERMINERS = frozenset("""
a an the its their his her my your our this that these those der die das den dem des ein eine einen einem einer
le la les l un une el los las lo gli il i uno het een o os as um uma
""".split())
# Forms of one verb that a swap of roles may change along with its subject ("X does" / "the Ys do").
_BASE_FORMS = {"does": "do", "did": "do", "is": "be", "are": "be", "was": "be", "were": "be", "has": "have",
               "vom": "von", "zum": "zu", "zur": "zu", "aufs": "auf", "au": "à", "aux": "à", "du": "de", "al": "a",
               "del": "de", "ao": "a", "do": "de", "dos": "de", "da": "de", "das": "de"}
# Words between two exchanged words that make the exchange harmless ("salt and pepper", "X vs Y").
_SYMMETRIC = frozenset("and or vs versus & with plus between , et und y e en i oraz ou o".split())


def rule_rejection(asked: PromptFacts, stored: PromptFacts) -> str | None:
    """Why the stored prompt's answer cannot fit the asked one, by rule; None if no rule applies."""
    if asked.language and stored.language and asked.language != stored.language:
        return f"written in {asked.language}, cached prompt in {stored.language}"
    new_languages = asked.named_languages - stored.named_languages - set(stored.words)
    old_languages = stored.named_languages - asked.named_languages - set(asked.words)
    if new_languages or old_languages:
        return f"names {_show(asked.named_languages)}, cached prompt {_show(stored.named_languages)}"
    if asked.numbers and stored.numbers and not same_quantities(asked.numbers, stored.numbers):
        return f"numbers {_show(asked.numbers)} vs cached {_show(stored.numbers)}"
    if asked.negations != stored.negations:
        return f"negation on one side ({asked.negations} vs cached {stored.negations})"
    swapped = reversed_direction(asked.words, stored.words)
    if swapped is not None:
        return f"direction reversed: {swapped[0]} / {swapped[1]}"
    swap = substituted_name(asked, stored)
    if swap is not None:
        return f"name {swap[0]} instead of cached {swap[1]}"
    opposite = opposite_words(asked.words, stored.words)
    if opposite is not None:
        return f"opposites: {opposite[0]} / cached {opposite[1]}"
    exchanged = exchanged_words(asked.words, stored.words)
    if exchanged is not None:
        return f"roles exchanged: {exchanged[0]} / {exchanged[1]}"
    if asked.shape != stored.shape:
        return f"answer shape {_show(asked.shape)}, cached prompt {_show(stored.shape)}"
    return None


def exchanged_words(first: Sequence[str], second: Sequence[str]) -> tuple[str, str] | None:
    """Two words or short phrases that trade places while nothing else changes ("the employer's duties to the
    employee" / "the employee's duties to the employer", "cleaner fish benefit sharks" / "sharks benefit cleaner
    fish"), unless only "and", "or", "vs" stand between them."""
    a = [_BASE_FORMS.get(w, w) for w in first if w not in _DETERMINERS]
    b = [_BASE_FORMS.get(w, w) for w in second if w not in _DETERMINERS]
    if len(a) != len(b) or a == b:
        return None
    start = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    end = len(a) - next(i for i, (x, y) in enumerate(zip(reversed(a), reversed(b), strict=True)) if x != y)
    middle_a, middle_b = a[start:end], b[start:end]
    for left in range(1, 4):
        for right in range(1, 4):
            if left + right >= len(middle_a):
                continue
            x, y = middle_a[:left], middle_a[len(middle_a) - right:]
            pivot = middle_a[left:len(middle_a) - right]
            if middle_b != y + pivot + x or all(w in _SYMMETRIC for w in pivot):
                continue
            if _content(x) and _content(y):
                return (" ".join(x), " ".join(y))
    return None


def _content(words: Sequence[str]) -> bool:
    """Holds a word that names something (not only little words or negations)."""
    return any(w not in STOPWORDS and w not in NEGATIONS and len(w) > 1 for w in words) and not any(
        w in NEGATIONS for w in words)


def substituted_name(asked: PromptFacts, stored: PromptFacts) -> tuple[str, str] | None:
    """A name the stored prompt lacks, where the stored prompt has another name between the same words."""
    new_names = names_missing(asked, stored)
    if not new_names:
        return None
    old_places = _neighbours(stored.words, stored.entities)
    for new, places in _neighbours(asked.words, new_names).items():
        for old, other_places in old_places.items():
            if old != new and places & other_places:
                return (new, old)
    return None


def _neighbours(words: Sequence[str], names: frozenset[str]) -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {}
    for i, word in enumerate(words):
        if word in names:
            before = words[i - 1] if i > 0 else "^"
            after = words[i + 1] if i + 1 < len(words) else "$"
            found.setdefault(word, set()).add((before, after))
    return found


def names_missing(first: PromptFacts, second: PromptFacts) -> frozenset[str]:
    stems = {_stem(w) for w in second.words}
    return frozenset(name for name in first.entities if _stem(name) not in stems)


def _stem(word: str) -> str:
    """Enough stemming to match "William's", "Williams" and "William"."""
    word = word.removesuffix("'s")
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _show(items: frozenset[str]) -> str:
    return "{" + ",".join(sorted(items)) + "}" if items else "none"


def reversed_direction(first: Sequence[str], second: Sequence[str]) -> tuple[str, str] | None:
    """Two words on either side of a direction word that trade places ("India to Pakistan" / "Pakistan to
    India"), or two words that appear once on each side, a direction word between them, in opposite order."""
    arrows1, arrows2 = _arrows(first), _arrows(second)
    for x, word, y in arrows1:
        if (y, word, x) in arrows2 and (x, word, y) not in arrows2:
            return (x, y)
    pos1, pos2 = single_positions(first), single_positions(second)
    shared = [w for w in pos1 if w in pos2 and w not in DIRECTION_WORDS]
    for i, x in enumerate(shared):
        for y in shared[i + 1:]:
            if (pos1[x] < pos1[y]) == (pos2[x] < pos2[y]):
                continue
            if _direction_between(first, pos1[x], pos1[y]) and _direction_between(second, pos2[x], pos2[y]):
                return (x, y)
    return None


def _arrows(words: Sequence[str]) -> set[tuple[str, str, str]]:
    """(word before, direction word, word after) around each direction word, skipping little words."""
    found = set()
    for i, word in enumerate(words):
        if word in DIRECTION_WORDS:
            before = next((w for w in reversed(words[max(0, i - 3):i]) if w not in STOPWORDS), None)
            after = next((w for w in words[i + 1:i + 4] if w not in STOPWORDS), None)
            if before and after and before != after:
                found.add((before, word, after))
    return found


def single_positions(words: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return {w: i for i, w in enumerate(words) if counts[w] == 1 and (len(w) > 1 or w in ("c", "r"))}


def _direction_between(words: Sequence[str], i: int, j: int) -> bool:
    low, high = min(i, j), max(i, j)
    return high - low <= 4 and any(w in DIRECTION_WORDS for w in words[low + 1:high])
