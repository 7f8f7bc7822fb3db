"""One namespace's slow analyses never hold another namespace's back (docs/security.md, "Fair analyses").

The scenario of `tests/support/fairness.py`: the real operator on the dev cluster, its queries sent
through a real prom-label-proxy to a real Prometheus; 16 hostile AgentServices in one namespace,
analysed every second with 20 checks whose every query takes 4.9 s (a hop holds them), beside a
victim namespace's rollout analysed every 3 s and new AgentServices created there.

Before the fair slots, the analysis loop waited for every due analysis of a pass before it looked
again, and the hostile analyses (20 queries of 4.9 s each, one after the other) held it for about
100 s: the victim's analyses came that late. Now: the victim's analyses come within one interval of
when they are due, the hostile namespace holds at most its share of the slots, every hostile
analysis stops at the analysis time limit, and a create still gets its children.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_operator.canary import slots

from tests.support import fairness, labelproxy

pytestmark = pytest.mark.timeout(600)

INTERVAL = 3.0


@pytest.fixture(scope="module")
def proxy_built() -> None:
    labelproxy.require()


async def test_hostile_slow_analyses_never_delay_the_victim_by_an_interval(proxy_built: None, tmp_path: Path) -> None:
    figures = await fairness.measure(
        tmp_path, hostile=16, check_seconds=4.9, victim_interval=INTERVAL, observe=30.0, creates=3
    )
    summary = figures.summary()
    # the hostile analyses ran, and were slow: their queries were held
    assert figures.hostile_queries_held >= slots.PER_NAMESPACE * 4, summary
    # the victim was analysed all along, each analysis within one interval of its due time
    assert len(figures.analysis_times) >= 5, summary
    assert max(figures.delays) < INTERVAL, summary
    # creates in the victim's namespace got their children
    assert len(figures.creates) == 3, summary
