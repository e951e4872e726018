"""What an embedding misses about a prompt: its numbers, negations, named things, languages and word order.

`analyze(text)` reads a prompt once into a `PromptFacts` record; the hit verifier compares two of them.
Everything here is plain Python over small word lists, so it runs in tens of microseconds per prompt.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

from semproxy.cache.contrasts import answer_shape
from semproxy.cache.quantities import quantities

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[+#]+|->|→", re.UNICODE)
_JOINED_PREFIX = re.compile(r"\b(non|anti|e|co|un|pre|post|re)-(?=[^\W\d_])", re.IGNORECASE)
_SENTENCE_END = frozenset(".!?:;\n")

STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with about as into onto from up down out over under is
are was were be been being am do does did doing done have has had having i me my mine myself we us our ours
you your yours he him his she her hers it its they them their theirs this that these those there here what
which who whom whose why how when where can could should would will shall may might must also just so than too
very more most some any each every all both such only own same other s t get got make made use using used one
ones thing things way ways someone something anyone anything please tell know want need like best good really
much many lot lots
""".split())

QUESTION_WORDS = frozenset("what which who whom whose why how when where".split())

NEGATIONS = frozenset("""
not no never none nobody nothing neither nor without cannot cant dont doesnt didnt isnt arent wasnt werent
wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt neednt aint ne pas jamais aucun aucune sans nicht kein
keine keinen keinem keiner nie niemals ohne nunca sin ningún ninguna nada tampoco mai senza niente nulla nao
não sem niet geen nooit zonder
""".split())

# The negation words of each language the multilingual tier serves, for prompts whose language is known.
# (The list above mixes languages for prompts of unknown language; there Portuguese "no" = "in the" would count.)
NEGATIONS_BY_LANGUAGE: dict[str, frozenset[str]] = {code: frozenset(words.split()) for code, words in {
    "de": "nicht kein keine keinen keinem keiner keines nie niemals ohne nichts niemand weder",
    "es": "no nunca ni ningún ninguna ninguno nada sin tampoco jamás nadie",
    "fr": "ne n pas jamais aucun aucune sans rien ni non",
    "it": "non mai senza niente nulla nessuno nessuna né",
    "nl": "niet geen nooit zonder niets niemand noch",
    "pl": "nie nigdy bez żaden żadna żadne żadnego nic nikt ani",
    "pt": "não nunca nem nenhum nenhuma nada sem jamais ninguém",
}.items()}
# Languages the caller may name for a prompt (the spaces' languages); others are detected here.
_KNOWN_LANGUAGES = frozenset({"en", *NEGATIONS_BY_LANGUAGE})
# Languages that capitalise every noun: a capital letter there does not make a word a name.
CAPITALISED_NOUNS = frozenset({"de", "lb"})

# A request's answer depends on these when they are named: the programming language or tool, and the
# natural language the answer should be written in. Swapping one for another must never hit.
PROGRAMMING_LANGUAGES = frozenset("""
python java javascript typescript js ts c c++ c# csharp cpp golang go rust ruby php perl swift kotlin scala
haskell elixir erlang clojure lua r matlab julia dart sql mysql postgresql postgres sqlite bash shell zsh
powershell fortran cobol pascal assembly html css sass react angular vue django flask fastapi spring rails
node nodejs deno pandas numpy excel vba objective-c ocaml fsharp f# groovy solidity prolog lisp scheme
""".split())

NATURAL_LANGUAGES = frozenset("""
english french german spanish italian portuguese dutch polish russian ukrainian chinese mandarin cantonese
japanese korean arabic hindi bengali urdu turkish greek hebrew swedish norwegian danish finnish czech
hungarian romanian bulgarian croatian serbian slovak slovenian vietnamese thai indonesian malay persian farsi
swahili latin catalan basque irish welsh estonian latvian lithuanian icelandic français anglais allemand
espagnol italien deutsch englisch französisch spanisch español inglés francés alemán
""".split())

