"""The operator from the bundled image, as a container, against the real control plane.

The chart is installed (its ServiceAccount, RBAC and Deployment; no kubelet runs the Deployment
here), and `agentctl operator` runs in podman from the image built by the set-up with the chart's
own arguments, hardened as the chart's securityContext says (tests/support/image.py), and
authenticated as a pod is: the ServiceAccount's token, the cluster CA and the namespace mounted
at /var/run/secrets/kubernetes.io/serviceaccount, and the API server reached as
https://kubernetes.default.svc (port 443), the name given to the container and the address
forwarded to the API server as kube-proxy would (`ServiceForward`). It answers the chart's probes,
turns an AgentService into its Deployments under the chart's RBAC (never refused), and exits 0 on
SIGTERM within the grace period.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from agentops_dev.localredis import free_port

from tests.cluster.harness import CHART, chart_operator_args, helm, with_port
from tests.support import controlplane as cp
from tests.support import image as img

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

RELEASE = "image"
NAMESPACE = "image-system"
TENANT = "image-tenant"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_HOST = "kubernetes.default.svc"  # what a pod's service-account login dials, on port 443
DEFAULT_GRACE = 30  # a pod's terminationGracePeriodSeconds when the chart sets none


@pytest.fixture(scope="module")
def runtime_image() -> str:
    reason = img.unavailable()
    if reason is not None:
        pytest.skip(reason)
    if not img.built():
        pytest.fail("the image is not built: run `make setup-test` or `scripts/image.sh build`")
    try:
        return img.load()[0]
    except img.ImageError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def installed(controlplane: cp.ControlPlane) -> Iterator[None]:
    helm(controlplane, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
         "--set", "logFormat=json")  # fmt: skip
    try:
        yield
    finally:
        controlplane.kubectl("delete", "namespace", TENANT, "--ignore-not-found", "--wait=false", check=False)
        helm(controlplane, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)


def service_account_dir(plane: cp.ControlPlane, tmp_path: Path) -> Path:
    """What the kubelet projects into a pod: token, CA, namespace, readable by the image's user."""
    deployment = plane.get("deployments", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"][0]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    token = plane.kubectl("create", "token", account, "-n", NAMESPACE, "--duration=1h").stdout.strip()
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes((plane.directory / "ca.crt").read_bytes())
    (directory / "namespace").write_text(NAMESPACE)
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


def agent_service() -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "agentops.dev/v1alpha1",
            "kind": "AgentService",
            "metadata": {"name": "from-image", "namespace": TENANT},
            "spec": {
                "model": {"providers": [{"name": "local", "model": "m", "baseURL": "http://127.0.0.1:9/"}]},
                "redis": {"url": "redis://redis:6379/0"},
                "autoscaling": {"enabled": False},
            },
        }
    )


def test_operator_container_reconciles_under_the_chart_rbac(
    controlplane: cp.ControlPlane, installed: None, runtime_image: str, tmp_path: Path
) -> None:
    deployment = controlplane.get("deployments", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")
    pod = deployment["items"][0]["spec"]["template"]["spec"]
    (chart_container,) = pod["containers"]
    assert chart_container["securityContext"]["readOnlyRootFilesystem"] is True
    assert chart_container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    health, metrics = free_port(), free_port()
    args = with_port(with_port(chart_operator_args(controlplane, RELEASE, NAMESPACE), "--health-port", health),
                     "--metrics-port", metrics)  # fmt: skip
    server = urlsplit(controlplane.server)
    service = img.ServiceForward((str(server.hostname), int(server.port or 443)))
    env = {e["name"]: e["value"] for e in chart_container["env"] if "value" in e}
    env |= {
        "POD_ID": "image-operator",
        "HEALTH_PORT": str(health),
        "KUBERNETES_SERVICE_HOST": service.address,
        "KUBERNETES_SERVICE_PORT": str(service.PORT),
    }
    container = img.Container(
        image=runtime_image,
        command=[*chart_container["command"], "operator", *args],
        mounts=[(service_account_dir(controlplane, tmp_path), SERVICE_ACCOUNT_DIR)],
        env=env,
        hosts={SERVICE_HOST: service.address},
    )
    try:
        container.start()
        for probe in ("livenessProbe", "readinessProbe"):
            path = chart_container[probe]["httpGet"]["path"]
            assert container.wait_http(f"http://127.0.0.1:{health}{path}") == 200, (probe, container.logs())
        controlplane.kubectl("create", "namespace", TENANT)
        controlplane.kubectl("apply", "-f", "-", input=agent_service())
        for component in ("api", "worker"):
            _wait_for_object(container, controlplane, f"deployment/from-image-{component}")
        grace = int(pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
        code, took = container.stop(grace)
        logs = container.logs()
        assert code == 0, f"the operator exited {code} on SIGTERM:\n{logs}"
        assert took < grace
        refused = [line for line in logs.splitlines() if _refused(line)]
        assert not refused, "the operator was refused:\n" + "\n".join(refused[:10])
    finally:
        container.remove()
        service.close()


def _wait_for_object(container: img.Container, plane: cp.ControlPlane, name: str, timeout: float = 90) -> None:
    """Wait until the operator container has made `name` in the tenant namespace (fails when it exits)."""
    deadline = time.monotonic() + timeout
    while not plane.exists(name, "-n", TENANT):
        assert container.running(), container.logs()
        assert time.monotonic() < deadline, f"the operator container made no {name}:\n{container.logs()}"
        time.sleep(0.5)


def _refused(line: str) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return " 403 " in line or "Forbidden" in line
    text = json.dumps(record)
    return "Forbidden" in text or '"status": 403' in text
