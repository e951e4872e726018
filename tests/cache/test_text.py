"""Prompt facts: the things an embedding glosses over, read reliably enough to act on."""

import pytest

from semproxy.cache.quantities import same_quantities
from semproxy.cache.text import analyze, detect_language


@pytest.mark.parametrize(("text", "numbers"), [
    ("Convert 5 km to miles", {"5000 m"}),
    ("What is 1,000 plus 2.50?", {"1000", "2.5"}),
    ("Give me twenty ideas", {"20"}),
    ("Why do people check Google first?", set()),  # "first" is not a number here
    ("Which one is better?", set()),  # nor is a lone "one"
    ("Is a 10% tip enough?", {"10 %"}),
])
def test_numbers(text: str, numbers: set[str]) -> None:
    assert analyze(text).numbers == numbers


@pytest.mark.parametrize(("first", "second"), [
    ("Plan a workout of 2 hours", "Plan a workout of 120 minutes"),
    ("What can I do in Paris in a week?", "What can I do in Paris in 7 days?"),
    ("Give me three ideas", "Give me 3 ideas"),
    ("Is 15% a good tip?", "Is 15 percent a good tip?"),
    ("How long to run 5 km?", "How long to run 5 kilometers?"),
    ("Save $10,000 on a 50k salary", "Save 10 grand on a $50,000 salary"),
    ("What should a 6-month-old baby eat?", "What should a six-month-old baby eat?"),
])
def test_the_same_quantity_written_another_way_is_the_same(first: str, second: str) -> None:
    assert same_quantities(analyze(first).numbers, analyze(second).numbers)


@pytest.mark.parametrize(("first", "second"), [
    ("How long to run 5 km?", "How long to run 5 miles?"),
    ("Give me three ideas", "Give me 4 ideas"),
    ("Plan a workout of 2 hours", "Plan a workout of 2 minutes"),
])
def test_other_quantities_differ(first: str, second: str) -> None:
    assert not same_quantities(analyze(first).numbers, analyze(second).numbers)


def test_number_words_of_a_known_language_count_with_their_unit() -> None:
    assert analyze("Combien de temps pour faire dix kilomètres ?", "fr").numbers == {"10000 m"}
    assert analyze("Il sugo è in frigo da due giorni", "it").numbers == analyze("Il sugo è in frigo da 48 ore",
                                                                                   "it").numbers
    assert analyze("Combien font 5 000 euros ?", "fr").numbers == {"5000 eur"}


def test_contractions_possessives_and_spellings_are_seen_through() -> None:
    assert analyze("What's France's favourite colour?").words == ("what", "is", "france", "favorite", "color")
    assert analyze("I don't know, we can't say").words == ("i", "do", "not", "know", "we", "can", "not", "say")
    assert analyze("Is it a non-profit?").words == analyze("Is it a nonprofit?").words


@pytest.mark.parametrize(("text", "shape"), [
    ("Explain TCP in one sentence", {"size:short"}),
    ("Explain TCP in detail, as a table", {"size:long", "format:table"}),
    ("Explain TCP like I'm five", {"audience:simple"}),
    ("Describe the French Revolution for a 5-year-old", {"audience:child"}),
    ("Write a 500-word essay on TCP", {"size:long", "format:essay"}),
    ("Give me the data as JSON", {"format:json"}),
    ("How long does TCP take to connect?", set()),  # "how long" asks a duration, not a long answer
    ("Quick question: what is TCP?", set()),
])
def test_the_shape_of_the_asked_answer(text: str, shape: set[str]) -> None:
    assert analyze(text).shape == shape


def test_negations_count_but_either_or_phrases_do_not() -> None:
    assert analyze("Why doesn't my code compile?").negations == 1
    assert analyze("Is it safe to eat raw eggs without cooking?").negations == 1
    assert analyze("Pourquoi il ne pleut pas ?").negations == 2
    assert analyze("Do women like chocolate? Why or why not?").negations == 0
    assert analyze("If it's not too much trouble, what is a mortgage?").negations == 0  # politeness
    assert analyze("Can I earn money with or without investment?").negations == 0


def test_entities_are_names_not_sentence_starts() -> None:
    facts = analyze("What is the capital of France? Tell me about iPhone sales.")
    assert {"france", "iphone"} <= facts.entities
    assert "what" not in facts.entities and "tell" not in facts.entities


def test_named_languages_need_to_be_used_as_languages() -> None:
    assert analyze("How do I reverse a list in Python?").named_languages == {"python"}
    assert analyze("Write a C++ function that sorts").named_languages == {"c++"}
    assert analyze("Explain closures in C# please").named_languages == {"c#"}
    assert analyze("Answer in French: what is a cat?").named_languages == {"french"}
    assert analyze("How can I excel at math?").named_languages == set()  # the verb, not the spreadsheet
    assert analyze("What do French people eat?").named_languages == set()  # a nationality


@pytest.mark.parametrize(("text", "language"), [
    ("What is the best way to learn a new language?", "en"),
    ("Quelle est la meilleure façon d'apprendre une langue ?", "fr"),
    ("Wie kann ich am besten eine neue Sprache lernen?", "de"),
    ("¿Cuál es la mejor manera de aprender un idioma?", "es"),
    ("如何学习一门新语言", "zh"),
    ("Как лучше всего выучить новый язык?", "ru"),
    ("A man is riding a horse.", None),  # too few telling words: no guess rather than a wrong one
])
def test_language_detection(text: str, language: str | None) -> None:
    assert detect_language(text) == language


def test_a_known_language_uses_its_own_negation_words() -> None:
    # Portuguese "no" is "in the", not a negation; without the language it would count as one.
    assert analyze("Onde fica o banco no centro?", "pt").negations == 0
    assert analyze("Onde fica o banco no centro?").negations == 1
    assert analyze("Não gosto do banco no centro", "pt").negations == 1
    # Negative concord: one negated clause, several words ("não ... nenhum", "ne ... pas"): negated or not.
    assert analyze("Não há nenhuma regra sobre isso", "pt").negations == 1
    assert analyze("Il n'est pas là", "fr").negations == 1
    assert analyze("Nie lubię tego", "pl").negations == 1 and analyze("Lubię to", "pl").negations == 0


def test_german_nouns_are_not_names_but_acronyms_are() -> None:
    facts = analyze("Wie backe ich ein Brot mit dem Ofen von BMW und iPhone?", "de")
    assert facts.entities == {"bmw", "iphone"}
    assert {"brot", "ofen"} <= analyze("Wie backe ich ein Brot mit dem Ofen?").entities  # unknown language
    assert facts.language == "de"