_AMBIGUOUS_TOOLS = frozenset("""
excel spring node go rust swift dart julia ruby scheme pascal r c elixir rails react
""".split())
_SYMBOL_LANGUAGES = re.compile(r"(?<![\w+#])(?:c\+\+|c#|f#)(?![\w+#])", re.IGNORECASE)

# Words that give two entities a direction: "EUR to USD", "faster than Java", "from Paris to Rome".
# ("vs" is not one: "X vs Y, which is better?" asks the same as "Y vs X".)
DIRECTION_WORDS = frozenset("""
to from into onto than over towards toward -> → à vers nach zu zum zur von vom auf aufs an naar van hacia para
desde da al na z do
""".split())

# A natural language's name is about the language (not a nationality) next to these words.
_LANGUAGE_CONTEXT_BEFORE = frozenset(
    "in into to from speak speaking learn learning write writing answer respond reply translate translated "
    "en auf".split())
_LANGUAGE_CONTEXT_AFTER = frozenset(
    "translation language version speaker speakers grammar word words text sentence sentences".split())

# "why or why not", "with or without", "whether or not": both sides are asked, nothing is negated.
_NEUTRAL_NEGATION = re.compile(r"\bor\s+(?:why\s+)?not\b|\bwith\s+or\s+without\b|\bor\s+no\b|\bif\s+not\b"
                               r"|\bif (?:it'?s|it is) not too much (?:trouble|to ask)\b|\bno problem\b|\bno worries\b"
                               r"|\bnot sure (?:if|whether|how|what|why)\b", re.IGNORECASE)

# English contractions and spellings, undone before comparing two prompts word by word.
_IRREGULAR_CONTRACTIONS = {"can't": ["can", "not"], "won't": ["will", "not"], "shan't": ["shall", "not"],
                           "ain't": ["is", "not"], "let's": ["let", "us"], "y'all": ["you", "all"]}
_CONTRACTED = {"re": "are", "ve": "have", "ll": "will", "d": "would", "m": "am"}
_IS_BEFORE_S = frozenset("what who where when why how it that there here he she this".split())
SPELLINGS = {
    "colour": "color", "colours": "colors", "favourite": "favorite", "favourites": "favorites", "organise": "organize",
    "organised": "organized", "organising": "organizing", "organisation": "organization", "centre": "center",
    "analyse": "analyze", "analysed": "analyzed", "analysing": "analyzing", "behaviour": "behavior",
    "optimise": "optimize", "optimised": "optimized", "optimisation": "optimization", "realise": "realize",
    "neighbour": "neighbor", "neighbours": "neighbors", "defence": "defense", "catalogue": "catalog",
    "travelling": "traveling", "travelled": "traveled", "programme": "program", "licence": "license",
    "cancelled": "canceled", "grey": "gray", "jewellery": "jewelry", "theatre": "theater", "metre": "meter",
    "litre": "liter", "kilometre": "kilometer", "kilometres": "kilometers", "apologise": "apologize",
    "recognise": "recognize", "customise": "customize", "minimise": "minimize", "maximise": "maximize",
    "summarise": "summarize", "prioritise": "prioritize", "labour": "labor", "humour": "humor", "mum": "mom",
    "ok": "okay", "pls": "please", "plz": "please", "u": "you", "ur": "your", "thx": "thanks", "tho": "though",
}

