"""Drift repaired by the child watches on the real control plane, the operator as the chart's ServiceAccount.

The operator runs with the chart's own arguments but an hour-long resync, so whatever is repaired
here was repaired through a watch. Covers: Ready from the Deployment controller's status (only a
watch brings it); a deleted Deployment and a deleted ConfigMap come back; `kubectl scale` and
`kubectl set env` on a Deployment the operator owns are reverted; an annotation someone adds makes
a reconcile (the operator's own counter) and no write (the audit log); the watches are selected on
the server by the managed-by label (their request URIs in the audit log), every watched kind is
watched and no Secret is ever listed or watched; and nothing the operator asked was refused (no 403
in its log). The namespaced
install's watches are checked for 403s by test_chart.py.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from agent_operator.kube import client, watch

from tests.cluster.harness import CHART, OPERATOR_NAMESPACE, OperatorProcess, helm, run_operator_as_chart, wait_for
from tests.cluster.test_lifecycle import agent_service, apply, children, condition, is_operator, operator_writes
from tests.support import controlplane as cp
from tests.support.kubelet import HarnessKubelet

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

RELEASE = "childwatch"
NO_RESYNC = "3600"  # longer than the module: a repair seen here came through a watch


@pytest.fixture(scope="module")
def watching_operator(
    controlplane: cp.ControlPlane,
    third_party_crds: None,
    kubelet: HarnessKubelet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("childwatch")
    helm(controlplane, "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
         "--set", "logFormat=json")  # fmt: skip
    operator = run_operator_as_chart(
        controlplane, workdir, release=RELEASE, namespace=OPERATOR_NAMESPACE, overrides={"--resync-interval": NO_RESYNC}
    )
    try:
        yield operator
    finally:
        operator.stop()
        helm(controlplane, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", check=False)
    assert not operator.forbidden_lines(), "the operator was refused:\n" + "\n".join(operator.forbidden_lines()[:10])


def reconciles(operator: OperatorProcess) -> float:
    """The operator's own `reconciles_total`, from its metrics port."""
    port = next(a.split("=", 1)[1] for a in operator.args if a.startswith("--metrics-port="))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agentservice_operator_reconciles_total{")
    )


def selected(uri: str) -> bool:
    """Whether a request asked the API server for the operator's children only (the managed-by label)."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("labelSelector") == [watch.SELECTOR]


def account(plane: cp.ControlPlane) -> str:
    """The ServiceAccount the release's operator runs as."""
    deployments = plane.get("deployments", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")
    return str(deployments["items"][0]["spec"]["template"]["spec"]["serviceAccountName"])


def uid(plane: cp.ControlPlane, namespace: str, key: str) -> str | None:
    found = children(plane, namespace, "cw").get(key)
    return None if found is None else str(found["metadata"]["uid"])


def container(plane: cp.ControlPlane, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = children(plane, namespace, "cw")["Deployment/cw-api"]["spec"]
    return dict(spec["template"]["spec"]["containers"][0]) | {"replicas": spec["replicas"]}


def test_drift_is_repaired_through_the_watches(
    controlplane: cp.ControlPlane, watching_operator: OperatorProcess
) -> None:
    plane, namespace = controlplane, "childwatch"
    plane.kubectl("create", "namespace", namespace)
    apply(plane, agent_service("cw", namespace))
    # Ready needs the Deployment controller's status: with an hour-long resync only a watch delivers it.
    plane.kubectl("wait", "--for=condition=Ready", "agsvc/cw", "-n", namespace, "--timeout=90s", timeout=120)
    since = condition(plane, namespace, "cw", "Ready")["lastTransitionTime"]  # RFC 3339 UTC: compares as text
    wait_for(
        lambda: [
            e
            for e in plane.get("events", "-n", namespace, "--field-selector", "involvedObject.name=cw,reason=Ready")[
                "items"
            ]
            if (e.get("firstTimestamp") or "") >= since
        ],
        what="the Event of the latest flip to Ready (posted right after the status)",
    )
    before = children(plane, namespace, "cw")
    original = container(plane, namespace)

    # A change that needs no repair: a reconcile reads it, and writes nothing.
    count = reconciles(watching_operator)
    mark = plane.audit_mark()
    plane.kubectl("annotate", "deployment/cw-worker", "example.com/owner-team=search", "-n", namespace)

    def read_again() -> bool:
        return any(
            is_operator(e) and e.get("verb") == "get" and e.get("objectRef", {}).get("name") == "cw-worker"
            for e in plane.audit_since(mark)
        )

    wait_for(read_again, timeout=60, what="the operator reading the annotated Deployment")
    wait_for(lambda: reconciles(watching_operator) > count, timeout=60, what="that reconcile finished")
    assert operator_writes(plane, mark, namespace) == []

    # Deleted children come back (new uids).
    plane.kubectl("delete", "deployment", "cw-worker", "-n", namespace)
    plane.kubectl("delete", "configmap", "cw-config", "-n", namespace)
    for key in ("Deployment/cw-worker", "ConfigMap/cw-config"):
        wait_for(
            lambda key=key: uid(plane, namespace, key) not in (None, before[key]["metadata"]["uid"]),
            timeout=60,
            what=f"{key} restored",
        )
    assert children(plane, namespace, "cw")["ConfigMap/cw-config"]["data"] == before["ConfigMap/cw-config"]["data"]

    # Hand edits of fields the operator owns are reverted.
    plane.kubectl("scale", "deployment/cw-api", "--replicas=3", "-n", namespace)
    plane.kubectl("set", "env", "deployment/cw-api", "KEEP_ME=changed", "-n", namespace)

    def reverted() -> bool:
        now = container(plane, namespace)
        env = {e["name"]: e.get("value") for e in now.get("env", [])}
        return now["replicas"] == original["replicas"] and env.get("KEEP_ME") == "1"

    wait_for(reverted, timeout=60, what="scale and env reverted")

    # The watches: selected by the API server, never of Secrets.
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account(plane)}"
    watches = [
        e
        for e in plane.audit_events()
        if e.get("user", {}).get("username") == user and e.get("verb") in ("list", "watch")
    ]
    by_resource = {e["objectRef"]["resource"] for e in watches if e["verb"] == "watch" and selected(e["requestURI"])}
    assert by_resource == {client.PLURALS[k.api_version, k.kind] for k in watch.WATCHED}, by_resource
    assert not [e for e in watches if e["objectRef"].get("resource") == "secrets"]
    # Every kind is served here (prometheus-operator's and KEDA's CRDs installed): nothing skipped or failing.
    assert "child_watch_not_served" not in watching_operator.logs()
    assert "child_watch_failed" not in watching_operator.logs()
