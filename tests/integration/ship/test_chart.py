"""The Helm chart, with the real `helm` binary.

Covers: `helm lint --strict` and `helm template` with the default values and each file in
`ci/`; every rendered document validates with kubernetes-validate (strict, 1.30 and the newest) or,
for the ServiceMonitor, against the vendored upstream CRD schema; `values.schema.json` rejects bad
values with a clear helm error; the chart's CRD is the generated one; chart, app and package
versions agree; the RBAC the chart grants is exactly the generated least-privilege rule set;
one replica runs standalone, two or more get kopf's peering object (cluster-wide or one per watched
namespace), the operator arguments naming it and the RBAC to use it, and the chart ships the
peering CRDs; the chart's agentPods.imagePullSecrets and monitoring labels/annotations reach the
operator as its defaults.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.operator.test_kubernetes_schemas import assert_valid

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "agentservice-operator"
HELM = ROOT / ".tools" / "bin" / "helm"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check, timeout=60)


def render(values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    args = ["template", "release", str(CHART), "--namespace", "agent-system", *extra]
    if values is not None:
        args += ["-f", str(values)]
    docs = yaml.safe_load_all(helm(*args).stdout)
    return [doc for doc in docs if doc]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_rendered_documents_are_valid(values: Path | None) -> None:
    docs = render(values)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"} <= kinds
    assert_valid(docs)


def test_namespaced_install_uses_roles_per_namespace() -> None:
    docs = render(CHART / "ci" / "namespaced-values.yaml")
    roles = sorted(doc["metadata"]["namespace"] for doc in docs if doc["kind"] == "Role")
    assert roles == ["agents-a", "agents-b"]
    args = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=agents-a" in args and "--namespace=agents-b" in args
    assert "--all-namespaces" not in args


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_operator_arguments_are_understood_by_agentctl_operator(values: Path | None) -> None:
    from agent_operator import run

    deployment = next(doc for doc in render(values) if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["agentctl"] and container["args"][0] == "operator"
    parsed = run.build_parser().parse_args(container["args"][1:])  # exits (fails the test) on an unknown flag
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (parsed.health_port, parsed.metrics_port) == (ports["health"], ports["metrics"])
    if values is None:
        assert parsed.worker_limit == run.DEFAULT_WORKER_LIMIT


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("watch.allNamespaces=maybe", "allNamespaces"),
        ("logFormat=xml", "logFormat"),
        ("metrics.port=70000", "port"),
        ("prometheus.url=prometheus:9090", "url"),
        ("unknownKey=1", "unknownKey"),
        ("replicaCount=0", "replicaCount"),
        ("peering.lifetimeSeconds=5", "lifetimeSeconds"),
        ("workerLimit=-1", "workerLimit"),
        ("policy.allowTokenAutomount=maybe", "allowTokenAutomount"),
        ("policy.allowedServiceAccounts={Not_A_Name}", "allowedServiceAccounts"),
        ("policy.allowedImages={}", "allowedImages"),
    ],
)
def test_values_schema_rejects_bad_values(setting: str, message: str) -> None:
    result = helm("template", "release", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_chart_crd_is_the_generated_one() -> None:
    generated = (ROOT / "crds" / "agentservices.agentops.dev.yaml").read_text()
    in_chart = (CHART / "crds" / "agentservices.agentops.dev.yaml").read_text()
    assert in_chart == generated, "chart CRD is stale: run `make crd`"


def test_versions_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == chart["appVersion"] == package


def test_rbac_is_the_generated_rule_set() -> None:
    from agent_operator import rbac

    rules_file = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    assert rules_file == rbac.rules_document(), "files/rbac-rules.yaml is stale: run `make crd`"
    docs = render()
    cluster_role = next(doc for doc in docs if doc["kind"] == "ClusterRole")
    granted = cluster_role["rules"]
    assert granted == rules_file["cluster"] + rules_file["namespaced"]
    for rule in granted:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]


PEERING_KINDS = {"ClusterKopfPeering", "KopfPeering"}


def test_one_replica_runs_standalone() -> None:
    docs = render()
    assert not [doc for doc in docs if doc["kind"] in PEERING_KINDS]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [arg for arg in args if arg.startswith("--peering")]


def test_two_replicas_elect_one_through_a_cluster_peering() -> None:
    """replicaCount 2: a ClusterKopfPeering, the operator told its name and lifetime, the RBAC to use it."""
    from agent_operator import rbac, run

    docs = render(None, "--set", "replicaCount=2", "--set", "peering.lifetimeSeconds=25")
    (peering,) = [doc for doc in docs if doc["kind"] in PEERING_KINDS]
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["kind"] == "ClusterKopfPeering"
    assert "namespace" not in peering["metadata"]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    parsed = run.build_parser().parse_args(container["args"][1:])
    assert parsed.peering == peering["metadata"]["name"] and parsed.peering_lifetime == 25
    assert parsed.priority is None  # the default: the earliest replica leads (leadership.default_priority)
    pod_id = next(env for env in container["env"] if env["name"] == "POD_ID")  # kopf's identity of the replica
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert_valid([doc for doc in docs if doc["kind"] not in PEERING_KINDS])
    spread = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert spread["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    document = rbac.rules_document()
    cluster_role = next(doc for doc in docs if doc["kind"] == "ClusterRole")
    assert cluster_role["rules"] == document["cluster"] + document["namespaced"] + document["clusterPeering"]


def test_two_replicas_namespaced_use_a_peering_in_each_namespace() -> None:
    from agent_operator import rbac

    docs = render(CHART / "ci" / "namespaced-values.yaml", "--set", "replicaCount=2", "--set", "peering.name=ops-ha")
    peerings = sorted((doc["kind"], doc["metadata"]["namespace"]) for doc in docs if doc["kind"] in PEERING_KINDS)
    assert peerings == [("KopfPeering", "agents-a"), ("KopfPeering", "agents-b")]
    args = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=ops-ha" in args
    document = rbac.rules_document()
    for role in (doc for doc in docs if doc["kind"] == "Role"):
        assert role["rules"] == document["namespaced"] + document["namespacedPeering"]
    cluster_role = next(doc for doc in docs if doc["kind"] == "ClusterRole")
    assert cluster_role["rules"] == document["cluster"]  # no ClusterKopfPeering access when namespaced


def test_peering_crds_are_shipped() -> None:
    crds = list(yaml.safe_load_all((CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text()))
    scopes = {crd["spec"]["names"]["kind"]: crd["spec"]["scope"] for crd in crds}
    assert scopes == {"ClusterKopfPeering": "Cluster", "KopfPeering": "Namespaced"}
    assert {crd["spec"]["group"] for crd in crds} == {"kopf.dev"}


def test_the_admission_policy_is_on_by_default_and_the_operator_gets_the_same_rules() -> None:
    """Issue 27, point 4: a ValidatingAdmissionPolicy and its binding by default; the operator's flags
    carry the same values (it enforces them itself where the policy is off)."""
    from agent_operator import run

    docs = render()
    (policy,) = [doc for doc in docs if doc["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [doc for doc in docs if doc["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"] and "matchResources" not in binding["spec"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["allowedImages"] == '["agentops/agent-runtime"]'  # the chart's own image repository
    assert (variables["allowedServiceAccounts"], variables["allowTokenAutomount"]) == ("[]", "false")
    assert variables["allowedPodAnnotations"] == "[]"
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    parsed = run.build_parser().parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    rules = run.config_from(parsed).admission
    assert rules.enforced and rules.allowed_images == ("agentops/agent-runtime",)
    assert (rules.allowed_service_accounts, rules.allow_token_automount, rules.allowed_pod_annotations) == (
        (),
        False,
        (),
    )

    custom = render(
        None,
        "--set", "policy.allowedImages={registry.example/team/,agentops/agent-runtime}",
        "--set", "policy.allowedServiceAccounts={agent}",
        "--set", "policy.allowTokenAutomount=true",
        "--set", "policy.allowedPodAnnotations={prometheus.io/}",
        "--set", "policy.allowedProviderHosts={llm.internal}",
        "--set", "watch.allNamespaces=false",
        "--set", "watch.namespaces={team-a,team-b}",
    )  # fmt: skip
    deployment = next(doc for doc in custom if doc["kind"] == "Deployment")
    parsed = run.build_parser().parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    rules = run.config_from(parsed).admission
    assert rules.allowed_images == ("registry.example/team/", "agentops/agent-runtime")
    assert rules.allowed_service_accounts == ("agent",) and rules.allow_token_automount
    assert rules.allowed_pod_annotations == ("prometheus.io/",) and rules.allowed_provider_hosts == ("llm.internal",)
    binding = next(doc for doc in custom if doc["kind"] == "ValidatingAdmissionPolicyBinding")
    (selector,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    policy = next(doc for doc in custom if doc["kind"] == "ValidatingAdmissionPolicy")
    assert len(policy["spec"]["validations"]) == 5  # the closed list of provider hosts too

    off = render(None, "--set", "policy.admissionPolicy=false")
    assert not [doc for doc in off if doc["kind"].startswith("ValidatingAdmissionPolicy")]
    deployment = next(doc for doc in off if doc["kind"] == "Deployment")
    assert "--policy-enforced" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    disabled = render(None, "--set", "policy.enabled=false")
    assert not [doc for doc in disabled if doc["kind"].startswith("ValidatingAdmissionPolicy")]
    deployment = next(doc for doc in disabled if doc["kind"] == "Deployment")
    assert not [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--policy")]


def containers_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_the_label_proxy_sidecar_confines_every_query_by_default() -> None:
    from agent_operator import run

    from tests.support.labelproxy import CHART_ARGS

    containers = containers_of(render(None, "--set", "prometheus.url=http://prometheus.monitoring:9090"))
    assert list(containers) == ["operator", "prom-label-proxy"]  # the operator first: tools read [0]
    proxy = containers["prom-label-proxy"]
    assert set(CHART_ARGS) <= set(proxy["args"])
    assert "--upstream=http://prometheus.monitoring:9090" in proxy["args"]
    assert "--insecure-listen-address=127.0.0.1:9095" in proxy["args"]  # loopback: only the operator
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    parsed = run.build_parser().parse_args(containers["operator"]["args"][1:])
    assert (parsed.prometheus_url, parsed.prometheus_namespace_param) == ("http://127.0.0.1:9095", "namespace")
    assert (parsed.prometheus_query_timeout, parsed.analysis_time_limit) == (5, 20)

    off = containers_of(
        render(
            None,
            "--set",
            "prometheus.url=http://prometheus.monitoring:9090",
            "--set",
            "prometheus.labelProxy.enabled=false",
        )
    )
    assert list(off) == ["operator"]
    parsed = run.build_parser().parse_args(off["operator"]["args"][1:])
    assert (parsed.prometheus_url, parsed.prometheus_namespace_param) == ("http://prometheus.monitoring:9090", None)
    assert list(containers_of(render())) == ["operator"]  # no Prometheus, no proxy


@pytest.mark.parametrize(
    ("keys", "variables"),
    [
        ({"bearerTokenKey": "token"}, {"PROMETHEUS_BEARER_TOKEN": "token"}),
        (
            {"usernameKey": "user", "passwordKey": "pass"},
            {"PROMETHEUS_USERNAME": "user", "PROMETHEUS_PASSWORD": "pass"},
        ),
    ],
)
def test_prometheus_credentials_come_from_a_secret(keys: dict[str, str], variables: dict[str, str]) -> None:
    sets = [
        "--set",
        "prometheus.url=http://prometheus.monitoring:9090",
        "--set",
        "prometheus.auth.secretName=prom-creds",
    ]
    for key, value in keys.items():
        sets += ["--set", f"prometheus.auth.{key}={value}"]
    docs = render(None, *sets)
    operator = containers_of(docs)["operator"]
    env = {e["name"]: e for e in operator["env"] if e["name"].startswith("PROMETHEUS_")}
    assert {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items()} == {
        name: {"name": "prom-creds", "key": key} for name, key in variables.items()
    }
    assert_valid(docs)


def test_agent_pod_and_monitoring_defaults_reach_the_operator() -> None:
    from agent_operator import run
    from agent_operator.api import defaults

    deployment = next(
        doc for doc in render(CHART / "ci" / "private-registry-values.yaml") if doc["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]  # the operator's own pod
    config = run.config_from(run.build_parser().parse_args(pod["containers"][0]["args"][1:]))
    assert config.defaults == defaults.Defaults(
        image_pull_secrets=("regcred",),
        monitoring_labels={"release": "kube-prometheus-stack"},
        monitoring_annotations={"team": "agents"},
    )
    plain = next(doc for doc in render() if doc["kind"] == "Deployment")
    args = plain["spec"]["template"]["spec"]["containers"][0]["args"]
    assert run.config_from(run.build_parser().parse_args(args[1:])).defaults == defaults.NONE


def quantity_bytes(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_default_operator_resources_cover_the_measured_peak_at_1000_services() -> None:
    # bench/RESULTS.md: the operator's peak RSS with 1,000 services is at most 232.4 MB.
    deployment = next(doc for doc in render() if doc["kind"] == "Deployment")
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert quantity_bytes(resources["limits"]["memory"]) >= 1.5 * 232.4e6
    assert quantity_bytes(resources["requests"]["memory"]) >= 232.4e6
    table = (ROOT / "docs" / "operator.md").read_text()
    first_row = next(line for line in table.splitlines() if line.startswith("| up to 1,000 |"))
    assert f"`cpu: {resources['requests']['cpu']}`, `memory: {resources['requests']['memory']}`" in first_row
    assert f"`{resources['limits']['memory']}`" in first_row
    ten_thousand = next(line for line in table.splitlines() if line.startswith("| up to 10,000 |"))
    limit = ten_thousand.split("|")[4].strip().strip("`")
    assert quantity_bytes(limit) >= 1.5 * 554e6  # the 10,000-service peak
