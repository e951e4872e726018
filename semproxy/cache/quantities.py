"""Quantities, not strings: "2 hours" and "120 minutes", "5 km" and "5 kilometers", "three" and "3", "15 %" and
"15 percent" are each one quantity, while "5 km" and "5 miles" are two.

`quantities(text)` reads every number of a prompt with the unit written after it (or the currency sign before
it) and returns each as one canonical string: the value in the unit's base (seconds, metres, grams, litres,
bytes) followed by the dimension ("7200 s"), or the bare value when no unit follows. The hit verifier's number
rule compares these sets, so it compares quantities, not the way they were written.
"""

from __future__ import annotations

import re
from fractions import Fraction

# unit word (lower case) -> (dimension, factor to the base unit)
_UNITS: dict[str, tuple[str, Fraction]] = {}


def _add(dimension: str, factor: Fraction | int | str, *names: str) -> None:
    for name in names:
        _UNITS[name] = (dimension, Fraction(factor))


_add("s", 1, "s", "sec", "secs", "second", "seconds", "sekunde", "sekunden", "seconde", "secondes", "segundo",
     "segundos", "secondo", "secondi", "seconden", "sekunda", "sekundy", "sekund")
_add("s", 60, "min", "mins", "minute", "minutes", "minuten", "minuto", "minutos", "minuti", "minuut", "minuta",
     "minuty", "minut")
_add("s", 3600, "h", "hr", "hrs", "hour", "hours", "stunde", "stunden", "std", "heure", "heures", "hora", "horas",
     "ora", "ore", "uur", "uren", "godzina", "godziny", "godzin")
_add("s", 86400, "day", "days", "d", "tag", "tage", "tagen", "jour", "jours", "día", "días", "dia", "dias",
     "giorno", "giorni", "dag", "dagen", "dzień", "dni")
_add("s", 604800, "week", "weeks", "wk", "wks", "woche", "wochen", "semaine", "semaines", "semana", "semanas",
     "settimana", "settimane", "week", "weken", "tydzień", "tygodnie", "tygodni")
_add("s", 2629800, "month", "months", "monat", "monate", "monaten", "mois", "mes", "meses", "mese", "mesi",
     "maand", "maanden", "miesiąc", "miesiące", "miesięcy")
_add("s", 31557600, "year", "years", "yr", "yrs", "jahr", "jahre", "jahren", "an", "ans", "année", "années", "año",
     "años", "ano", "anos", "anno", "anni", "jaar", "jaren", "rok", "lata", "lat")
_add("s", 315576000, "decade", "decades")
_add("m", Fraction(1, 1000), "mm", "millimeter", "millimeters", "millimetre", "millimetres")
_add("m", Fraction(1, 100), "cm", "centimeter", "centimeters", "centimetre", "centimetres", "zentimeter")
_add("m", 1, "m", "meter", "meters", "metre", "metres", "mètre", "mètres", "metro", "metros", "metri")
_add("m", 1000, "km", "kilometer", "kilometers", "kilometre", "kilometres", "kilomètre", "kilomètres",
     "kilómetro", "kilómetros", "chilometri", "kilometrów", "kms")
_add("m", Fraction(254, 10000), "inch", "inches", "in.")
_add("m", Fraction(3048, 10000), "ft", "foot", "feet")
_add("m", Fraction(9144, 10000), "yard", "yards", "yd")
_add("m", Fraction(1609344, 1000), "mile", "miles", "mi")
_add("g", Fraction(1, 1000), "mg", "milligram", "milligrams")
_add("g", 1, "g", "gram", "grams", "gramm", "gramme", "grammes", "gramo", "gramos", "grammi", "gram", "gramów")
_add("g", 1000, "kg", "kilo", "kilos", "quilo", "quilos", "quilograma", "quilogramas", "kilogram", "kilograms",
     "kilogramm", "kilogramme", "kilogrammes", "kilogramo", "kilogramos", "kilogrammi", "kilogramów", "kgs")
