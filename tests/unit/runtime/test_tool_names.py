"""Tool names and results as the model sees them. Pure.

Covers: `<server>__<tool>` is kept as is when the Messages API accepts it; a name with other
characters or too long is cleaned, cut to 64 and suffixed with a digest of the original, so it is
stable and two tools never share a name; a result longer than its cap is cut on a character
boundary with a note giving the full size.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from agent_runtime.mcptools import MAX_NAME, exposed_name
from agent_runtime.tools import cap

API_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def test_plain_names_are_kept() -> None:
    assert exposed_name("time", "get_current_time") == "time__get_current_time"


def test_other_characters_and_long_names_are_cleaned_with_a_digest() -> None:
    dotted = exposed_name("crm", "customers.lookup")
    assert dotted.startswith("crm__customers_lookup_") and API_NAME.match(dotted)
    assert dotted != exposed_name("crm", "customers_lookup")  # the clean twin keeps its own name
    long = exposed_name("a-very-long-server-name1", "x" * 200)
    assert len(long) == MAX_NAME and API_NAME.match(long)
    assert exposed_name("crm", "customers.lookup") == dotted  # stable


@given(st.lists(st.text(min_size=1, max_size=80), min_size=2, max_size=20, unique=True))
def test_distinct_tools_get_distinct_valid_names(tools: list[str]) -> None:
    names = [exposed_name("srv", tool) for tool in tools]
    assert len(set(names)) == len(names)
    assert all(API_NAME.match(name) for name in names)


def test_results_are_cut_on_a_character_boundary_with_a_note() -> None:
    assert cap("short", 100) == "short"
    assert cap("x" * 10, None) == "x" * 10
    cut = cap("é" * 10, 5)  # 20 bytes of UTF-8; 5 bytes end inside the third character
    assert cut == "éé\n[result truncated: 20 bytes, limit 5]"
