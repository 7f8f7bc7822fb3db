"""The calculator tool: every operation bounded before it runs, the evaluation off the event loop.

Covers (issue 27, point 9): a tower of powers, where each exponent alone is within the limit
(`((9**999)**999)**999`), is refused at the step that would pass the size bound; so are products
and sums past it; the answers within the bounds are exact; the tool runs in a worker thread,
not on the event loop's.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent_runtime import tools
from agent_runtime.tools import ToolError, builtin_registry, calculate


@pytest.mark.parametrize(
    "expression",
    [
        "((9**999)**999)**999",
        "(9**999)**2",
        "9**999 * 9**999",
        "(2**1000)**4 * (2**1000)**4",
        "+".join(["(2**1000)**4*2**94"] * 4),
        "-(7**999) ** 3",
    ],
)
def test_every_operation_is_bounded(expression: str) -> None:
    with pytest.raises(ToolError, match="too large"):
        calculate(expression)


@pytest.mark.parametrize(
    ("expression", "refusal"),
    [
        ("2 ** 1001", "exponent 1001 too large"),
        ("1e308 ** 2", "not a finite number"),
        ("(2**1000)**4 / 3", "not a finite number"),
        ("(-8) ** 0.5", "not a real number"),
        ("1/0", "division by zero"),
        ("(" * 300 + "1" + ")" * 300, "longer than 500 characters"),
        ("(" * 240 + "1" + ")" * 240, "not an arithmetic expression|nests too deeply"),
    ],
)
def test_refusals_name_the_reason(expression: str, refusal: str) -> None:
    with pytest.raises(ToolError, match=refusal):
        calculate(expression)


def test_answers_within_the_bounds_are_exact() -> None:
    assert calculate("9**999") == 9**999
    assert calculate("(12 + 7) * 3 - 2 ** 10 // 3") == (12 + 7) * 3 - 2**10 // 3
    assert calculate("(2**1000)**4 - 1") == 2**4000 - 1
    assert calculate("+".join(["(2**1000)**4*2**94"] * 2)) == 2**4095


async def test_the_calculator_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = tools.calculate

    def recording(expression: str) -> int | float:
        threads.append(threading.get_ident())
        return real(expression)

    monkeypatch.setattr(tools, "calculate", recording)
    assert await builtin_registry().call("calculator", {"expression": "6*7"}) == "42"
    assert threads and threads[0] != threading.get_ident()
    assert asyncio.get_running_loop().is_running()
