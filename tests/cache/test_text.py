"""Prompt facts: the things an embedding glosses over, read reliably enough to act on."""

import pytest

from semproxy.cache.text import analyze, detect_language


@pytest.mark.parametrize(("text", "numbers"), [
    ("Convert 5 km to miles", {"5"}),
    ("What is 1,000 plus 2.50?", {"1000", "2.5"}),
    ("Give me twenty ideas", {"20"}),
    ("Why do people check Google first?", set()),  # "first" is not a number here
    ("Is a 10% tip enough?", {"10"}),
])
def test_numbers(text: str, numbers: set[str]) -> None:
    assert analyze(text).numbers == numbers


def test_negations_count_but_either_or_phrases_do_not() -> None:
    assert analyze("Why doesn't my code compile?").negations == 1
    assert analyze("Is it safe to eat raw eggs without cooking?").negations == 1
    assert analyze("Pourquoi il ne pleut pas ?").negations == 2
    assert analyze("Do women like chocolate? Why or why not?").negations == 0
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
