"""The plugin verbs of a first day on a cluster, against the real operator on the dev cluster.

Covers:
- `status NAME --timeout D` as a CI gate: exit 0 once the spec is served (a line per change, the
  last `Ready: ...`), 3 once the revision was rolled back (aborted) and at once without waiting, 4
  when the timeout passes with a rollout in progress (`timed out after ...`), 1 for an AgentService
  that does not exist; `-o json|yaml` prints one document with the state and the exit code;
- `retry` rolls a rolled-back revision out again (the operator's retry gate, consumed), and refuses
  when nothing was rolled back;
- `set image` writes spec.image; `restart` writes spec.podAnnotations agentops.dev/restartedAt and
  the operator rolls the pods (a new revision);
- `undo`: back to the stable track's image when the spec asks for another, else to the image of
  the previous Deployment revision (ReplicaSets as the Deployment controller leaves them), and an
  error line when the history holds no earlier image;
- `-o json|yaml` of `get`, `list` and `history`; `version`/`--version` without a cluster;
- `completion bash` completes the verbs in a real bash; `completion zsh` is a zsh script.
"""

from __future__ import annotations

import copy
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from agent_operator import __version__
from agent_operator.plugin import cli

from tests.integration.operator.conftest import eventually
from tests.integration.operator.plugin.conftest import Result, plugin
from tests.integration.operator.test_canary_rollout import (
    NEW_IMAGE,
    OLD_IMAGE,
    CanaryOperator,
    annotate,
    canary_of,
    canary_service,
    deployments,
    image_of,
    start_rollout,
)

REPLICASETS = "apps/v1/replicasets"


def worker_image(op: CanaryOperator) -> str | None:
    worker = deployments(op).get("demo-worker")
    return image_of(worker) if worker else None


def last_line(result: Result) -> str:
    return result.out.splitlines()[-1]


async def test_status_gates_ready_rolled_back_retry_and_timeout(op: CanaryOperator, kubeconfig: Path) -> None:
    await op.put(canary_service(inconclusiveLimit=100))
    ready = await plugin(kubeconfig, "status", "demo", "--timeout", "30s")
    assert (ready.code, ready.err) == (0, ""), ready
    assert last_line(ready).startswith("Ready: ")

    missing = await plugin(kubeconfig, "status", "nope", "--timeout", "5s")
    assert (missing.code, missing.out) == (1, "")
    assert missing.err == 'error: agentservice "nope" not found in namespace "default"\n'

    nothing = await plugin(kubeconfig, "retry", "demo")
    assert nothing.code == 1 and "no rolled-back rollout to retry" in nothing.err

    body = copy.deepcopy(op.service())
    assert body is not None
    await start_rollout(op, body)
    # No Prometheus: the analyses are inconclusive and the rollout neither ends nor pauses.
    timed_out = await plugin(kubeconfig, "status", "demo", "--timeout", "2s")
    assert timed_out.code == 4, timed_out
    assert last_line(timed_out).startswith("timed out after 2s: rollout progressing at weight 10%")

    await annotate(op, **{"agentops.dev/abort": "true"})
    rolled_back = await plugin(kubeconfig, "status", "demo", "--timeout", "30s")
    assert rolled_back.code == 3, rolled_back
    assert f"revision {canary_of(op)['canaryRevision']} rolled back" in last_line(rolled_back)
    as_json = await plugin(kubeconfig, "status", "demo", "-o", "json")
    document = json.loads(as_json.out)
    assert (as_json.code, document["state"], document["exitCode"], document["name"]) == (3, "Failed", 3, "demo")
    await eventually(lambda: "agentops.dev/abort" not in (op.service() or {})["metadata"].get("annotations", {}))

    retried = await plugin(kubeconfig, "retry", "demo")
    assert (retried.code, retried.err) == (0, ""), retried
    assert retried.out.endswith("rolled out again from the first step (agentops.dev/retry=true)\n")
    await eventually(lambda: canary_of(op).get("phase") == "Progressing", timeout=30)
    await eventually(lambda: "agentops.dev/retry" not in (op.service() or {})["metadata"].get("annotations", {}))
    assert canary_of(op)["weight"] == 10

    await annotate(op, **{"agentops.dev/promote": "true"})
    promoted = await plugin(kubeconfig, "status", "demo", "--timeout", "30s", "-o", "yaml")
    assert promoted.code == 0, promoted
    assert yaml.safe_load(promoted.out)["state"] == "Ready"


