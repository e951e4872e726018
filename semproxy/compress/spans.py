"""What may be compressed: a prompt cut into units (words or protected spans), each with its character range.

Protected spans survive byte for byte: fenced and indented code, JSON and other structured blocks (tables,
tags), URLs and e-mail addresses, anything with a digit in it, template placeholders, quoted strings,
inline code, text between the user's keep markers, and the words that flip or bind an instruction
(negations, "must", "only", ...) with the word each binds: dropping "not" from "do not reveal the key" would
invert the prompt, and dropping "show" from "dates the tool does not show" would lose what it forbids.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

# Block-level structure, matched over the whole text.
_BLOCK_PATTERNS = [
    r"(?ms)^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$",  # fenced code
    r"(?m)(?:^(?: {4}|\t)[^\n]*\n?)+",  # indented code
    r"(?m)(?:^[ \t]*\|[^\n]*\|[ \t]*\n?)+",  # markdown tables
]
# Inline spans.
_INLINE_PATTERNS = [
    r"`[^`\n]+`",  # inline code
    r"(?:https?|ftp)://[^\s<>\"'`]+|www\.[^\s<>\"'`]+",  # URLs
    r"[\w.+-]+@[\w-]+\.[\w.-]+",  # e-mail addresses
    r"\{\{.*?\}\}|\{%.*?%\}|\$\{[^}\n]+\}|\{[^{}\s]{1,64}\}|%\(\w+\)[sdfr]|%[sdfr]\b",  # placeholders
    r"</?[A-Za-z][\w:-]*(?:\s[^<>\n]*)?/?>",  # XML / HTML tags
    r"\"[^\"\n]{1,300}\"|“[^”\n]{1,300}”|‘[^’\n]{1,300}’|«[^»\n]{1,300}»|„[^“”\n]{1,300}[“”]",  # quoted strings
    r"(?<![\w'])'[^'\n]{1,300}'(?![\w'])",  # single-quoted strings, not apostrophes
    r"\S*\d\S*",  # anything containing a digit: numbers, versions, dates, amounts with units
]
# The words that flip or bind an instruction, per language semproxy compresses or may be asked to: a word
# that is one of them in any of these languages is kept in every prompt (over-protecting a rare English "sin"
# costs a token; dropping a Spanish "no" inverts an instruction).
KEEP_WORDS_BY_LANGUAGE = {
    "en": "not no nor never none neither without cannot can't don't doesn't didn't won't wouldn't shouldn't mustn't "
          "isn't aren't wasn't weren't haven't hasn't hadn't couldn't unless except only must always exactly "
          "forbidden prohibited mandatory required",
    "de": "nicht kein keine keinen keinem keiner keines nie niemals nichts ohne nur muss müssen musst müsst darf "
          "dürfen darfst dürft immer außer ausschließlich weder genau verboten untersagt pflicht erforderlich",
    "fr": "ne pas jamais aucun aucune aucuns rien sans seulement uniquement doit doivent devez dois toujours sauf ni "
          "non exactement interdit interdite interdits interdites obligatoire obligatoires",
    "es": "no nunca jamás ningún ninguna ninguno nada nadie sin solo sólo solamente únicamente debe deben debes "
          "siempre excepto salvo ni tampoco exactamente exclusivamente prohibido prohibida prohibidos prohibidas "
          "obligatorio obligatoria obligatorios obligatorias",
    "it": "non mai nessun nessuno nessuna niente nulla senza soltanto solamente deve devono devi sempre tranne "
          "eccetto né esattamente vietato vietata vietati obbligatorio obbligatoria",
    "nl": "niet geen nooit niets zonder alleen uitsluitend moet moeten altijd behalve noch precies verboden "
          "verplicht",
    "pt": "não nunca jamais nenhum nenhuma sem só somente apenas devem sempre exceto nem exatamente proibido "
          "proibida obrigatório obrigatória",
    "pl": "nie nigdy żaden żadna żadne żadnych żadnego żadnej nic bez tylko wyłącznie musi musisz muszą musicie "
          "zawsze oprócz poza ani dokładnie niczego nikomu nikt należy trzeba wolno zakazane zakazany zakazana",
}
KEEP_WORDS = frozenset(word for words in KEEP_WORDS_BY_LANGUAGE.values() for word in words.split())
_CLAUSE_END = (".", ",", ";", ":", "!", "?", ")")
_ELIDED_NEGATION = ("n'", "n’")  # French "n'est" (typographic apostrophe too): the elided "ne"
_WORD = re.compile(r"\S+")
_EDGE_PUNCTUATION = ".,;:!?()[]\"'“”‘’„«»‹›*_-–—•#>"  # a word of these alone is structure: a bullet, a heading mark


@dataclasses.dataclass(frozen=True)
class Unit:
    """A piece of the prompt that is kept or dropped whole."""

    start: int
    end: int
    protected: bool


def protected_ranges(text: str, *, keep_markers: tuple[str, str] | None = None) -> list[tuple[int, int]]:
    """Sorted, merged character ranges that must survive unchanged."""
    ranges = [m.span() for pattern in _BLOCK_PATTERNS + _INLINE_PATTERNS for m in re.finditer(pattern, text)]
    ranges += list(_json_blocks(text))
    if keep_markers is not None:
        start, end = (re.escape(marker) for marker in keep_markers)
        ranges += [m.span() for m in re.finditer(f"(?s){start}.*?{end}", text)]
    return _merge(r for r in ranges if r[1] > r[0])


def _json_blocks(text: str) -> Iterator[tuple[int, int]]:
    """Balanced {...} or [...] blocks that start a line (JSON examples, schemas)."""
    for match in re.finditer(r"(?m)^[ \t]*([\[{])", text):
        end = _balanced_end(text, match.start(1))
        if end is not None and end - match.start(1) > 2:
            yield match.start(1), end


def _balanced_end(text: str, start: int) -> int | None:
    depth, in_string, escaped = 0, False, False
    for i in range(start, min(len(text), start + 100_000)):
        char = text[i]
        if in_string:
            escaped = char == "\\" and not escaped
            in_string = not (char == '"' and not escaped)
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _merge(ranges: Iterator[tuple[int, int]] | list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def units(text: str, *, keep_markers: tuple[str, str] | None = None) -> list[Unit]:
    """The prompt as ordered units: protected spans whole, everything else word by word."""
    result: list[Unit] = []
    cursor = 0
    for start, end in protected_ranges(text, keep_markers=keep_markers):
        result += _words(text, cursor, start)
        result.append(Unit(start, end, protected=True))
        cursor = end
    return result + _words(text, cursor, len(text))


def _words(text: str, start: int, end: int) -> list[Unit]:
    found = []
    binds_next = False
    for match in _WORD.finditer(text, start, end):
        word = match.group()
        bare = word.strip(_EDGE_PUNCTUATION).lower()
        binding = bare in KEEP_WORDS or bare.replace("’", "'") in KEEP_WORDS or bare.startswith(_ELIDED_NEGATION)
        # A word that is only punctuation (a bullet, a dash) is structure; the word right after a binding word
        # is what it binds ("does not *show*", "never *ask*", "only *English*"): keep them all.
        found.append(Unit(match.start(), match.end(), protected=binding or not bare or binds_next))
        binds_next = binding and not word.endswith(_CLAUSE_END)
    return found


def assemble(text: str, pieces: list[Unit], keep: list[bool]) -> str:
    """The kept units in order. Line breaks and indentation around dropped words survive, so the prompt
    keeps its layout; a run of dropped words becomes one space."""
    out: list[str] = []
    gap, cursor = "", 0
    for unit, kept in zip(pieces, keep, strict=True):
        before = text[cursor:unit.start]
        gap += before
        if kept:
            out.append(_separator(gap, before, first=not out))
            out.append(text[unit.start:unit.end])
            gap = ""
        cursor = unit.end
    return "".join(out) + text[cursor:] if out else ""


def _separator(gap: str, before: str, *, first: bool) -> str:
    """`gap`: all white space since the last kept unit; `before`: the part right before this unit."""
    if "\n" in gap:
        indent = before[before.rindex("\n") + 1:] if "\n" in before else ""
        return "\n" * min(gap.count("\n"), 2) + indent
    if first or len(gap) <= 1:
        return "" if first else gap  # nothing before the first word; a single space or tab stays as it was
    return " "
