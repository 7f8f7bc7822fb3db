"""`agentctl demo`'s cluster part: the real operator against the embedded dev cluster.

Covers: the example is applied, every child is listed with its owner, the service reaches Ready,
the spec edit writes exactly the HPAs and the PrometheusRule, steady state makes zero writes,
and the deletion leaves nothing behind (the demo raises if any step does not happen).
"""

from __future__ import annotations

import io

from agentops_dev import demo


async def test_cluster_demo_runs_end_to_end() -> None:
    out = io.StringIO()
    await demo.run_cluster_demo(out)
    text = out.getvalue()
    name = demo.load_example()["metadata"]["name"]
    assert f"Deployment                {name}-worker" in text
    assert f"AgentService/{name}" in text
    assert "Ready           True     AllReplicasReady" in text
    written = next(line for line in text.splitlines() if line.startswith("children written by the operator:"))
    assert written.endswith(
        f"horizontalpodautoscalers/{name}-api, horizontalpodautoscalers/{name}-worker, prometheusrules/{name}-alerts"
    )
    assert "steady state: 0 write requests" in text
    assert text.rstrip().endswith("operator stopped, dev cluster closed")
