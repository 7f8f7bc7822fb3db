"""Two operator replicas on the real control plane: one active, one standby, a takeover on kill -9.

The chart is installed with `replicaCount=2`, cluster-wide (a ClusterKopfPeering) and namespaced
(a KopfPeering in the watched namespace), with the peering CRDs and the RBAC to use them; two
`agentctl operator` processes run with the chart's own arguments (`--peering`,
`--peering-lifetime=20`, the default start-time priority), each as the chart's ServiceAccount with
a token of its own: the audit log tells their requests apart by the token's id
(`authentication.kubernetes.io/credential-id`).

Covers: the replica started first is active and the later one stands by, registered in the peering
object and writing nothing (not a child, not a status, not an annotation); after `kill -9` of the
active one the standby takes over within 30 s (measured from the kill to its `operator_active`
line); a spec change and a new service made while no replica was active are reconciled by the new
active one (no reconcile lost); across the handover the services nobody changed get no write at
all, and the changed worker Deployment is patched exactly once (no double write); a third replica
started later stands by too (a newcomer never preempts), and a graceful stop (SIGTERM) of the
active one hands over at once, without waiting for the lifetime; nothing was refused (no 403).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import CHART, OPERATOR_NAMESPACE, OperatorProcess, helm, run_operator_as_chart, wait_for
from tests.cluster.test_lifecycle import RESYNC, agent_service, apply, children, is_operator, resync_passes
from tests.support import controlplane as cp
from tests.support.kubelet import HarnessKubelet

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

TAKEOVER_BOUND = 30.0  # the bound: kill -9 of the active replica to the standby writing
WRITES = ("create", "update", "patch", "delete", "deletecollection")
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def credential(kubeconfig: Path) -> str:
    """The audit log's id of the token in `kubeconfig` (`JTI=` and the JWT's `jti` claim)."""
    token = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"JTI={claims['jti']}"


@dataclasses.dataclass(frozen=True)
class Release:
    """The chart installed with two replicas, cluster-wide or for the one namespace of the test."""

    name: str
    namespace: str  # where the test's AgentServices live
    cluster_wide: bool

    @property
    def peering(self) -> str:
        return f"{self.name}-agentservice-operator"  # the chart's default: the release's full name


def writes(plane: cp.ControlPlane, mark: int, namespace: str) -> list[tuple[str, str]]:
    """The operators' writes in `namespace` since `mark`: (token id, `verb resource/sub/name`)."""
    found = []
    for event in plane.audit_since(mark):
        ref = event.get("objectRef", {})
        if not is_operator(event) or event.get("verb") not in WRITES or ref.get("namespace") != namespace:
            continue
        if ref.get("resource") == "kopfpeerings":
            continue  # every replica's keep-alive (a namespaced install's peering object lives here)
        ids = event.get("user", {}).get("extra", {}).get(CREDENTIAL_ID) or ["?"]
        found.append((ids[0], f"{event['verb']} {ref.get('resource')}/{ref.get('subresource', '')}/{ref.get('name')}"))
    return found


def peers(plane: cp.ControlPlane, release: Release) -> dict[str, Any]:
    """The replicas alive in the peering object, by kopf's identity."""
    where = ("clusterkopfpeering",) if release.cluster_wide else ("kopfpeering", "-n", release.namespace)
    status: dict[str, Any] = plane.get(*where, release.peering).get("status") or {}
    return status


def is_active(operator: OperatorProcess) -> bool:
    return '"operator_active"' in operator.logs()


def started(plane: cp.ControlPlane, release: Release, workdir: Path) -> OperatorProcess:
    """One replica: the chart's arguments, a 3 s resync (passes to wait on), a token of its own."""
    workdir.mkdir()
    return run_operator_as_chart(
        plane, workdir, release=release.name, namespace=OPERATOR_NAMESPACE, overrides={"--resync-interval": str(RESYNC)}
    )


def token_of(operator: OperatorProcess) -> str:
    return credential(operator.kubeconfig)


def steady(plane: cp.ControlPlane, namespace: str) -> int:
    """Wait for a resync pass after which the operators write nothing more here; the mark after it."""
    settle = plane.audit_mark()
    wait_for(lambda: resync_passes(plane, settle, namespace) >= 1, timeout=20 * RESYNC, what="a resync pass")
    mark = plane.audit_mark()
    wait_for(lambda: resync_passes(plane, mark, namespace) >= 2, timeout=20 * RESYNC, what="two resync passes")
    assert writes(plane, mark, namespace) == [], writes(plane, mark, namespace)
    return mark