# Frequent function words per language: enough to tell which language a prompt of a few words is in.
_LANGUAGE_MARKERS: dict[str, frozenset[str]] = {
    "en": frozenset("""
the is are what how why which who do does i you to of and in it for with can this that my best way learn
should would there
""".split()),
    "fr": frozenset("""
le la les est sont que qui quoi comment pourquoi je tu vous nous un une des du de et dans pour avec ce cette
mon ma mes sur pas est-ce quel quelle quels où meilleure meilleur façon apprendre faire peut puis aussi très
mais
""".split()),
    "de": frozenset("""
der die das ist sind was wie warum welche wer ich du sie wir ein eine und in zu mit für nicht ich mein meine
auf den dem des wo kann ist es am besten lernen machen auch sehr aber oder wenn
""".split()),
    "es": frozenset("""
el la los las es son que qué cómo por porqué quién yo tú usted un una y en para con mi mis este esta del al se
cuál dónde puedo mejor manera aprender hacer también muy pero cuando está hay
""".split()),
    "it": frozenset("""
il lo la gli le è sono che cosa come perché chi io tu un una e in per con mio mia questo questa del della dove
posso di migliore modo imparare fare anche molto ma quando
""".split()),
    "pt": frozenset("""
o a os as é são que como por quem eu você um uma e em para com meu minha este esta do da onde posso não melhor
maneira aprender fazer também muito mas quando
""".split()),
    "nl": frozenset("""
de het een is zijn wat hoe waarom welke wie ik jij je u wij en in voor met mijn dit dat van op waar kan niet
beste manier leren maken ook heel maar wanneer
""".split()),
}

# Only the words that belong to one language's list count ("a", "de", "in" are in several).
_DISTINCT_MARKERS = {
    code: frozenset(w for w in markers
                    if not any(w in other for c, other in _LANGUAGE_MARKERS.items() if c != code)
                    and (code == "en" or w not in STOPWORDS))
    for code, markers in _LANGUAGE_MARKERS.items()
}

_SCRIPTS = (
    ("zh", ("CJK UNIFIED",)), ("ja", ("HIRAGANA", "KATAKANA")), ("ko", ("HANGUL",)), ("ru", ("CYRILLIC",)),
    ("ar", ("ARABIC",)), ("el", ("GREEK",)), ("he", ("HEBREW",)), ("hi", ("DEVANAGARI",)), ("th", ("THAI",)),
)


@dataclasses.dataclass(frozen=True, slots=True)
class PromptFacts:
    """The parts of a prompt the verifier compares."""

    words: tuple[str, ...]  # every word, lower case, in order
    content: tuple[str, ...]  # words that are not stopwords, in order
    numbers: frozenset[str]
    negations: int
    entities: frozenset[str]  # capitalised or mixed-case names, acronyms (lower case)
    named_languages: frozenset[str]  # programming and natural languages the prompt names
    question_words: frozenset[str]
    language: str | None  # the language the prompt is written in, when it is clear
    shape: frozenset[str] = frozenset()  # the asked answer's format, size and audience ("format:json", ...)
    text: str = ""  # the prompt as written, for the pair encoder


def analyze(text: str, language: str | None = None) -> PromptFacts:
    """Read the facts of one prompt; `language`, when the caller knows it (the multilingual tier does),
    picks that language's negation words and name conventions."""
    original, text = text, _JOINED_PREFIX.sub(r"\1", text)  # "non-profit" = "nonprofit", "e-mail" = "email"
    raw = _WORD.findall(text)
    words = normal_words(raw)
    negations = NEGATIONS_BY_LANGUAGE.get(language or "", NEGATIONS)
    content = tuple(w for w in words if w not in STOPWORDS and w not in negations)
    return PromptFacts(
        words=words,
        content=content,
        numbers=quantities(text, language),
        # Where the language is known, whether the prompt negates at all: in negative-concord languages one
        # negated clause takes several words ("não ... nenhum", "nie ... nic", "ne ... pas").
        negations=_negations(text, negations) if negations is NEGATIONS else min(1, _negations(text, negations)),
        entities=_entities(text, raw, nouns_capitalised=language in CAPITALISED_NOUNS),
        named_languages=_named_languages(text, words),
        question_words=frozenset(w for w in words[:4] if w in QUESTION_WORDS),
        language=language if language in _KNOWN_LANGUAGES else detect_language(text, words),
        shape=answer_shape(words, text),
        text=original,
    )


def normal_words(raw: list[str]) -> tuple[str, ...]:
    """The words in lower case, with English contractions spelled out ("what's" -> "what is", "don't" -> "do
    not"), possessives reduced to their owner ("France's" -> "france") and British spellings made American,
    so that the rules and the word features see through the form of a prompt."""
    words: list[str] = []
    for word in (_fold(w) for w in raw):
        words += _expand(word)
    return tuple(words)


