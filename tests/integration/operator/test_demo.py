"""`agentctl demo`: the operator on the embedded dev cluster (part 2) and the whole tour as `make demo` runs it.

Covers:
- part 2 in-process: the example is applied, every child is listed with its owner, the service
  reaches Ready, the spec edit writes exactly the HPAs and the PrometheusRule, steady state makes
  zero writes, and the deletion leaves nothing behind (the demo raises if any step does not happen);
- `agentctl demo` end to end, as a process: exit 0 and nothing on stderr; no log line in the
  narrative (kopf's "OS signals are ignored" warning is in the log file the demo names, not
  lost); part 4's faulty version is rolled back after failed analyses and the failing check is
  printed with its PromQL, its value (3 errors in 10 calls) and its threshold; the good version is
  promoted step by step, shown through the plugin's `get` view at 50 % and once promoted, and
  `history` lists both outcomes;
- part 4 without the prometheus binary: it says what to install and reports that it did not run.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from agentops_dev import canarydemo, demo

ROOT = Path(__file__).resolve().parents[3]
AGENTCTL = Path(sys.executable).parent / "agentctl"


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


def section(text: str, start: str, end: str) -> str:
    """The text from the line starting with `start` up to the next line starting with `end`."""
    begin = text.index(start)
    return text[begin : text.index(end, begin + len(start))]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_demo_runs_every_part_with_a_clean_narrative() -> None:
    result = subprocess.run([str(AGENTCTL), "demo"], cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stderr == ""
    text = result.stdout
    for part in range(1, 5):
        assert f"=== {part}. " in text
    # the narrative carries no log line; kopf's warning went to the named log file
    assert not re.search(r"WARNING|OS signals|kopf\.|\"level\"|Traceback", text), text
    log = Path(re.search(r"^logs: (\S+demo\.log) ", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert "WARNING kopf._core.reactor.running: OS signals are ignored" in log.read_text()

    # (a) the faulty version: failed analyses, the rollback, and the failing check in full
    faulty = section(text, "(a) model v2 is faulty", "(b) model v3")
    assert re.search(r"analysis at weight 25%: failure .*error-rate: canary error rate 0\.\d+ is above", faulty)
    assert "RolledBack: revision " in faulty and "2 of failureLimit 2 failed analyses" in faulty
    check = section(faulty, "failing check error-rate:", "failing check error-ratio:")
    query = re.search(r"query: +(.+)", check).group(1)  # type: ignore[union-attr]
    assert 'track="canary"' in query and 'status="failed"' in query and "agent_requests_total" in query
    value = float(re.search(r"value: +([\d.]+) \(", check).group(1))  # type: ignore[union-attr]
    assert 0.1 < value < 0.6, check  # the faulty model fails 3 calls in 10
    assert re.search(r"threshold: +<= 0\.05", check)
    assert "stable pods kept their template (model v1) all along" in faulty

    # (b) the good version: promoted step by step, shown through the plugin's own views
    good = text[text.index("(b) model v3 is good") :]
    assert re.search(r"analysis at weight 25%: success ", good)
    assert re.search(r"analysis at weight 50%: success ", good)
    at_50 = section(good, "$ kubectl agentservice get support-agent", "Events:")
    assert "Rollout:    Progressing   step 2/2   weight 50% (actual 50%)   steps 25 [50] 100" in at_50, good
    assert re.search(r"worker +canary +2 +2 +support-agent-worker-canary", at_50), at_50
    assert "Last analysis: success at weight 25%" in at_50, at_50
    promoted = section(good, "promoted: the stable pods restarted on model v3", "$ kubectl agentservice history")
    assert "Rollout:    Promoted" in promoted and "Canary:     -" in promoted
    assert re.search(r"worker +stable +4 +4 +support-agent-worker\n", promoted)
    assert "Last analysis: success at weight 50%" in promoted
    history = section(good, "$ kubectl agentservice history", "load: ")
    assert re.search(r"1 .* RolledBack +FailureLimitReached", history)
    assert re.search(r"2 .* Promoted +AnalysisPassed", history)
    shutil.rmtree(log.parent)  # the demo keeps its logs for the user; kept here only when a check failed


async def test_canary_part_without_prometheus_says_what_to_install(tmp_path: Path) -> None:
    out = io.StringIO()
    ran = await canarydemo.run_canary_demo(out, tmp_path, prometheus="prometheus-not-installed-here")
    assert not ran
    assert out.getvalue() == canarydemo.MISSING_PROMETHEUS
    assert "apt-get install prometheus" in out.getvalue() and "make demo" in out.getvalue()
    assert list(tmp_path.iterdir()) == []  # nothing was started