@pytest.fixture(params=["cluster-wide", "namespaced"])
def ha_release(
    controlplane: cp.ControlPlane, third_party_crds: None, kubelet: HarnessKubelet, request: pytest.FixtureRequest
) -> Iterator[Release]:
    """replicaCount=2: a ClusterKopfPeering cluster-wide; namespaced, a KopfPeering in the namespace."""
    cluster_wide = request.param == "cluster-wide"
    release = Release("ha" if cluster_wide else "ha-ns", "ha" if cluster_wide else "ha-ns", cluster_wide)
    controlplane.kubectl("create", "namespace", release.namespace)  # before the install: a Role goes into it
    scope = (
        []
        if cluster_wide
        else ["--set", "watch.allNamespaces=false", "--set", f"watch.namespaces={{{release.namespace}}}"]
    )
    helm(controlplane, "install", release.name, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
         "--set", "logFormat=json", "--set", "replicaCount=2", *scope)  # fmt: skip
    try:
        yield release
    finally:
        helm(controlplane, "uninstall", release.name, "--namespace", OPERATOR_NAMESPACE, "--wait", check=False)
        controlplane.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def test_standby_takes_over_after_kill_without_loss_or_double_writes(
    controlplane: cp.ControlPlane,
    ha_release: Release,
    tmp_path: Path,
    record_property: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane, release, namespace = controlplane, ha_release, ha_release.namespace
    assert peers(plane, release) == {}, "the chart's peering object exists, empty"
    replicas: list[OperatorProcess] = []
    try:
        # The replica started first leads (the default priority falls with the start time).
        first = started(plane, release, tmp_path / "first")
        replicas.append(first)
        wait_for(lambda: is_active(first), timeout=60, what="the first replica active")
        second = started(plane, release, tmp_path / "second")
        replicas.append(second)
        wait_for(lambda: len(peers(plane, release)) == 2, timeout=60, what="both replicas in the peering object")
        first_id, second_id = token_of(first), token_of(second)

        mark = plane.audit_mark()
        names = ("ha-a", "ha-b", "ha-c")
        for name in names:
            apply(plane, agent_service(name, namespace))
        for name in names:
            plane.kubectl(
                "wait", "--for=condition=Ready", f"agsvc/{name}", "-n", namespace, "--timeout=120s", timeout=150
            )
        before_kill = steady(plane, namespace)
        by_writer = {writer for writer, _ in writes(plane, mark, namespace)}
        assert by_writer == {first_id}, f"only the active replica writes (standby {second_id}): {by_writer}"
        assert not is_active(second), "the standby's loops never started"

        # kill -9: no goodbye in the peering object; the standby waits out the lifetime.
        assert first.process is not None
        first.process.kill()
        killed = time.monotonic()
        first.process.wait()
        # Changes while no replica is active: one spec edited, one service created.
        apply(plane, agent_service("ha-b", namespace, worker={"replicas": 3}))
        apply(plane, agent_service("ha-new", namespace))
        wait_for(lambda: is_active(second), timeout=60, what="the standby active")
        takeover = time.monotonic() - killed
        record_property("takeover_after_kill_seconds", round(takeover, 1))
        assert takeover <= TAKEOVER_BOUND, f"takeover took {takeover:.1f} s"

        # No reconcile lost: the edit and the new service are served by the new active replica.
        wait_for(
            lambda: children(plane, namespace, "ha-b")["Deployment/ha-b-worker"]["spec"]["replicas"] == 3,
            timeout=90,
            what="the edit made during the handover applied",
        )
        wait_for(lambda: "Deployment/ha-new-worker" in children(plane, namespace, "ha-new"), timeout=90, what="ha-new")
        plane.kubectl("wait", "--for=condition=Ready", "agsvc/ha-new", "-n", namespace, "--timeout=120s", timeout=150)
        steady(plane, namespace)

        # No double write: across the handover only the new active replica wrote, nothing to the
        # services nobody changed, and the changed Deployment once.
        handover = writes(plane, before_kill, namespace)
        assert {writer for writer, _ in handover} == {second_id}, handover
        untouched = [w for _, w in handover if w.split("/")[-1].startswith(("ha-a", "ha-c"))]
        assert untouched == [], untouched
        worker_patches = [w for _, w in handover if w == "patch deployments//ha-b-worker"]
        assert len(worker_patches) == 1, handover

        # A replica started later stands by; a graceful stop of the active one hands over at once.
        third = started(plane, release, tmp_path / "third")
        replicas.append(third)
        wait_for(lambda: len(peers(plane, release)) == 2, timeout=60, what="the dead replica cleaned, the third one in")
        third_id = token_of(third)
        mark = plane.audit_mark()
        apply(plane, agent_service("ha-c", namespace, worker={"replicas": 1}))
        wait_for(
            lambda: children(plane, namespace, "ha-c")["Deployment/ha-c-worker"]["spec"]["replicas"] == 1,
            timeout=90,
            what="an edit served by the active replica",
        )
        # Two resync passes more (reads): the active replica looked at everything again meanwhile.
        looked = plane.audit_mark()
        wait_for(lambda: resync_passes(plane, looked, namespace) >= 2, timeout=20 * RESYNC, what="two resync passes")
        assert {writer for writer, _ in writes(plane, mark, namespace)} == {second_id}, "the newcomer did not preempt"
        assert not is_active(third)
        stopped = time.monotonic()
        second.stop()  # SIGTERM: kopf removes it from the peering object on its way out
        wait_for(lambda: is_active(third), timeout=60, what="the third replica active")
        graceful = time.monotonic() - stopped
        record_property("takeover_after_sigterm_seconds", round(graceful, 1))
        with capsys.disabled():
            print(f"\nHA takeover ({release.name}): {takeover:.1f} s after kill -9, {graceful:.1f} s after SIGTERM")
        assert graceful <= TAKEOVER_BOUND
        apply(plane, agent_service("ha-a", namespace, worker={"replicas": 1}))
        wait_for(
            lambda: children(plane, namespace, "ha-a")["Deployment/ha-a-worker"]["spec"]["replicas"] == 1,
            timeout=90,
            what="an edit served by the third replica",
        )
        assert {writer for writer, _ in writes(plane, mark, namespace)} <= {second_id, third_id}
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert not replica.forbidden_lines(), "refused:\n" + "\n".join(replica.forbidden_lines()[:10])
