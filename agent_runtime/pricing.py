"""Model prices and the cost of a call. Pure.

Prices are USD per million tokens. Built-in defaults cover current Claude models (matched by the
longest prefix, so dated ids like `claude-sonnet-4-5-20250929` match); `RuntimeConfig.prices`
(rendered from `spec.budget` by the operator) overrides them by exact model id. An unknown model
is priced at `FALLBACK` rather than zero, so spend is never silently under-reported.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent_runtime.config import PriceConfig

__all__ = ["DEFAULT_PRICES", "FALLBACK", "PriceTable", "cache_read_price", "cache_write_price"]

# Published list prices (USD per million input / output tokens) of the Claude API. Models whose price
# varies or is not published here (e.g. Haiku 5.5, Mythos) fall back to FALLBACK: set them in the spec.
DEFAULT_PRICES: Mapping[str, PriceConfig] = {
    "claude-fable-5-1": PriceConfig(input_per_mtok=10.0, output_per_mtok=50.0),
    "claude-opus-5-5": PriceConfig(input_per_mtok=4.0, output_per_mtok=20.0),
    "claude-opus-5": PriceConfig(input_per_mtok=5.0, output_per_mtok=25.0),
    "claude-sonnet-5-5": PriceConfig(input_per_mtok=2.0, output_per_mtok=10.0),
    "claude-sonnet-5": PriceConfig(input_per_mtok=2.0, output_per_mtok=10.0),
    "claude-opus-4-6": PriceConfig(input_per_mtok=5.0, output_per_mtok=25.0),
    "claude-sonnet-4-6": PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0),
    "claude-opus-4-5": PriceConfig(input_per_mtok=5.0, output_per_mtok=25.0),
    "claude-sonnet-4-5": PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0),
    "claude-haiku-4-5": PriceConfig(input_per_mtok=1.0, output_per_mtok=5.0),
    "claude-opus-4-1": PriceConfig(input_per_mtok=15.0, output_per_mtok=75.0),
    "claude-opus-4": PriceConfig(input_per_mtok=15.0, output_per_mtok=75.0),
    "claude-sonnet-4": PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0),
    "claude-3-5-haiku": PriceConfig(input_per_mtok=0.8, output_per_mtok=4.0),
    "claude-3-haiku": PriceConfig(input_per_mtok=0.25, output_per_mtok=1.25),
}
FALLBACK = PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0)


class PriceTable:
    """Looks up a model's price: exact override, then the longest default prefix, then `FALLBACK`."""

    def __init__(self, overrides: Mapping[str, PriceConfig] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._prefixes = sorted(DEFAULT_PRICES, key=len, reverse=True)

    def price(self, model: str) -> PriceConfig:
        if model in self._overrides:
            return self._overrides[model]
        for prefix in self._prefixes:
            if model.startswith(prefix):
                return DEFAULT_PRICES[prefix]
        return FALLBACK

    def is_known(self, model: str) -> bool:
        """Whether the table prices `model` (a daily budget refuses models it would price at the fallback)."""
        return model in self._overrides or any(model.startswith(p) for p in self._prefixes)

    def cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_write_tokens: int = 0,
        cache_read_tokens: int = 0,
    ) -> float:
        """USD for one call (cache writes and reads at their own rates, `cache_write_price` / `cache_read_price`)."""
        price = self.price(model)
        return (
            input_tokens * price.input_per_mtok
            + output_tokens * price.output_per_mtok
            + cache_write_tokens * cache_write_price(price)
            + cache_read_tokens * cache_read_price(price)
        ) / 1_000_000


# The Messages API prices a 5-minute cache write at 1.25 times the input price and a cache read at
# 0.1 times it; a price in the spec (budget.prices) may set either.
CACHE_WRITE_MULTIPLIER = 1.25
CACHE_READ_MULTIPLIER = 0.1


def cache_write_price(price: PriceConfig) -> float:
    """USD per million input tokens written to the prompt cache. Pure."""
    if price.cache_write_per_mtok is not None:
        return price.cache_write_per_mtok
    return price.input_per_mtok * CACHE_WRITE_MULTIPLIER


def cache_read_price(price: PriceConfig) -> float:
    """USD per million input tokens read from the prompt cache. Pure."""
    if price.cache_read_per_mtok is not None:
        return price.cache_read_per_mtok
    return price.input_per_mtok * CACHE_READ_MULTIPLIER
