"""Edits of a real prompt that keep its meaning, and minimal edits that change it: training pairs for the
pair encoder (``bench/train_pair_encoder.py``) and a generated evaluation set.

A semantic cache must serve "Canada's population?" for "What is the population of Canada?" and must not
serve "the employee's duties to the employer" for "the employer's duties to the employee". Public paraphrase
data (QQP, PAWS, STS-B) holds few of either, so both are made here from real prompts (Quora questions,
ShareGPT first turns):

* **rewordings** (``REWORDINGS``): a question turned into an instruction, a possessive for an "of" phrase,
  a synonym, a quantity written another way (digits / words, symbols / names, abbreviated units, durations in
  other units), an idiom for a plain phrase, a phrase moved to the front, politeness and register,
  contractions and spelling variants, and several of these at once;
* **swaps** (``SWAPS``): a number or a unit changed, a negation added or removed, an antonym (by prefix or
  from a list), two names around a direction word exchanged, two roles exchanged around a possessive or a
  preposition, a name replaced, a programming or natural language replaced, the output format changed, the
  scope or size of the asked answer changed.

Every word list is split in two by a hash of its entry (``half``): pairs for fitting use one half, the
generated evaluation the other, so its figures say how the model does on words it was never shown.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence

Edit = Callable[[str, random.Random, str], str | None]  # (text, rng, half) -> edited text, or None


def half(entry: str) -> str:
    """"fit" or "heldout", fixed for a word-list entry on every machine."""
    return "fit" if int(hashlib.md5(entry.encode()).hexdigest(), 16) % 3 else "heldout"


def _split(entries: Sequence[tuple[str, str]], which: str) -> list[tuple[str, str]]:
    return [e for e in entries if half(e[0]) == which]


def _sub_word(text: str, old: str, new: str) -> str | None:
    """`text` with the first whole-word `old` (any case) replaced by `new` in the same case."""
    match = re.search(rf"(?<![\w'-]){re.escape(old)}(?![\w-])", text, flags=re.IGNORECASE)
    if match is None:
        return None
    found = match.group()
    if found[:1].isupper():
        new = new[:1].upper() + new[1:]
    return text[:match.start()] + new + text[match.end():]


def _either_way(text: str, rng: random.Random, pairs: Sequence[tuple[str, str]]) -> str | None:
    """Replace one word of `pairs` that occurs in `text` by its partner (either direction)."""
    options = [(a, b) for a, b in pairs] + [(b, a) for a, b in pairs]
    rng.shuffle(options)
    for old, new in options:
        changed = _sub_word(text, old, new)
        if changed is not None and changed != text:
            return changed
    return None


# ------------------------------------------------------------------------------------------- word lists

SYNONYMS = [tuple(p.split("/")) for p in """
buy/purchase fix/repair car/automobile begin/start help/assist show/display error/bug quick/fast use/utilize
big/large small/little choose/pick make/create build/construct find/locate get/obtain answer/reply job/work
kid/child kids/children mistake/error simple/easy hard/difficult improve/enhance method/approach issue/problem
issues/problems tips/advice  movie/film fridge/refrigerator phone/smartphone doctor/physician
fast/rapid happy/glad rich/wealthy  stop/quit   picture/photo pictures/photos
explain/describe  learn/study idea/concept ideas/suggestions cheap/inexpensive funny/humorous
enough/sufficient often/frequently maybe/perhaps smart/intelligent task/assignment
goal/objective quickly/rapidly talk/speak job/position jobs/positions boss/manager
delete/remove cut/reduce keep/retain need/require want/wish allow/permit begin/commence main/primary
important/crucial way/method shows/displays help/aid mad/angry scared/afraid sick/ill tired/exhausted
strange/odd  kinds/types couch/sofa trash/garbage vacation/holiday apartment/flat cookie/biscuit
truck/lorry soccer/football gas/petrol guess/estimate
""".split()]

# Roots that take a negative prefix; the prefixed word means the opposite.
PREFIX_ANTONYMS = [tuple(p.split("/")) for p in """
legal/illegal possible/impossible able/unable likely/unlikely happy/unhappy healthy/unhealthy safe/unsafe
install/uninstall lock/unlock like/dislike agree/disagree honest/dishonest regular/irregular relevant/irrelevant
responsible/irresponsible advantages/disadvantages advantage/disadvantage encrypt/decrypt connect/disconnect
enable/disable visible/invisible correct/incorrect complete/incomplete formal/informal direct/indirect
efficient/inefficient effective/ineffective expensive/inexpensive mature/immature moral/immoral
patient/impatient polite/impolite perfect/imperfect logical/illogical literate/illiterate rational/irrational
reversible/irreversible typical/atypical symmetric/asymmetric fair/unfair known/unknown usual/unusual
common/uncommon comfortable/uncomfortable necessary/unnecessary employed/unemployed employment/unemployment
balanced/unbalanced stable/unstable ethical/unethical certain/uncertain appear/disappear approve/disapprove
obey/disobey trust/distrust satisfied/dissatisfied organized/disorganized similar/dissimilar continue/discontinue
load/unload pack/unpack subscribe/unsubscribe follow/unfollow block/unblock freeze/unfreeze compress/decompress
activate/deactivate increase/decrease toxic/nontoxic profit/nonprofit verbal/nonverbal fiction/nonfiction
sense/nonsense conscious/unconscious acceptable/unacceptable avoidable/unavoidable limited/unlimited
""".split()]

LIST_ANTONYMS = [tuple(p.split("/")) for p in """
increase/reduce buy/sell best/worst cheap/expensive before/after maximum/minimum upload/download gain/lose
hot/cold import/export long/short high/low add/remove win/lose open/close start/stop fast/slow early/late
strong/weak rise/fall love/hate push/pull accept/reject borrow/lend send/receive arrive/leave first/last
input/output inside/outside above/below more/less most/least easy/hard heavy/light young/old new/old
wet/dry full/empty positive/negative true/false pros/cons strengths/weaknesses benefits/risks success/failure
winner/loser buyer/seller teacher/student parent/child asleep/awake ascending/descending maximize/minimize
overestimate/underestimate overweight/underweight attack/defend expand/shrink include/exclude internal/external
public/private permanent/temporary rural/urban male/female summer/winter morning/evening north/south
east/west left/right top/bottom forward/backward encode/decode deposit/withdraw profit/loss
""".split()]

# People and parties whose places in a request decide its answer ("the tenant's rights against the landlord").
ROLE_NOUNS = """
employer employee employees landlord tenant tenants buyer seller teacher student students parent parents child
children doctor patient patients husband wife man woman men women boy girl customer customers company lawyer
client manager team dog cat owner host guest author reader user users developer developers server driver
passenger coach player mother daughter father son boss intern police citizen citizens government people bank
borrower lender investor investors startup friend partner boyfriend girlfriend kid kids adult adults admin
attacker victim judge king queen brother sister candidate recruiter supplier vendor nurse seller landlords
insurer insured creditor debtor plaintiff defendant shareholder shareholders founder founders
""".split()

IDIOMS = [tuple(p.split("|")) for p in """
on a tight budget|without spending much money
from scratch|starting from nothing
in a nutshell|in short
ASAP|as soon as possible
a piece of cake|very easy
at the end of the day|ultimately
step up my game|get better
hit the books|study
get the hang of|learn
figure out|work out
come up with|think of
get rid of|remove
look into|investigate
put off|postpone
keep in mind|remember
set up|configure
find out|discover
go over|review
run out of|use up
deal with|handle
""".strip().splitlines()]

SPELLINGS = [tuple(p.split("/")) for p in """
color/colour favorite/favourite organize/organise center/centre email/e-mail online/on-line analyze/analyse
behavior/behaviour optimize/optimise realize/realise neighbor/neighbour defense/defence
catalog/catalogue travelling/traveling program/programme okay/ok
""".split()]

CONTRACTIONS = [tuple(p.strip().split("/")) for p in """
do not/don't, does not/doesn't, is not/isn't, are not/aren't, cannot/can't, what is/what's, it is/it's,
I am/I'm, I have/I've, you are/you're, that is/that's, there is/there's, I would/I'd, let us/let's,
how is/how's, where is/where's, who is/who's, should not/shouldn't, will not/won't, would not/wouldn't
""".replace("\n", " ").split(", ")]

NUMBER_WORDS = {"2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven", "8": "eight",
                "9": "nine", "10": "ten", "12": "twelve", "15": "fifteen", "20": "twenty", "30": "thirty",
                "50": "fifty", "100": "a hundred", "1000": "a thousand"}
UNITS = [tuple(p.strip().split("/")) for p in """
km/kilometers, kg/kilograms, lbs/pounds, min/minutes, hrs/hours, sec/seconds, GB/gigabytes, MB/megabytes,
cm/centimeters, mm/millimeters, ml/milliliters, mph/miles per hour, ft/feet, m/meters, g/grams, oz/ounces,
yrs/years, mins/minutes, h/hours, l/liters
""".replace("\n", " ").split(", ")]
# Same duration, other unit: (amount unit, amount unit)
DURATIONS = [("2 hours", "120 minutes"), ("1 hour", "60 minutes"), ("an hour", "60 minutes"),
             ("half an hour", "30 minutes"), ("a week", "7 days"), ("two weeks", "14 days"),
             ("a day", "24 hours"), ("3 days", "72 hours"), ("a year", "12 months"),
             ("90 minutes", "an hour and a half"), ("a minute", "60 seconds"), ("two years", "24 months"),
             ("a decade", "10 years"), ("a fortnight", "two weeks")]
SYMBOLS = [("%", " percent"), ("&", "and"), ("+", "plus"), ("=", "equals"), ("#", "number "),
           ("°C", " degrees Celsius"), ("°F", " degrees Fahrenheit")]
UNIT_SWAPS = [tuple(p.split("/")) for p in """
km/miles kg/pounds minutes/hours hours/days days/weeks weeks/months months/years celsius/fahrenheit
dollars/euros USD/EUR cm/inches meters/feet liters/gallons GB/MB seconds/minutes percent/points
""".split()]

FORMATS = [p for p in """
as JSON|as YAML|as XML|as a CSV file|as a table|as a bullet list|as a numbered list|in markdown|as plain text|
as an email|as a tweet|as a poem|as a haiku|as a limerick|as a SQL query|as a Python dict|as an Excel formula|
as a slide outline|as a letter|as a blog post|as a press release|as a song|as a dialogue|as a flowchart|in HTML|
as a LinkedIn post|as a cover letter|as a memo|as a checklist|as a mind map
""".replace("\n", "").split("|") if p]

SCOPES = [p for p in """
in one sentence|in a single word|in two sentences|in one paragraph|in a detailed essay|briefly|in depth|
in great detail|in 50 words|in 500 words|in 1000 words|step by step|in simple terms for a 5 year old|for experts|
for beginners|for a PhD student|with examples|without examples|in a one-line answer|as a long article|
at a high level|with all the details|as a short summary|exhaustively|in 3 bullet points|in 10 bullet points|
for a child|for a lawyer|quickly, just the key point|with sources|in a short tweet-length answer
""".replace("\n", "").split("|") if p]

PROGRAMMING = ("Python Java JavaScript TypeScript C++ C# Ruby PHP Rust Go Swift Kotlin Scala Perl Haskell Bash SQL R "
               "MATLAB Lua Dart Elixir").split()
NATURAL = ("English French German Spanish Italian Portuguese Dutch Polish Russian Chinese Japanese Korean Arabic "
           "Hindi Turkish Greek Swedish Finnish Czech").split()
NAMES = {
    "country": "France Germany Spain Italy India China Japan Brazil Canada Mexico Russia Australia Egypt Kenya "
               "Nigeria Poland Sweden Norway Turkey Iran Pakistan Indonesia Argentina Chile Portugal Greece "
               "Austria Belgium Netherlands Denmark Finland Ireland Vietnam Thailand Morocco Peru Colombia".split(),
    "city": "Paris London Berlin Madrid Rome Tokyo Delhi Mumbai Beijing Moscow Sydney Toronto Chicago Boston "
            "Seattle Dubai Singapore Bangalore Amsterdam Vienna Prague Lisbon Dublin Munich Milan Warsaw Oslo".split(),
    "company": "Google Apple Microsoft Amazon Facebook Netflix Tesla Samsung IBM Intel Oracle Uber Airbnb "
               "Twitter LinkedIn Flipkart Infosys Nokia Sony Adobe Spotify Nvidia Siemens SAP Deloitte".split(),
    "person": "Trump Obama Clinton Modi Putin Einstein Newton Gandhi Shakespeare Lincoln Musk Gates Jobs "
              "Zuckerberg Messi Ronaldo Federer Nadal Darwin Picasso Mozart Beethoven Napoleon Churchill".split(),
    "product": "iPhone Android Windows Linux macOS Excel Word Photoshop Kubernetes Docker React Django "
               "PostgreSQL MySQL MongoDB Redis Slack Zoom WhatsApp Instagram TikTok YouTube ChatGPT".split(),
}
_NAME_GROUP = {name: group for group, names in NAMES.items() for name in names}

_AUXILIARIES = "is are was were can could should would will do does did has have".split()
_SUBJECTS = "i you we they it he she there people this that".split()
_DIRECTION = re.compile(r"\b([A-Za-z][\w+#.-]*) (to|than|into|from|over) ([A-Za-z][\w+#.-]*)\b")
_LITTLE = set("a an the my your our their his her its this that these those some any be get go it me you them "
              "him us do how what why when where which who is are was were".split())
_PREPOSITIONS = "of to for from with against by than over about toward towards on".split()


# ------------------------------------------------------------------------------------------- rewordings

_QUESTION_FORMS = [
    (r"^how (?:do|can|should) (?:i|you|we|one) (.+?)\??$",
     ["Tell me how to {0}.", "Explain how to {0}.", "I need to know how to {0}.", "Show me how to {0}.",
      "What's the way to {0}?", "how to {0}", "Help me {0}.", "Walk me through how to {0}.",
      "Could you explain how to {0}?", "I want to {0}. How?", "Steps to {0}?", "How would I {0}?"]),
    (r"^what (?:is|are) (?:a |an |the )?(.+?)\??$",
     ["Explain {0}.", "Tell me what {0} is.", "Define {0}.", "I'd like to know what {0} is.", "{0}: what is it?",
      "Can you explain what {0} is?", "Describe {0}.", "what's {0}", "Give me an explanation of {0}."]),
    (r"^why (?:is|are|do|does|did) (.+?)\??$",
     ["Explain why {orig}", "Tell me why {orig}", "I'd like to understand why {orig}", "Reason why {orig}"]),
    (r"^(?:can|could|would) you (?:please )?(.+?)\??$",
     ["{0}.", "Please {0}.", "I'd like you to {0}.", "{0}, please.", "I need you to {0}.", "Kindly {0}."]),
    (r"^(?:please )?(write|create|give me|generate|make|list|explain|describe|summarize|suggest|draft|provide|compose)"
     r" (.+?)[.!]?$",
     ["Can you {0} {1}?", "Could you {0} {1} for me?", "I need you to {0} {1}.", "Please {0} {1}.",
      "I'd like you to {0} {1}.", "{0} {1}, please.", "Would you {0} {1}?"]),
]

LEAD_INS = ["Hey, ", "Hi! ", "Hello, ", "Quick question: ", "I was wondering, ", "Sorry to bother you, but ",
            "Hi there. ", "Good morning! ", "Question: ", "Help: ", "ok so ", "Hey there, quick one: ",
            "Can I ask something? ", "Dear assistant, ", "yo ", "Um, ", "Please help. "]
CLOSINGS = [" Thanks!", " Thank you.", " Thanks in advance.", " thx", " Any help appreciated.", " Cheers.",
            " Thanks a lot!", " I'm curious.", " Please help.", " ty", " Much appreciated!", " :)"]


def _question_to_instruction(text: str, rng: random.Random, which: str) -> str | None:
    body = text.strip()
    for pattern, forms in _QUESTION_FORMS:
        match = re.match(pattern, body, flags=re.IGNORECASE)
        if match is None:
            continue
        groups = [g.strip() for g in match.groups()]
        if any(not g for g in groups):
            return None
        if groups and groups[0][:1].isupper() and groups[0].lower() in ("write", "create", "give me", "generate",
                "make", "list", "explain", "describe", "summarize", "suggest", "draft", "provide", "compose"):
            groups[0] = groups[0].lower()
        form = rng.choice(forms)
        orig = body[0].lower() + body[1:]
        out = form.format(*groups, orig=orig.rstrip("?") + ".")
        return out[0].upper() + out[1:] if rng.random() < 0.8 else out
    return None


def _possessive(text: str, rng: random.Random, which: str) -> str | None:
    """"the capital of France" -> "France's capital", and back."""
    match = re.search(r"\bthe ([a-z]+(?: [a-z]+)?) of (?:the )?([A-Z][\w]+|[a-z]{3,})\b", text)
    if match is not None and match.group(1).split()[0] not in _LITTLE:
        owner = match.group(2)
        owner = owner if owner[0].isupper() else "the " + owner
        return text[:match.start()] + f"{owner}'s {match.group(1)}" + text[match.end():]
    match = re.search(r"\b(?:(the) )?([A-Z][\w]+|[a-z]{3,})'s ([a-z]{3,})\b", text)
    if match is not None and match.group(2).lower() not in _LITTLE:
        owner = ("the " if match.group(1) else "") + match.group(2)
        return text[:match.start()] + f"the {match.group(3)} of {owner}" + text[match.end():]
    return None


def _synonym(text: str, rng: random.Random, which: str) -> str | None:
    return _either_way(text, rng, _split(SYNONYMS, which))


def _spelling(text: str, rng: random.Random, which: str) -> str | None:
    return _either_way(text, rng, SPELLINGS + CONTRACTIONS)


def _idiom(text: str, rng: random.Random, which: str) -> str | None:
    options = [(a, b) for a, b in _split(IDIOMS, which)] + [(b, a) for a, b in _split(IDIOMS, which)]
    rng.shuffle(options)
    for old, new in options:
        if re.search(rf"\b{re.escape(old)}\b", text, flags=re.IGNORECASE):
            return re.sub(rf"\b{re.escape(old)}\b", new, text, count=1, flags=re.IGNORECASE)
    return None


def _quantity(text: str, rng: random.Random, which: str) -> str | None:
    """The same quantity written another way."""
    options: list[Callable[[], str | None]] = []
    for digits, word in NUMBER_WORDS.items():
        options.append(lambda d=digits, w=word: _sub_word(text, d, w) or _sub_word(text, w, d))
    for short, long in UNITS:
        options.append(lambda s=short, w=long: _unit(text, s, w))
    for a, b in DURATIONS:
        options.append(lambda a=a, b=b: _sub_word(text, a, b) or _sub_word(text, b, a))
    for symbol, name in SYMBOLS:
        options.append(lambda s=symbol, n=name: text.replace(s, n, 1) if s in text else None)
    options.append(lambda: re.sub(r"\b(\d{1,3}),(\d{3})\b", r"\1\2", text, count=1))
    options.append(lambda: re.sub(r"\$(\d+)", r"\1 dollars", text, count=1))
    options.append(lambda: re.sub(r"(\d+) dollars", r"$\1", text, count=1))
    rng.shuffle(options)
    for option in options:
        changed = option()
        if changed is not None and changed != text:
            return changed
    return None


def _unit(text: str, short: str, long: str) -> str | None:
    match = re.search(rf"(\d)\s?{re.escape(short)}\b", text)
    if match is not None:
        return text[:match.start()] + match.group(1) + " " + long + text[match.end():]
    match = re.search(rf"(\d) {re.escape(long)}\b", text)
    if match is not None:
        return text[:match.start()] + match.group(1) + short + text[match.end():]
    return None


def _front(text: str, rng: random.Random, which: str) -> str | None:
    """A phrase at the end moved to the front ("How do I X in Python?" -> "In Python, how do I X?")."""
    match = re.search(r"^(.{12,}?) ((?:in|for|on|with|using|during|at|without|after|before|when|if) [^,?.]{3,40})"
                      r"([?.!]?)$", text.strip())
    if match is None:
        match_front = re.match(r"^((?:In|For|On|With|Using|During|At|When|If) [^,]{3,40}), (.+?)([?.!]?)$",
                               text.strip())
        if match_front is None:
            return None
        phrase, rest, end = match_front.groups()
        return rest[0].upper() + rest[1:] + " " + phrase[0].lower() + phrase[1:] + end
    rest, phrase, end = match.groups()
    if phrase.split()[0] in ("without",) and rng.random() < 0.5:
        return None
    return phrase[0].upper() + phrase[1:] + ", " + rest[0].lower() + rest[1:] + end


def _register(text: str, rng: random.Random, which: str) -> str | None:
    choice = rng.random()
    if choice < 0.35:
        lead = rng.choice(LEAD_INS)
        body = text[0].lower() + text[1:] if lead.endswith((", ", "but ", "so ", "yo ", "Um, ")) else text
        return lead + body
    if choice < 0.6:
        return text.rstrip() + rng.choice(CLOSINGS)
    if choice < 0.8:
        return text.lower().rstrip("?.!")  # typed fast
    return "Please " + text[0].lower() + text[1:] if not text.lower().startswith("please") else text[7:]


REWORDINGS: dict[str, Edit] = {
    "instruction": _question_to_instruction, "possessive": _possessive, "synonym": _synonym,
    "quantity": _quantity, "idiom": _idiom, "reorder": _front, "register": _register, "contraction": _spelling,
}


def mixed(text: str, rng: random.Random, which: str) -> str | None:
    """Two or three rewordings at once, the way people reword."""
    kinds = rng.sample(sorted(REWORDINGS), k=len(REWORDINGS))
    done, out = 0, text
    for kind in kinds:
        changed = REWORDINGS[kind](out, rng, which)
        if changed is not None and changed != out:
            out, done = changed, done + 1
        if done >= rng.choice((2, 3)):
            break
    return out if done >= 2 else None


# ------------------------------------------------------------------------------------------- swaps


def _number(text: str, rng: random.Random, which: str) -> str | None:
    match = re.search(r"(?<![\w.])\d+(?![\w.]*\d)", text)
    if match is not None:
        value = int(match.group())
        other = value + rng.choice((1, 2, 3, 5, 10)) if value < 1000 else value + rng.choice((1, 10, 100))
        if rng.random() < 0.3 and value > 1:
            other = value - 1
        return text[:match.start()] + str(other) + text[match.end():]
    words = [w for w in NUMBER_WORDS.values() if " " not in w]
    for word in words:
        changed = _sub_word(text, word, rng.choice([w for w in words if w != word]))
        if changed is not None:
            return changed
    return _either_way(text, rng, _split(UNIT_SWAPS, which))


def _negation(text: str, rng: random.Random, which: str) -> str | None:
    lowered = f" {text.lower()} "
    for negated, plain in ((" not ", " "), ("n't ", " "), (" never ", " always "), (" without ", " with "),
                           (" no ", " some ")):
        if negated in lowered:
            if negated == "n't ":
                changed = re.sub(r"(\w+)n't\b", lambda m: {"ca": "can", "wo": "will"}.get(m.group(1), m.group(1)),
                                 text, count=1, flags=re.IGNORECASE)
            else:
                changed = re.sub(rf"\b{negated.strip()}\b ?", plain.strip() + (" " if plain.strip() else ""),
                                 text, count=1, flags=re.IGNORECASE)
            return changed if changed != text else None
    words = text.split(" ")
    for i, word in enumerate(words[:-1]):
        if word.lower() in _AUXILIARIES:
            at = i + 2 if words[i + 1].lower().strip("?,.") in _SUBJECTS else i + 1
            if rng.random() < 0.3 and at == i + 1:
                return " ".join([*words[:i], word + "n't", *words[i + 1:]])
            return " ".join([*words[:at], rng.choice(("not", "not", "never")), *words[at:]])
    if " with " in lowered:
        return _sub_word(text, "with", "without")
    match = re.match(r"^(how (?:do|can) i|how to) ", text, flags=re.IGNORECASE)
    if match is not None:
        return text[:match.end()] + "avoid " + text[match.end():]
    return None


def _antonym(text: str, rng: random.Random, which: str) -> str | None:
    pairs = _split(PREFIX_ANTONYMS, which) + _split(LIST_ANTONYMS, which)
    return _either_way(text, rng, pairs)


def _direction(text: str, rng: random.Random, which: str) -> str | None:
    for match in _DIRECTION.finditer(text):
        left, word, right = match.groups()
        if left.lower() in _LITTLE or right.lower() in _LITTLE or left.lower() == right.lower():
            continue
        if match.start() == 0 or len(left) < 3 or len(right) < 3:
            continue
        names = left[0].isupper() and right[0].isupper()
        if not (names or word == "than" or text[max(0, match.start() - 5):match.start()].lower() == "from "):
            continue
        return text[:match.start()] + f"{right} {word} {left}" + text[match.end():]
    return None


def _role(text: str, rng: random.Random, which: str) -> str | None:
    """Two people or parties exchanged ("the employer's duties to the employee")."""
    found = []
    for word in _split([(w, w) for w in ROLE_NOUNS], which):
        match = re.search(rf"\b{word[0]}\b", text, flags=re.IGNORECASE)
        if match is not None:
            found.append(match)
    if len(found) < 2:
        return None
    pa, pb = rng.sample(found, 2)
    return _exchange(text, pa, pb)


def _exchange(text: str, pa: re.Match[str], pb: re.Match[str]) -> str:
    first, second = sorted((pa, pb), key=lambda m: m.start())
    return (text[:first.start()] + second.group() + text[first.end():second.start()] + first.group()
            + text[second.end():])


def _entity(text: str, rng: random.Random, which: str) -> str | None:
    for match in re.finditer(r"\b[A-Z][A-Za-z]+\b", text):
        group = _NAME_GROUP.get(match.group())
        if group is not None:
            other = rng.choice([n for n in NAMES[group] if n != match.group()])
            return text[:match.start()] + other + text[match.end():]
    names = [m for m in re.finditer(r"(?<=[a-z,] )[A-Z][a-z]{3,}\b", text)]
    if names:
        match = rng.choice(names)
        group = rng.choice(sorted(NAMES))
        return text[:match.start()] + rng.choice(NAMES[group]) + text[match.end():]
    return None


def _language(text: str, rng: random.Random, which: str) -> str | None:
    for names in (PROGRAMMING, NATURAL):
        for name in names:
            match = re.search(rf"(?<![\w+#]){re.escape(name)}(?![\w+#])", text)
            if match is not None and (len(name) > 2 or match.start() > 0):
                other = rng.choice([n for n in names if n != name and len(n) > 2])
                return text[:match.start()] + other + text[match.end():]
    if rng.random() < 0.5:
        return None
    return text.rstrip(".?! ") + rng.choice([" in Python", " in JavaScript", " in Java", ". Answer in German.",
                                             ". Reply in French.", " in Spanish", ", in Rust"])


def _other_phrase(text: str, phrases: Sequence[str], rng: random.Random) -> str | None:
    """`text` with the first of `phrases` it contains replaced by another of them; None if it contains none."""
    present = [p for p in phrases if p.lower() in text.lower()]
    if not present:
        return None
    old = present[0]
    start = text.lower().index(old.lower())
    return text[:start] + rng.choice([p for p in phrases if p != old]) + text[start + len(old):]


def _format(text: str, rng: random.Random, which: str) -> str | None:
    replaced = _other_phrase(text, FORMATS, rng)
    if replaced is not None:
        return replaced
    if not re.match(r"^(write|create|give|list|generate|make|summarize|explain|describe|draft|provide|show)\b",
                    text, flags=re.IGNORECASE) and rng.random() < 0.6:
        return None
    ends = (".", "", "?") if text.endswith("?") else (".", "")
    return text.rstrip(".?! ") + " " + rng.choice(FORMATS) + rng.choice(ends)


def _scope(text: str, rng: random.Random, which: str) -> str | None:
    replaced = _other_phrase(text, SCOPES, rng)
    if replaced is not None:
        return replaced
    end = "?" if text.rstrip().endswith("?") else "."
    scope = rng.choice(SCOPES)
    if rng.random() < 0.3:
        return rng.choice(["Briefly: ", "In one sentence: ", "In detail: ", "Long answer please: ",
                           "TL;DR version: ", "Explain like I'm five: "]) + text
    return text.rstrip(".?! ") + (", " if rng.random() < 0.5 else " ") + scope + end


SWAPS: dict[str, Edit] = {
    "number": _number, "negation": _negation, "antonym": _antonym, "direction": _direction, "role": _role,
    "entity": _entity, "language": _language, "format": _format, "scope": _scope,
}
ALL_EDITS: dict[str, tuple[Edit, bool]] = {
    **{kind: (edit, False) for kind, edit in SWAPS.items()},
    **{kind: (edit, True) for kind, edit in REWORDINGS.items()}, "mixed": (mixed, True),
}


def edited_pairs(texts: Sequence[str], *, which: str, seed: int, per_text: int = 2) -> list[tuple[str, str, bool, str]]:
    """(original, edited, same meaning, kind) for up to `per_text` rewordings and as many swaps per text,
    word lists from half `which`."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        for pool, same in (([*REWORDINGS, "mixed", "mixed"], True), (list(SWAPS), False)):
            kinds = rng.sample(pool, k=len(pool))
            made = 0
            for kind in kinds:
                edit = ALL_EDITS[kind][0]
                changed = edit(text, rng, which)
                if changed is None or changed.strip() == text.strip() or not changed.strip():
                    continue
                out.append((text, changed, same, kind) if rng.random() < 0.5 else (changed, text, same, kind))
                made += 1
                if made >= per_text:
                    break
    return out
