"""Render 1,000 distinct AgentService specs through `build_children`; print time per spec and peak memory.

Usage: `python bench/render.py [--count N] [--seed S]`. Specs are drawn with a seeded
`random.Random`, so runs are comparable. Time is measured without tracemalloc (which slows
allocation down); a second pass under tracemalloc measures the peak memory of rendering all specs
while keeping every result alive, i.e. the worst case of an operator holding a full desired state.
Target (issue 2): at most 5 ms per spec.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import tracemalloc
from typing import Any

from agent_operator.api import models
from agent_operator.manifests import builders

TARGET_MS = 5.0


def spec(rng: random.Random, index: int) -> dict[str, Any]:
    """One valid AgentService manifest; `index` makes every name distinct."""
    providers = [
        {
            "name": f"p{i}",
            "kind": rng.choice(["anthropic", "openai-compatible"]),
            "model": rng.choice(["claude-sonnet-4-5", "claude-haiku-4-5", "llama-3"]),
            "baseURL": f"http://llm-{i}.models.svc:8000/v1",
            "weight": rng.randint(1, 100),
            "apiKeySecretRef": {"name": "llm-keys", "key": f"key-{i}"},
        }
        for i in range(rng.randint(1, 4))
    ]
    engine = rng.choice(["hpa", "keda"])
    low = rng.randint(1, 5)
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": f"svc-{index:04d}", "namespace": rng.choice(["default", "agents", "team-a"])},
        "spec": {
            "image": rng.choice([None, f"registry.local/agent:v{rng.randint(1, 9)}.{rng.randint(0, 9)}"]),
            "model": {"providers": providers, "strategy": rng.choice(["weighted", "round_robin", "failover"])},
            "api": {"replicas": rng.randint(1, 5)},
            "worker": {"replicas": rng.randint(1, 10), "concurrency": rng.randint(1, 64)},
            "autoscaling": {
                "enabled": rng.random() < 0.8,
                "engine": engine,
                "minReplicas": low,
                "maxReplicas": low + rng.randint(0, 40),
                "targetQueueDepthPerReplica": rng.randint(5, 200),
            },
            "limits": {"maxStepsPerTask": rng.randint(1, 50)},
            "budget": {"dailyUSD": rng.choice([None, 50.0, 500.0])},
            "redis": {"url": f"redis://redis-{rng.randint(0, 3)}.data.svc:6379/{rng.randint(0, 15)}"},
            "alerts": {"enabled": rng.random() < 0.9, "errorRate": round(rng.random(), 3)},
            "env": [{"name": f"VAR_{i}", "value": str(rng.random())} for i in range(rng.randint(0, 5))],
            "podAnnotations": {"example.com/rev": str(rng.randint(0, 10**6))},
            "networkPolicy": {"enabled": rng.random() < 0.5, "allowFromNamespaces": ["web"]},
            "podDisruptionBudget": {"enabled": rng.random() < 0.7},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    manifests = [spec(rng, i) for i in range(args.count)]
    for manifest in manifests:
        if manifest["spec"]["image"] is None:
            del manifest["spec"]["image"]

    start = time.perf_counter()
    services = [models.AgentService.model_validate(m) for m in manifests]
    parse_s = time.perf_counter() - start

    builders.build_children(services[0])  # warm imports and caches outside the measurement
    per_spec: list[float] = []
    children = 0
    for svc in services:
        t0 = time.perf_counter()
        rendered = builders.build_children(svc)
        per_spec.append(time.perf_counter() - t0)
        children += len(rendered)
    render_s = sum(per_spec)

    tracemalloc.start()
    kept = [builders.build_children(svc) for svc in services]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    single_peak = 0
    tracemalloc.start()
    builders.build_children(services[-1])
    _, single_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept

    ms = [s * 1000 for s in per_spec]
    mean_ms = render_s * 1000 / len(services)
    p95_ms = statistics.quantiles(ms, n=20)[-1]
    print(f"specs rendered          {len(services)} ({children} manifests, {children / len(services):.1f} per spec)")
    print(f"parse (pydantic)        {parse_s * 1000 / len(services):.3f} ms per spec")
    print(f"build_children          mean {mean_ms:.3f} ms, median {statistics.median(ms):.3f} ms, p95 {p95_ms:.3f} ms")
    print(f"parse + build           {(parse_s + render_s) * 1000 / len(services):.3f} ms per spec")
    print(f"peak memory (all kept)  {peak / 2**20:.1f} MiB for {len(services)} rendered specs")
    print(f"peak memory (one spec)  {single_peak / 2**10:.0f} KiB")
    verdict = "OK" if mean_ms <= TARGET_MS else "OVER TARGET"
    print(f"target                  <= {TARGET_MS} ms per spec: {verdict}")
    return 0 if mean_ms <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