_add("g", Fraction(45359237, 100000), "lb", "lbs", "pound", "pounds", "pfund")
_add("g", Fraction(28349523125, 1000000000), "oz", "ounce", "ounces")
_add("l", Fraction(1, 1000), "ml", "milliliter", "milliliters", "millilitre", "millilitres")
_add("l", 1, "l", "liter", "liters", "litre", "litres", "litro", "litros", "litri")
_add("l", Fraction(3785411784, 1000000000), "gallon", "gallons", "gal")
_add("byte", 1, "byte", "bytes")
_add("byte", 1000, "kb", "kilobyte", "kilobytes")
_add("byte", 10**6, "mb", "megabyte", "megabytes")
_add("byte", 10**9, "gb", "gigabyte", "gigabytes")
_add("byte", 10**12, "tb", "terabyte", "terabytes")
_add("%", 1, "%", "percent", "per cent", "pct", "prozent", "pourcent", "pour cent", "por ciento", "per cento",
     "procent", "por cento", "porcento")
_add("usd", 1, "$", "usd", "dollar", "dollars", "bucks")
_add("eur", 1, "€", "eur", "euro", "euros", "eure")
_add("gbp", 1, "£", "gbp", "quid")
_add("°c", 1, "°c", "celsius", "degrees celsius", "c°")
_add("°f", 1, "°f", "fahrenheit", "degrees fahrenheit")

_SMALL = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
          "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
          "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "dozen": 12}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "grand": 1000, "million": 10**6, "billion": 10**9, "k": 1000}
# Scale words after digits ("30 mil €", "5 Mio", "10 tys. zł"), in the languages the cache serves.
_DIGIT_SCALES = {**_SCALES, "bn": 10**9, "tausend": 1000, "mil": 1000, "mille": 1000, "mila": 1000,
                 "duizend": 1000, "tys": 1000, "mln": 10**6, "mio": 10**6}
# "a"/"an" before a unit or a scale is one ("an hour", "a thousand"); "half" is a half ("half an hour").
_HALF = Fraction(1, 2)
_ARTICLES: dict[str, Fraction] = {"a": Fraction(1), "an": Fraction(1), "half": _HALF, "half a": _HALF, "half an": _HALF}

_DIGIT_SCALE_PATTERN = "|".join(sorted(_DIGIT_SCALES, key=len, reverse=True))
_UNIT_NAMES = sorted(_UNITS, key=len, reverse=True)
_UNIT_PATTERN = "|".join(re.escape(u) for u in _UNIT_NAMES)
_WORD_NUMBER = "|".join(sorted([*_SMALL, *_TENS, *_SCALES], key=len, reverse=True))
_TOKEN = re.compile(
    rf"(?P<currency>[$€£])?\s?(?P<digits>(?<![\w.])[-+]?\d+(?:[.,]\d{{3}})*(?:[  ]\d{{3}}(?!\d))*(?:[.,]\d+)?)"
    rf"(?:\s?(?P<scale>{_DIGIT_SCALE_PATTERN})\b)?"
    rf"|(?P<words>\b(?:(?:{_WORD_NUMBER})[\s-]?)+\b)"
    rf"|(?P<article>\b(?:half an?|half|an|a)\b)(?=\s+(?:{_UNIT_PATTERN}|hundred|thousand|million|dozen)\b)",
    re.IGNORECASE)
_AFTER_UNIT = re.compile(rf"[\s-]?(?P<unit>{_UNIT_PATTERN})(?![\w])", re.IGNORECASE)
# "one" alone is mostly not a number ("which one", "one of the best"): only before a unit or a scale word.
_LONE_ONE = {"one"}


