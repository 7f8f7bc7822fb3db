"""docs/compatibility.md states the versions the tests pin.

Covers: the Kubernetes, etcd, prometheus-adapter and KEDA versions on the page are the ones the
Go wrapper modules pin, and the chart's `kubeVersion` is the one the page quotes.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "compatibility.md").read_text()


def pinned(gomod: str, module: str) -> str:
    text = (ROOT / "tests" / gomod / "go.mod").read_text()
    match = re.search(rf"^\s*{re.escape(module)} (v[0-9.]+)", text, re.MULTILINE)
    assert match is not None, module
    return match[1]


def test_versions_match_the_pins() -> None:
    assert f"**{pinned('controlplane', 'k8s.io/kubernetes')}**" in PAGE
    assert f"**{pinned('adapter', 'sigs.k8s.io/prometheus-adapter')}**" in PAGE
    assert f"**{pinned('keda', 'github.com/kedacore/keda/v2')}**" in PAGE
    operator = pinned("prometheus-operator", "github.com/prometheus-operator/prometheus-operator")
    assert f"**{operator}**" in PAGE
    etcd = re.search(r"etcd server (v[0-9]+\.[0-9]+\.[0-9]+)", (ROOT / "tests" / "controlplane" / "go.mod").read_text())
    assert etcd is not None and f"etcd {etcd[1]}" in PAGE


def test_chart_kube_version_is_quoted() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "agentservice-operator" / "Chart.yaml").read_text())
    assert f"`kubeVersion: {chart['kubeVersion']}`" in PAGE
