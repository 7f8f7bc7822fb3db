"""Fixtures of the `cluster` tests: the real control plane, a harness kubelet, the chart, the operator.

- `controlplane` (session): etcd, kube-apiserver, kube-controller-manager and kube-scheduler from
  `scripts/controlplane.sh`, the CRD applied and Established. Without Go, outside CI, every test
  here skips naming the reason; with `CI=true` a missing Go or a failed build fails them.
- `kubelet` (session): a Node, its kubelet authenticated as that Node; its bound pods are reported
  Running and Ready, or run as runtime processes in the namespaces a test hands it
  (`kubelet.run_namespace`).
- `installed_operator` (module): the chart installed cluster-wide into `agent-system` (its
  admission policy on, allowing the chart's image and `registry.example/`), and the operator as a
  real `agentctl operator` process with the chart's own arguments, authenticated by a TokenRequest
  token of the chart's ServiceAccount (not as cluster-admin).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.cluster.harness import (
    CHART,
    CRD,
    OPERATOR_NAMESPACE,
    RELEASE,
    THIRD_PARTY_CRDS,
    OperatorProcess,
    helm,
    run_operator_as_chart,
)
from tests.support import controlplane as cp
from tests.support.kubelet import HarnessKubelet, node_kubeconfig


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cp.ControlPlane]:
    reason = cp.unavailable()
    if reason is not None:
        pytest.skip(reason)
    if not cp.built():
        # A build takes minutes, far past a test's timeout: it belongs to the set-up, not a fixture.
        pytest.fail("the control plane is not built: run `make setup-test` or `scripts/controlplane.sh build`")
    directory = tmp_path_factory.mktemp("controlplane")
    try:
        plane = cp.start(directory)
    except cp.ControlPlaneError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRD))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/agentservices.agentops.dev")
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def third_party_crds(controlplane: cp.ControlPlane) -> None:
    """prometheus-operator's and KEDA's own CRDs (copied from their Go modules, see crds/README.md)."""
    controlplane.kubectl("apply", "--server-side", "-f", str(THIRD_PARTY_CRDS))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(THIRD_PARTY_CRDS.glob("*.yaml"))]
    controlplane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])


NODE = "harness-node"
ALLOWED_IMAGES = ("agentops/agent-runtime", "registry.example/", "registry.example.com/")


@pytest.fixture(scope="session")
def kubelet(controlplane: cp.ControlPlane) -> Iterator[HarnessKubelet]:
    harness = HarnessKubelet(node_kubeconfig(controlplane, NODE)).start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def installed_operator(
    controlplane: cp.ControlPlane,
    third_party_crds: None,
    kubelet: HarnessKubelet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The chart installed cluster-wide and its operator running as the chart's ServiceAccount."""
    workdir = tmp_path_factory.mktemp("operator")
    # The chart's admission policy is on, as by default; the tests' own runtime images (registry.example/)
    # are allowed beside the chart's.
    helm(controlplane, "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
         "--set", "logFormat=json", "--set", f"policy.allowedImages={{{','.join(ALLOWED_IMAGES)}}}")  # fmt: skip
    # The chart's own arguments, but a 3 s resync (the chart's floor is 5 s) for short steady-state waits.
    operator = run_operator_as_chart(
        controlplane, workdir, release=RELEASE, namespace=OPERATOR_NAMESPACE, overrides={"--resync-interval": "3"}
    )
    try:
        yield operator
    finally:
        operator.stop()
        helm(controlplane, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", check=False)
    assert not operator.forbidden_lines(), "the operator was refused:\n" + "\n".join(operator.forbidden_lines()[:10])