# Number words of the other languages the cache serves, read only when the prompt's language is known
# (Italian "sei" is also "you are", "due" is an English word).
NUMBER_WORDS_BY_LANGUAGE: dict[str, dict[str, int]] = {
    code: {word: value for value, word in enumerate(words.split(), start=1) if word != "-"}
    for code, words in {
        "de": "eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf",
        "fr": "- deux trois quatre cinq six sept huit neuf dix onze douze",
        "es": "- dos tres cuatro cinco seis siete ocho nueve diez once doce",
        "it": "- due tre quattro cinque sei sette otto nove dieci undici dodici",
        "nl": "- twee drie vier vijf zes zeven acht negen tien elf twaalf",  # "een" is also "a"
        "pl": "- dwa trzy cztery pięć sześć siedem osiem dziewięć dziesięć jedenaście dwanaście",
        "pt": "- dois três quatro cinco seis sete oito nove dez onze doze",
    }.items()}


def quantities(text: str, language: str | None = None) -> frozenset[str]:
    """Every quantity of `text`, canonical ("7200 s", "5000 m", "15 %", "3"); with the prompt's `language`,
    that language's number words too."""
    found: set[str] = set()
    words = NUMBER_WORDS_BY_LANGUAGE.get(language or "")
    if words:  # "dix kilomètres" is read as "10 kilomètres"
        text = re.sub(r"[^\W\d_]+", lambda m: str(words.get(m.group().lower(), m.group())), text)
    for match in _TOKEN.finditer(text):
        value = _value(match)
        if value is None:
            continue
        unit_match = _AFTER_UNIT.match(text, match.end())
        currency = match.group("currency")
        unit = currency or (unit_match.group("unit") if unit_match else None)
        if unit is None and match.group("words") and match.group("words").strip().lower() in _LONE_ONE:
            continue
        if unit is None and match.group("article"):
            continue
        found.add(_canonical(value, unit))
    return frozenset(found)


def _value(match: re.Match[str]) -> Fraction | None:
    if match.group("digits"):
        value = _digits(match.group("digits"))
        scale = (match.group("scale") or "").lower()
        return None if value is None else value * _DIGIT_SCALES.get(scale, 1)
    if match.group("words"):
        return _words(match.group("words"))
    return _ARTICLES[match.group("article").lower()]


def _digits(raw: str) -> Fraction | None:
    raw = re.sub(r"[  ]", "", raw.lstrip("+"))  # 5 000: a space between thousands
    if re.fullmatch(r"-?\d{1,3}([.,])\d{3}(?:\1\d{3})*", raw) and not re.fullmatch(r"-?0[.,]\d+", raw):
        raw = re.sub(r"[.,]", "", raw)  # 1,000 / 1.000: thousands separators
    try:
        return Fraction(raw.replace(",", "."))
    except ValueError:
        return None


def _words(raw: str) -> Fraction | None:
    total, current = 0, 0
    for word in re.split(r"[\s-]+", raw.strip().lower()):
        if word in _SMALL:
            current += _SMALL[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word in _SCALES:
            current = max(current, 1) * _SCALES[word]
            if _SCALES[word] >= 1000:
                total, current = total + current, 0
    return Fraction(total + current)


def _canonical(value: Fraction, unit: str | None) -> str:
    if unit is None:
        return _show(value)
    dimension, factor = _UNITS[unit.lower()]
    return f"{_show(value * factor)} {dimension}"


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def same_quantities(first: frozenset[str], second: frozenset[str]) -> bool:
    """Whether two prompts name the same quantities: each quantity of one matches one of the other, where a bare
    number matches a quantity of the same value in any unit ("a 10k run" / "a 10 km run", "50k" / "$50,000")."""
    return _all_matched(first, second) and _all_matched(second, first)


def _all_matched(first: frozenset[str], second: frozenset[str]) -> bool:
    values = {q.split(" ", 1)[0] for q in second}
    bare = {q for q in second if " " not in q}
    return all(q in second or (" " not in q and q in values) or q.split(" ", 1)[0] in bare for q in first)