async def test_set_image_and_restart_roll_the_pods(op: CanaryOperator, kubeconfig: Path) -> None:
    await op.put(canary_service(enabled=False))
    await eventually(lambda: op.status().get("phase") == "Ready", timeout=15)
    revision = op.status()["revision"]

    result = await plugin(kubeconfig, "set", "image", "demo", NEW_IMAGE)
    assert (result.code, result.out) == (0, f"agentservice/demo: spec.image {OLD_IMAGE} -> {NEW_IMAGE}\n")
    await eventually(lambda: worker_image(op) == NEW_IMAGE, timeout=15)

    now = datetime.datetime(2026, 12, 8, 1, 2, 3, tzinfo=datetime.UTC)
    result = await plugin(kubeconfig, "restart", "demo", now=now)
    assert result.code == 0 and "agentops.dev/restartedAt=2026-12-08T01:02:03Z" in result.out
    assert (op.service() or {})["spec"]["podAnnotations"] == {"agentops.dev/restartedAt": "2026-12-08T01:02:03Z"}
    template = lambda: deployments(op)["demo-worker"]["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    await eventually(lambda: template().get("agentops.dev/restartedAt") == "2026-12-08T01:02:03Z", timeout=15)
    await eventually(lambda: op.status().get("revision") not in ("", revision), timeout=15)

    bad = await plugin(kubeconfig, "set", "image", "demo", " ")
    assert bad.code == 1 and bad.err.startswith("error: not an image reference")


def replica_set(revision: int, image: str, owner: str = "demo-worker") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{owner}-{revision}",
            "namespace": "default",
            "labels": {
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/managed-by": "agentservice-operator",
                "app.kubernetes.io/component": "worker",
                "track": "stable",
            },
            "annotations": {"deployment.kubernetes.io/revision": str(revision)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": owner, "uid": "u"}],
        },
        "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": image}]}}},
    }


@pytest.fixture
def with_replica_sets(op: CanaryOperator) -> CanaryOperator:
    # The dev cluster runs no Deployment controller: the ReplicaSets it would leave are written here.
    op.cluster.resources[kmock.resource("apps", "v1", "replicasets")] = kmock.ResourceInfo(
        kind="ReplicaSet", singular="replicaset", namespaced=True, verbs={"get", "list", "watch", "create", "update"}
    )
    return op


async def test_undo(with_replica_sets: CanaryOperator, kubeconfig: Path) -> None:
    op = with_replica_sets
    await op.put(canary_service(enabled=False))
    await eventually(lambda: worker_image(op) == OLD_IMAGE, timeout=15)
    nothing = await plugin(kubeconfig, "undo", "demo")
    assert nothing.code == 1 and 'no earlier image in the history of deployment "demo-worker"' in nothing.err

    for rs in (replica_set(1, "registry.example/agent-runtime:0.9"), replica_set(2, OLD_IMAGE)):
        await op.cluster.put_object(REPLICASETS, rs)
    await op.cluster.put_object(REPLICASETS, replica_set(7, "elsewhere:1", owner="other-worker"))
    result = await plugin(kubeconfig, "undo", "demo")
    assert result.code == 0, result
    assert result.out == (
        f"agentservice/demo: undo: spec.image {OLD_IMAGE} -> registry.example/agent-runtime:0.9 "
        "(the image of deployment revision 1); other spec changes are not undone\n"
    )
    assert (op.service() or {})["spec"]["image"] == "registry.example/agent-runtime:0.9"
    await eventually(lambda: worker_image(op) == "registry.example/agent-runtime:0.9")


async def test_undo_during_a_rollout_goes_back_to_the_stable_image(
    with_replica_sets: CanaryOperator, kubeconfig: Path
) -> None:
    op = with_replica_sets
    body = canary_service(inconclusiveLimit=100)
    await start_rollout(op, body)
    result = await plugin(kubeconfig, "undo", "demo")
    assert result.code == 0, result
    assert f"spec.image {NEW_IMAGE} -> {OLD_IMAGE} (the image the stable track runs)" in result.out
    await eventually(lambda: canary_of(op).get("phase") == "Idle", timeout=30)


async def test_read_verbs_print_json_and_yaml(op: CanaryOperator, kubeconfig: Path) -> None:
    await op.put(canary_service())
    await eventually(lambda: op.status().get("phase") == "Ready", timeout=15)
    got = await plugin(kubeconfig, "get", "demo", "-o", "json")
    assert json.loads(got.out)["metadata"]["name"] == "demo"
    listed = yaml.safe_load((await plugin(kubeconfig, "list", "-o", "yaml")).out)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == ["demo"]
    history = await plugin(kubeconfig, "history", "demo", "-o", "json")
    assert (history.code, json.loads(history.out)) == (0, [])
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, as for every other verb
        await plugin(kubeconfig, "get", "demo", "-o", "json", "--watch")
    assert usage.value.code == 2


def run_plugin(*args: str) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "kubectl-agentservice"  # the installed console script
    return subprocess.run([str(executable), *args], capture_output=True, text=True, timeout=60, check=False)


def test_version_needs_no_cluster(tmp_path: Path) -> None:
    assert cli.main(["version"]) == 0
    flag = run_plugin("--version")
    assert (flag.returncode, flag.stdout) == (0, f"kubectl-agentservice {__version__}\n")
    document = json.loads(run_plugin("version", "-o", "json").stdout)
    assert document == {"plugin": "kubectl-agentservice", "version": __version__}


def test_bash_completion_completes_the_verbs(tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    script.write_text(run_plugin("completion", "bash").stdout)
    probe = (
        f"source {script}\n"
        "COMP_WORDS=(kubectl-agentservice st); COMP_CWORD=1; COMP_LINE='kubectl-agentservice st';"
        " COMP_POINT=${#COMP_LINE}\n"
        "_shtab_kubectl_agentservice\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["status"]


def test_zsh_completion_is_a_zsh_script() -> None:
    script = run_plugin("completion", "zsh").stdout
    assert script.startswith("#compdef kubectl-agentservice")
    for verb in ("status", "undo", "retry", "restart", "completion"):
        assert verb in script
