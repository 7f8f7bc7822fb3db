"""Tenant walls on the real control plane (issue 27): the namespace is the wall.

- A forged ownerReference never makes the operator delete across namespaces: the attacker's
  NetworkPolicy, in its own namespace, carries the managed-by label and a controller
  ownerReference to the victim's AgentService uid, and the name of an unowned NetworkPolicy of the
  victim's namespace; the operator restarts (its prune inventory is established anew from the
  child watches) and reconciles the victim; the victim's object survives and the audit log holds no
  delete of it.
- The chart's ValidatingAdmissionPolicy refuses, at `kubectl apply`, an AgentService with an image
  outside `policy.allowedImages`, a ServiceAccount not in `policy.allowedServiceAccounts`, a token
  automount, or a pod annotation outside `policy.allowedPodAnnotations`, with the policy's message;
  an AgentService within the rules is admitted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import RELEASE, OperatorProcess, wait_for
from tests.cluster.test_lifecycle import agent_service, apply, operator_writes
from tests.support import controlplane as cp

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

VICTIM, ATTACKER = "tenant-victim", "tenant-attacker"
# A finalizer of the attacker's own keeps its object listed: the garbage collector treats an owner
# reference across namespaces as unresolvable and would otherwise delete it within seconds.
HOLD = "attacker.example/hold"


@pytest.fixture(scope="module")
def tenants(controlplane: cp.ControlPlane) -> Iterator[None]:
    for namespace in (VICTIM, ATTACKER):
        controlplane.kubectl("create", "namespace", namespace)
    try:
        yield
    finally:
        controlplane.kubectl(
            "patch", "networkpolicy", "precious", "-n", ATTACKER, "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}', check=False,
        )  # fmt: skip
        for namespace in (VICTIM, ATTACKER):
            controlplane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def network_policy(namespace: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "precious", "namespace": namespace, **metadata},
        "spec": {"podSelector": {"matchLabels": {"app": "database"}}, "policyTypes": ["Ingress"]},
    }


def observed(plane: cp.ControlPlane, namespace: str, name: str) -> tuple[int, int | None]:
    body = plane.get("agentservice", name, "-n", namespace)
    return body["metadata"]["generation"], (body.get("status") or {}).get("observedGeneration")


def test_a_forged_owner_reference_never_deletes_across_namespaces(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, tenants: None
) -> None:
    # The victim: an AgentService and, beside it, a NetworkPolicy of its own that nobody owns.
    apply(controlplane, agent_service("demo", VICTIM))
    wait_for(lambda: observed(controlplane, VICTIM, "demo")[1] is not None, what="the victim reconciled")
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(network_policy(VICTIM)))
    precious = controlplane.get("networkpolicy", "precious", "-n", VICTIM)
    victim_uid = controlplane.get("agentservice", "demo", "-n", VICTIM)["metadata"]["uid"]

    # The attack: in the attacker's namespace, the managed-by label and a forged controller reference.
    installed_operator.stop()
    forged = network_policy(
        ATTACKER,
        labels={"app.kubernetes.io/managed-by": "agentservice-operator", "app.kubernetes.io/instance": "demo"},
        ownerReferences=[
            {
                "apiVersion": "agentops.dev/v1alpha1",
                "kind": "AgentService",
                "name": "demo",
                "uid": victim_uid,
                "controller": True,
            }
        ],
        finalizers=[HOLD],
    )
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(forged))
    # A spec change while the operator is down: its reconcile after the restart is observable.
    apply(controlplane, agent_service("demo", VICTIM, worker={"replicas": 1}))
    generation = observed(controlplane, VICTIM, "demo")[0]
    mark = controlplane.audit_mark()
    installed_operator.start()

    wait_for(
        lambda: observed(controlplane, VICTIM, "demo")[1] == generation,
        timeout=120,
        what="the victim reconciled after the restart",
    )
    survivor = controlplane.get("networkpolicy", "precious", "-n", VICTIM)
    assert survivor["metadata"]["uid"] == precious["metadata"]["uid"]
    assert survivor["metadata"]["resourceVersion"] == precious["metadata"]["resourceVersion"]
    writes = operator_writes(controlplane, mark, VICTIM)
    assert not [w for w in writes if "networkpolicies" in w and "precious" in w], writes


POLICY = f"{RELEASE}-agentservice-operator-agentservices"


def refusal(plane: cp.ControlPlane, body: dict[str, Any], *, dry_run: bool = False) -> str:
    """`kubectl apply` of `body`: its error text, empty when admitted."""
    args = ["apply", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    result = plane.kubectl(*args, input=json.dumps(body), check=False)
    return result.stderr.strip() if result.returncode != 0 else ""


def test_the_admission_policy_refuses_at_kubectl_apply_with_its_message(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, tenants: None
) -> None:
    """The chart's ValidatingAdmissionPolicy, as installed: the real API server refuses each rule."""
    evil = agent_service("evil", VICTIM, image="evil.example/miner:1")
    # The API server enforces a new policy once its informers have it: wait for that, by asking.
    wait_for(lambda: refusal(controlplane, evil, dry_run=True), timeout=60, what="the policy enforced")
    prefix = f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request: "
    cases = {
        "image": (
            {"image": "agentops/agent-runtime-evil:1"},
            "spec.image is not allowed: policy.allowedImages allows images of"
            " agentops/agent-runtime, registry.example/, registry.example.com/",
        ),
        "account": (
            {"serviceAccountName": "admin"},
            "spec.serviceAccountName is not allowed: policy.allowedServiceAccounts allows none",
        ),
        "token": (
            {"automountServiceAccountToken": True},
            "spec.automountServiceAccountToken is not allowed: policy.allowTokenAutomount is false",
        ),
        "annotation": (
            {"podAnnotations": {"container.apparmor.security.beta.kubernetes.io/api": "unconfined"}},
            "spec.podAnnotations has a key that is not allowed: policy.allowedPodAnnotations allows the prefixes none",
        ),
    }
    for name, (fields, message) in cases.items():
        said = refusal(controlplane, agent_service(f"refused-{name}", VICTIM, **fields))
        assert prefix + message in said, (name, said)
        assert not controlplane.exists("agentservice", f"refused-{name}", "-n", VICTIM)
    # Within the rules: admitted, and an edit of the spec is checked as a creation is.
    allowed = agent_service("allowed", VICTIM, image="registry.example/agent-runtime:1.0")
    assert refusal(controlplane, allowed) == ""
    allowed["spec"]["image"] = "evil.example/miner:1"
    assert prefix in refusal(controlplane, allowed)
    live = controlplane.get("agentservice", "allowed", "-n", VICTIM)
    assert live["spec"]["image"] == "registry.example/agent-runtime:1.0"
