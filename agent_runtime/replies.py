"""One model turn as plain data, whichever provider dialect produced it. Pure.

`providers.py` and `openai_compat.py` build it; the agent loop reads it; `cache.py` stores its
`to_dict()` form and `from_dict` brings it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["ModelReply"]


@dataclass(frozen=True)
class ModelReply:
    """One model turn, as plain data."""

    provider: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    input_tokens: int
    output_tokens: int
    cached: bool = False  # served from the response cache: no provider call, nothing billed
    # prompt caching (`spec.model.promptCaching`): input tokens written to / read from the provider's
    # cache, billed at their own rates and not part of `input_tokens` (as the Messages API counts them)
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def text(self) -> str:
        return "".join(block["text"] for block in self.content if block["type"] == "text")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelReply:
        return cls(**data)

    def from_cache(self) -> ModelReply:
        return replace(self, cached=True)