def _expand(word: str) -> list[str]:
    if "'" not in word:
        return [SPELLINGS.get(word, word)]
    if word in _IRREGULAR_CONTRACTIONS:
        return _IRREGULAR_CONTRACTIONS[word]
    head, _, tail = word.rpartition("'")
    if tail == "t" and head.endswith("n"):
        return [head[:-1], "not"]
    if tail == "s":
        return [head, "is"] if head in _IS_BEFORE_S else [head]
    return [head, _CONTRACTED[tail]] if tail in _CONTRACTED else [word]


def _negations(text: str, negations: frozenset[str] = NEGATIONS) -> int:
    words = [_fold(w) for w in _WORD.findall(_NEUTRAL_NEGATION.sub(" ", text))]
    # French elides "ne" before a vowel: "n'est", "n'a".
    return sum(1 for w in words if w in negations or w.endswith("n't") or (negations is not NEGATIONS
                                                                           and w.startswith("n'")))


def _fold(word: str) -> str:
    return word.lower().replace("’", "'")


def _entities(text: str, raw: list[str], *, nouns_capitalised: bool = False) -> frozenset[str]:
    """Names: capitalised words that do not start a sentence, acronyms, mixed case (iPhone, GPT4); only the
    last two where every noun is capitalised."""
    names: set[str] = set()
    previous_end = True
    position = 0
    for word in raw:
        start = text.find(word, position)
        gap = text[position:start] if start >= 0 else ""
        position = start + len(word) if start >= 0 else position
        if any(ch in _SENTENCE_END for ch in gap):
            previous_end = True
        lower = word.lower()
        if lower not in STOPWORDS and word[:1].isalpha() and word != lower:
            upper_inside = any(ch.isupper() for ch in word[1:])
            if upper_inside or not (previous_end or nouns_capitalised):
                names.add(_fold(word))
        previous_end = False
    return frozenset(names)


def _named_languages(text: str, words: tuple[str, ...]) -> frozenset[str]:
    named = {w for i, w in enumerate(words) if w in NATURAL_LANGUAGES and (
        (i > 0 and words[i - 1] in _LANGUAGE_CONTEXT_BEFORE)
        or (i + 1 < len(words) and words[i + 1] in _LANGUAGE_CONTEXT_AFTER))}
    named.update(w for w in words if w in PROGRAMMING_LANGUAGES and w not in _AMBIGUOUS_TOOLS)
    # Names that are also ordinary words ("excel at math", "go home") count when written as names.
    named.update(w.lower() for w in _WORD.findall(text)
                 if len(w) > 1 and w.lower() in _AMBIGUOUS_TOOLS and w[:1].isupper())
    named.update(m.lower() for m in _SYMBOL_LANGUAGES.findall(text))
    for short in ("C", "R", "Go"):
        if re.search(rf"\b(?:in|with|using|for|to|from|learn|learning)\s+{short}\b(?![+#])|\b{short}\s+"
                     rf"(?:code|program|programming|language|function|script|compiler)\b", text):
            named.add(short.lower())
    return frozenset(named)


def detect_language(text: str, words: tuple[str, ...] | None = None) -> str | None:
    """The language a prompt is written in, or None when too little text says it clearly."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    for code, blocks in () if text.isascii() else _SCRIPTS:  # plain ASCII is in none of these scripts
        share = sum(1 for ch in letters if any(b in unicodedata.name(ch, "") for b in blocks)) / len(letters)
        if share > 0.3:
            if code == "zh" and any("HIRAGANA" in unicodedata.name(ch, "") or "KATAKANA" in unicodedata.name(ch, "")
                                    for ch in letters):
                return "ja"
            return code
    words = words if words is not None else tuple(_fold(w) for w in _WORD.findall(text))
    counts = {code: sum(1 for w in words if w in markers) for code, markers in _DISTINCT_MARKERS.items()}
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    (best, top), (_, runner_up) = ranked[0], ranked[1]
    if top >= 2 and top >= 2 * runner_up:
        return best
    return None
