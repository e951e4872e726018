"""Model prices in US dollars per million tokens, to estimate what the cache and compression saved.

The defaults are list prices of common OpenAI, Mistral and DeepSeek models (standard tier, no batch or
cached-input discount) as published in 2025; override or extend them with the `prices` setting. A model is
priced by the longest table entry its name starts with, so dated variants ("gpt-4o-2024-08-06") and
provider prefixes ("openai/gpt-4o") find their family. Unknown models are priced at zero: the report says
how many tokens it could not price.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int = 0) -> float:
        """What these tokens cost, in USD."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


DEFAULT_PRICES: Mapping[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "chatgpt-4o": Price(5.00, 15.00),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-4": Price(30.00, 60.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o1": Price(15.00, 60.00),
    "o1-mini": Price(1.10, 4.40),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
    # Mistral
    "mistral-large": Price(2.00, 6.00),
    "mistral-medium": Price(0.40, 2.00),
    "mistral-small": Price(0.10, 0.30),
    "ministral-8b": Price(0.10, 0.10),
    "ministral-3b": Price(0.04, 0.04),
    "open-mistral-nemo": Price(0.15, 0.15),
    "codestral": Price(0.30, 0.90),
    "pixtral-large": Price(2.00, 6.00),
    "mistral-embed": Price(0.10, 0.0),
    # DeepSeek
    "deepseek-chat": Price(0.27, 1.10),
    "deepseek-reasoner": Price(0.55, 2.19),
}


class PriceTable:
    """The default prices with the configured ones laid over them."""

    def __init__(self, overrides: Mapping[str, Sequence[float]] | None = None,
                 *, defaults: Mapping[str, Price] = DEFAULT_PRICES) -> None:
        table = {name.lower(): price for name, price in defaults.items()}
        for name, (input_price, output_price) in (overrides or {}).items():
            table[name.lower()] = Price(float(input_price), float(output_price))
        # Longest names first, so "gpt-4o-mini" wins over "gpt-4o" and "gpt-4".
        self._entries = sorted(table.items(), key=lambda item: len(item[0]), reverse=True)

    def get(self, model: str) -> Price | None:
        """The price of `model`, or None if no entry matches."""
        name = model.lower().strip()
        candidates = (name, name.rsplit("/", 1)[-1])
        for prefix, price in self._entries:
            if any(c.startswith(prefix) for c in candidates):
                return price
        return None
