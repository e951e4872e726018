"""Word-level contrasts that flip what a prompt asks while leaving its embedding almost where it was: antonyms
(by prefix, "legal" / "illegal", and from a list, "buy" / "sell") and the shape of the asked answer (its format,
its size, its audience: "as JSON" / "as a table", "in one sentence" / "in detail", "for a child" / "for experts").

Everything here reads the lower-cased word sequence of `semproxy.cache.text`; the rules in
`semproxy.cache.rules` decide what to do with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Prefixes that negate the word they are put before, in the languages the cache serves: un- (en, de), in-/im-/
# il-/ir-/i- (en, fr, es, it, pt), dis-/des-/dé- (en, es, pt, fr), non-, a-, de-, mis-, anti-, on- (nl), nie- (pl).
NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "i", "dis", "des", "dé", "non", "a", "de", "mis", "anti",
                     "on", "nie", "dys", "s")
# Prefix pairs that make opposites of one root: encrypt / decrypt, upload / download, import / export.
OPPOSITE_PREFIXES = (("en", "de"), ("in", "de"), ("up", "down"), ("im", "ex"), ("in", "ex"), ("in", "out"),
                     ("over", "under"), ("pre", "post"), ("inter", "intra"), ("hyper", "hypo"), ("max", "min"),
                     ("super", "sub"), ("ver", "ent"), ("be", "ent"), ("ac", "de"))
# Words that look like prefix + word but are not its opposite ("display" is not "not play").
NOT_OPPOSITES = frozenset("""
display discover dismiss disease inform input income inside install intend invest insure dispatch discount
impress import impose improve impact include increase index indeed infer inflate insert insight inspect
instance instead intake intern invent invite involve dissolve distract distance dispose dismantle union unit
universe unique until under atone amass arise await awake anew aside abroad along alike alive aloud apart
around avoid amend abridge adjust ado again against ago ahead aid aim akin alone among amount annex another
apply appoint apprise approve arouse arrange ascent assign assert assess assist assume assure attend attest
attribute award aware away decline define degree delay delete deliver demand depend deposit describe
design desire despite detail detect determine develop device devote display inward impart impair
implant imprint incline indent induce infuse inhale inherit injure inlay inlet inset insist inspire instill
intact intone invert inversion isolate ion irate iron island item idea ideal identify image imagine
unless unto upon misses mister mist misty
dispute discuss disc disk dish distinct district disturb deserve desert reserve dessert despair destroy
denote devoir deal dear debate debt debut decade decide deck deduce deep deer default defeat defend defer
anion onion online onset onto onward only once ones nieder debug deploy deform detour detox
""".split())
_MIN_ROOT = 4  # a prefix before a root of three letters or fewer is mostly another word ("in" + "put")

# Opposites by list, per language (both directions are checked).
LISTED_OPPOSITES: tuple[tuple[str, str], ...] = tuple((p.split("/")[0], p.split("/")[1]) for p in """
increase/reduce buy/sell buying/selling bought/sold best/worst cheap/expensive before/after
maximum/minimum gain/lose gain/loss hot/cold import/export high/low higher/lower highest/lowest add/remove win/lose
open/close opening/closing start/stop early/late earlier/later earliest/latest strong/weak rise/fall love/hate
push/pull accept/reject borrow/lend send/receive sending/receiving arrive/leave arrival/departure first/last
input/output inside/outside above/below more/less most/least easy/hard easiest/hardest heavy/light young/old
younger/older youngest/oldest new/old wet/dry full/empty positive/negative true/false pros/cons strengths/weaknesses
benefits/risks benefits/drawbacks advantages/drawbacks success/failure winner/loser buyer/seller teacher/student
asleep/awake ascending/descending maximize/minimize overestimate/underestimate overweight/underweight
attack/defend expand/shrink include/exclude including/excluding internal/external public/private
permanent/temporary rural/urban male/female summer/winter morning/evening north/south east/west left/right
top/bottom forward/backward encode/decode deposit/withdraw profit/loss faster/slower fastest/slowest
bigger/smaller biggest/smallest largest/smallest larger/smaller longer/shorter longest/shortest always/never
allow/forbid allowed/forbidden allowed/banned safe/dangerous healthy/harmful rich/poor richer/poorer
raise/lower raising/lowering hire/fire hiring/firing cause/prevent causes/prevents increase/decrease
improve/worsen better/worse good/bad import/export inbound/outbound upstream/downstream online/offline
accept/decline enable/disable plus/minus add/subtract multiply/divide credit/debit asset/liability
assets/liabilities debit/credit inhale/exhale arrival/departure question/answer questions/answers
success/fail pass/fail passed/failed true/untrue mean/median ancient/modern past/future accepting/declining
accepting/rejecting accepted/rejected show/hide showing/hiding major/minor majority/minority more/fewer
kaufen/verkaufen gewinnen/verlieren erhöhen/senken steigen/sinken vorteile/nachteile früh/spät billig/teuer
acheter/vendre gagner/perdre augmenter/diminuer avantages/inconvénients avant/après chaud/froid
comprar/vender ganar/perder aumentar/disminuir ventajas/desventajas antes/después subir/bajar caro/barato
comprare/vendere vincere/perdere aumentare/diminuire vantaggi/svantaggi prima/dopo caldo/freddo
kopen/verkopen winnen/verliezen verhogen/verlagen voordelen/nadelen voor/na warm/koud duur/goedkoop
kupić/sprzedać kupować/sprzedawać wygrać/przegrać zalety/wady przed/po drogi/tani zwiększyć/zmniejszyć
ganhar/perder aumentar/diminuir vantagens/desvantagens depois/antes caro/barato
accepter/refuser aceptar/rechazar accettare/rifiutare akzeptieren/ablehnen annehmen/ablehnen aceitar/recusar
subir/bajar suben/bajan sube/baja heben/senken riscaldare/raffreddare calentar/enfriar chauffer/refroidir
pro/contro pros/contras pour/contre für/gegen voor/tegen iniziare/concludere empezar/terminar commencer/terminer
beginnen/beenden anfangen/aufhören licht/donker lichte/donkere hell/dunkel clair/foncé claro/oscuro chiaro/scuro
abrir/fechar abrir/cerrar aprire/chiudere ouvrir/fermer öffnen/schließen openen/sluiten otworzyć/zamknąć
założyć/zamknąć melhor/pior mejor/peor migliore/peggiore meilleur/pire besser/schlechter beste/schlechteste
beter/slechter lepszy/gorszy najlepszy/najgorszy lepiej/gorzej kupić/sprzedać wzrost/spadek rosnąć/spadać
entrada/salida entrée/sortie eingang/ausgang ingresso/uscita ingang/uitgang wejście/wyjście
""".split())
_OPPOSITE_OF: dict[str, frozenset[str]] = {}
for _a, _b in LISTED_OPPOSITES:
    _OPPOSITE_OF[_a] = _OPPOSITE_OF.get(_a, frozenset()) | {_b}
    _OPPOSITE_OF[_b] = _OPPOSITE_OF.get(_b, frozenset()) | {_a}


# (prefix, opposite prefix) in both directions, by the prefix's first letter.
_FLIPS: dict[str, list[tuple[str, str]]] = {}
for _p, _q in OPPOSITE_PREFIXES:
    _FLIPS.setdefault(_p[0], []).append((_p, _q))
    _FLIPS.setdefault(_q[0], []).append((_q, _p))


def opposite_words(first: Sequence[str], second: Sequence[str]) -> tuple[str, str] | None:
    """A word of one prompt whose opposite stands in the other prompt instead; None if there is none."""
    only_first = set(first) - set(second)
    only_second = set(second) - set(first)
    for word in sorted(only_first):
        found = _opposite_in(word, only_second)
        if found is not None:
            return (word, found)
    for other in sorted(only_second):  # the prefixed form may be on either side
        found = _opposite_in(other, only_first)
        if found is not None:
            return (found, other)
    return _negated_by_separate_prefix(first, second) or _negated_by_separate_prefix(second, first)


def _opposite_in(word: str, others: set[str]) -> str | None:
    """A word of `others` that means the opposite of `word`: listed, `word` with a negating prefix, the same
    root with the opposite prefix, or -ful / -less. Candidates are built from `word`, so this costs a few set
    lookups, not a comparison with every other word."""
    listed = _OPPOSITE_OF.get(word, frozenset()) & others
    if listed:
        return min(listed)
    if len(word) >= _MIN_ROOT:
        for prefix in NEGATING_PREFIXES:
            negated = prefix + word
            if negated in others and negated not in NOT_OPPOSITES:
                return negated
    if word in NOT_OPPOSITES:
        return None
    for this, that in _FLIPS.get(word[:1], ()):
        if word.startswith(this) and len(word) - len(this) >= 3:
            flipped = that + word[len(this):]
            if flipped in others and flipped not in NOT_OPPOSITES:
                return flipped
    if word.endswith("ful") and len(word) > 5 and word[:-3] + "less" in others:
        return word[:-3] + "less"
    return None


def _negated_by_separate_prefix(first: Sequence[str], second: Sequence[str]) -> tuple[str, str] | None:
    """"non-profit" (two words: "non", "profit") on one side, "profit" alone on the other."""
    for i, word in enumerate(first[:-1]):
        # "un" is not one of them: it is the article in French, Spanish and Italian.
        if word in ("non", "anti", "nicht") and first[i + 1] in second:
            following = first[i + 1]
            if not any(second[j - 1] == word for j in range(1, len(second)) if second[j] == following):
                return (f"{word}-{following}", following)
    return None


# ------------------------------------------------------------------------------------- the answer's shape

# Output formats a request can ask for; two prompts that ask for different ones (or one for none) differ.
FORMATS = {
    "json": "json", "yaml": "yaml", "yml": "yaml", "xml": "xml", "csv": "csv", "table": "table", "tables": "table",
    "tabelle": "table", "tableau": "table", "tabla": "table", "tabella": "table", "tabel": "table",
    "tabela": "table", "markdown": "markdown", "html": "html", "bullet": "bullets", "bullets": "bullets",
    "bulleted": "bullets", "numbered": "numbered", "tweet": "tweet", "tweets": "tweet", "poem": "poem",
    "haiku": "haiku", "limerick": "limerick", "sonnet": "sonnet", "song": "song", "rap": "song", "memo": "memo",
    "slide": "slides", "slides": "slides", "outline": "outline", "checklist": "checklist", "flowchart": "flowchart",
    "essay": "essay", "dialogue": "dialogue", "dialog": "dialogue",
    "story": "story", "letter": "letter", "email": "email", "mail": "email", "spreadsheet": "spreadsheet",
    "infographic": "infographic", "sms": "text message", "dict": "dictionary", "dictionary": "dictionary",
    "faq": "faq", "quiz": "quiz",
    "gedicht": "poem", "poème": "poem", "poema": "poem", "poesia": "poem", "wiersz": "poem",
    "aufzählung": "bullets", "puces": "bullets",
}
# Size of the asked answer: words that ask for a short or a long one.
SHORT_WORDS = frozenset("""
brief briefly shortly concise concisely succinct succinctly tldr tl dr
oneliner one-liner nutshell kurz knapp bref brève brièvement breve brevemente corto kort korte beknopt
krótko krótki krótka curto
""".split())
LONG_WORDS = frozenset("""
detail detailed details depth in-depth thorough thoroughly comprehensive comprehensively extensive extensively
exhaustive exhaustively elaborate lengthy essay ausführlich ausführliche detailliert détaillé détaillée
détail approfondi detalle detallado detallada extenso dettaglio dettagliato dettagliata approfondito
uitgebreid uitgebreide gedetailleerd szczegółowo szczegółowy szczegółowa obszerny detalhe detalhado detalhada
""".split())
# Who the answer is for.
AUDIENCES = {
    "child": "child", "children": "child", "kid": "child", "kids": "child", "kind": None, "eli5": "child",
    "five": None, "beginner": "beginner", "beginners": "beginner", "novice": "beginner", "layman": "beginner",
    "laymen": "beginner", "expert": "expert", "experts": "expert", "phd": "expert", "anfänger": "beginner",
    "débutant": "beginner", "débutants": "beginner",
    "principiante": "beginner", "principiantes": "beginner", "principianti": "beginner", "beginners.": "beginner",
    "experten": "expert", "expertos": "expert", "esperti": "expert",
}
_SIZE_NUMBER = re.compile(r"\b(\d+)\s*[-]?\s*(words?|sentences?|paragraphs?|lines?|pages?|"
                          r"wörter|sätze|mots|phrases|palabras|frases|parole|frasi|woorden|zinnen|słów|zdań|palavras)\b")


def answer_shape(words: Sequence[str], text: str) -> frozenset[str]:
    """The format, size and audience a prompt asks its answer to have, as "format:json", "size:short", ..."""
    shape: set[str] = set()
    for word in words:
        fmt = FORMATS.get(word)
        if fmt:
            shape.add(f"format:{fmt}")
        audience = AUDIENCES.get(word)
        if audience:
            shape.add(f"audience:{audience}")
        if word in SHORT_WORDS:
            shape.add("size:short")
        elif word in LONG_WORDS:
            shape.add("size:long")
    for number, unit in _SIZE_NUMBER.findall(text.lower()):
        shape.add("size:short" if int(number) <= (3 if not unit.startswith("w") else 100) else "size:long")
    if _one_sentence(words):
        shape.add("size:short")
    joined = " ".join(words)
    if _SIMPLE_TERMS.search(joined):
        shape.add("audience:simple")
    for phrase, mark in _PHRASES:
        if phrase.search(joined):
            shape.add(mark)
    if any((_age(word) or 99) <= 12 for word in _AGE.findall(joined)):
        shape.add("audience:child")
    return frozenset(shape)


_SIMPLE_TERMS = re.compile(r"\bsimple (?:terms|words|language|english)\b|\blike i(?:'?m| am) (?:5|five)\b"
                           r"|\beinfachen worten\b|"
                           r"\btermes simples\b|\bpalabras sencillas\b|\btermini semplici\b|\beenvoudige woorden\b")


_PHRASES = (
    (re.compile(r"\b(?:step by step|every step|each step|all (?:the )?steps|show (?:your|the|all) work)\b"),
     "size:steps"),
    (re.compile(r"\b(?:just|only) (?:give me )?the (?:final )?(?:answer|result|number)\b|\bfinal answer only\b"),
     "size:answer only"),
    (re.compile(r"\btext message\b"), "format:text message"),
    (re.compile(r"\bmultiple choice\b"), "format:multiple choice"),
)
_AGE = re.compile(r"\b(\w+) years? old\b")
_AGE_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
              "ten": 10, "eleven": 11, "twelve": 12}


def _age(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    return _AGE_WORDS.get(word)


def _one_sentence(words: Sequence[str]) -> bool:
    """"in one sentence", "in a word", "in one line", "en une phrase", "in einem Satz", "en una frase"."""
    joined = " ".join(words)
    return bool(re.search(r"\b(?:one|a|single|einem|une|una|uno|één|jednym|uma) (?:sentence|word|line|satz|phrase|"
                          r"frase|zin|zdaniu|mot|palabra|parola|wort)\b", joined))
