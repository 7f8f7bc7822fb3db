"""Analysis fairness between namespaces: a victim's analysis delay and create -> children time, with
and without hostile AgentServices whose every query takes 4.9 s.

The scenario is the fairness test's (`tests/support/fairness.py`): the real operator on the dev
cluster, its queries sent with their namespace through a real prom-label-proxy (built from its Go
module) to a real Prometheus, a hop holding every query of the `hostile` namespace 4.9 s. Hostile
AgentServices: canary rollouts under way, analysed every second, 20 checks each. The victim: one
rollout analysed every `--interval` seconds, and `--creates` new AgentServices created one after
another in its namespace. Each run is done once with `--hostile` hostile services and once with none.

Reported per run: the victim's analyses seen in `--observe` seconds, how late each came after its
interval (p50, max), create -> both Deployments (p50, max), and how many hostile queries were held.

Run: `python bench/analysis_fairness.py [--hostile 16] [--interval 2] [--observe 60] [--creates 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

# the scenario lives with the tests (tests/support/fairness.py), run from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import fairness


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hostile", type=int, default=16)
    parser.add_argument("--check-seconds", type=float, default=4.9)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--observe", type=float, default=60.0)
    parser.add_argument("--creates", type=int, default=10)
    args = parser.parse_args()
    results = []
    for hostile in (args.hostile, 0):
        with tempfile.TemporaryDirectory(prefix="fairness-") as directory:
            figures = await fairness.measure(
                Path(directory),
                hostile=hostile,
                check_seconds=args.check_seconds,
                victim_interval=args.interval,
                observe=args.observe,
                creates=args.creates,
            )
        summary = figures.summary()
        results.append(summary)
        print(json.dumps(summary), flush=True)
    with open("/proc/loadavg") as loadavg:
        print(json.dumps({"load average": loadavg.read().split()[:3]}))


if __name__ == "__main__":
    asyncio.run(main())
