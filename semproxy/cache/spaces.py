"""Vector spaces: which model embeds a prompt, and which stored prompts it may be compared with.

A prompt's *space* is its embedder's name and its language, e.g. "minilm/en" or "e5/de". It is stored with
every entry, and the semantic search only looks inside the asked prompt's space: a French question is never
matched with a German one (the answer would come back in the wrong language), and two vectors made by
different models are never compared. A language without a model gets no space: exact hits only.

The default routes English to the fast int8 MiniLM and every other language semproxy was calibrated on to
multilingual-e5-small, so English keeps its speed and other languages get a model that reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping

from semproxy.cache.embedder import Embedder

ANY_LANGUAGE = "*"
ALL_IN_ONE = "all"  # the language part of the space of a model that takes every prompt unseparated


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a prompt's vector lives: the space stored with the entry, the model that makes it, the language."""

    space: str
    model: str
    language: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Routes:
    """Language -> embedder name. `languages` limits the semantic tier (ANY_LANGUAGE: every language)."""

    english: str | None  # the model for English prompts
    other: str | None  # the model for every other language
    languages: Collection[str]

    def model_for(self, language: str) -> str | None:
        if ANY_LANGUAGE not in self.languages and language not in self.languages:
            return None
        return self.english if language == "en" else self.other

    def models(self) -> set[str]:
        return {m for m in (self.english, self.other) if m is not None}


class Spaces:
    """The loaded embedders and the rule that places a prompt in a space."""

    def __init__(self, embedders: Mapping[str, Embedder], *, routes: Routes,
                 detect: Callable[[str], str] | None) -> None:
        dimensions = {e.dimension for e in embedders.values()}
        if len(dimensions) > 1:  # one vector column per store
            raise ValueError(f"the embedders make vectors of different sizes: {sorted(dimensions)}")
        self.embedders = dict(embedders)
        self.routes, self._detect = routes, detect
        self.dimension = dimensions.pop() if dimensions else 0

    @classmethod
    def single(cls, embedder: Embedder) -> Spaces:
        """One model for every prompt in one space, whatever its language (tests, custom embedders)."""
        routes = Routes(english=embedder.name, other=embedder.name, languages={ANY_LANGUAGE})
        return cls({embedder.name: embedder}, routes=routes, detect=None)

    def place(self, text: str) -> Placement | None:
        """The prompt's space, or None when its language has no loaded model (exact hits only)."""
        language = ALL_IN_ONE if self._detect is None else self._detect(text)
        model = self.routes.model_for(language)
        if model is None or model not in self.embedders:
            return None
        return Placement(space=f"{model}/{language}", model=model, language=language)

    def is_current(self, space: str) -> bool:
        """Whether a stored entry's space is one `place` still puts prompts in (else it is re-embedded)."""
        model, _, language = space.partition("/")
        if (language == ALL_IN_ONE) != (self._detect is None):
            return False
        return model in self.embedders and self.routes.model_for(language) == model
