"""The operator end to end on the dev cluster: create, status, update, drift, steady state, restart.

Covers:
- create → every child exists, owned (controller ownerReference to the AgentService's uid) and
  labelled with the standard labels; status goes Progressing → Ready once the Deployments report
  ready, with observedGeneration, replicas/readyReplicas, `children` (every child, in apply
  order) and Events;
- updates of image, env, worker replicas and an alert threshold → exactly the children whose
  rendered manifest changed are written (the emulator's request log), nothing else;
- a hand-edited child is restored (a watch or the resync, whichever comes first), and the auth
  Secret, which no watch follows, by the next resync pass (test_child_watch.py: the watches alone);
- steady state → zero write requests over several resync passes;
- operator restart (resume) → no duplicate children and zero writes;
- a Deployment and a Service it owns under a name the naming rule no longer gives (an upgrade that
  shortened long names) are deleted after a restart; an unowned one with the same labels stays;
- the auth token survives updates and restarts; metrics count every write the operator makes.
"""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
from agent_operator.api import models
from agent_operator.kube import client as kube_client
from agent_operator.kube import diff
from agent_operator.manifests import builders, naming

from tests.integration.operator.conftest import AGSVC, Operator, agent_service, child_writes, eventually, ready_service


def rendered(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc = models.AgentService.model_validate(body)
    return {
        f"{kube_client.PLURALS[c['apiVersion'], c['kind']]}/{c['metadata']['name']}": c
        for c in builders.build_children(svc)
    }


def changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    old, new = rendered(before), rendered(after)
    return {key for key, manifest in new.items() if old.get(key) != manifest}


async def test_create_builds_every_child_owned_and_labelled(operator: Operator) -> None:
    body = agent_service()
    await operator.put(body)
    expected = {f"{c['kind']}/{c['metadata']['name']}" for c in rendered(body).values()}
    children = await eventually(lambda: (c := operator.children()) and set(c) == expected and c)
    owner = operator.service()
    assert owner is not None
    for key, child in children.items():
        refs = child["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "name": "demo",
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], key
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "demo", key
        assert labels["app.kubernetes.io/managed-by"] == naming.MANAGED_BY, key
        assert labels["app.kubernetes.io/name"] == naming.APP_NAME, key
        assert {"app.kubernetes.io/component", "app.kubernetes.io/version"} <= set(labels), key
        assert diff.APPLIED_HASH_ANNOTATION in child["metadata"]["annotations"], key

    # No controller runs in the emulator: nothing is ready until the "Deployment controller" says so.
    status = await eventually(lambda: operator.status().get("phase") == "Progressing" and operator.status())
    assert status["observedGeneration"] == 1
    assert status["replicas"] == 5 and status["readyReplicas"] == 0
    assert operator.condition("Progressing")["status"] == "True"
    assert operator.condition("Ready")["status"] == "False"

    await operator.cluster.simulate_rollouts()
    status = await eventually(lambda: operator.status().get("phase") == "Ready" and operator.status())
    assert status["readyReplicas"] == 5
    assert status["children"] == [
        {"apiVersion": c["apiVersion"], "kind": c["kind"], "name": c["metadata"]["name"]}
        for c in rendered(body).values()
    ]
    ready = operator.condition("Ready")
    assert ready["status"] == "True" and ready["reason"] == "AllReplicasReady"
    assert ready["observedGeneration"] == 1 and ready["lastTransitionTime"]
    assert {c["type"] for c in status["conditions"]} == {
        "Ready",
        "Progressing",
        "Degraded",
        "SpecInvalid",
        "SecretMissing",
        "ChildConflict",
    }
    assert operator.condition("ChildConflict")["status"] == "False"

    def reasons() -> set[str]:
        events = operator.cluster.live_objects("v1/events", "default")
        return {e["reason"] for e in events if e["involvedObject"]["name"] == "demo"}

    await eventually(lambda: reasons() >= {"Applied", "Ready"})  # posted right after the status write
    # No finalizer: nothing outside the cluster to clean up, the garbage collector does the rest.
    assert not (operator.service() or {})["metadata"].get("finalizers")
    # the auth Secret got a token
    secret = children["Secret/demo-auth"]
    assert set(secret["data"]) == {"token"}


async def test_steady_state_makes_zero_writes(operator: Operator) -> None:
    await ready_service(operator, agent_service())
    mark = operator.cluster.request_count
    await operator.settle(passes=5)
    assert operator.cluster.writes(mark) == []
    reads = operator.cluster.request_count - mark
    assert reads > 0  # the resync passes did run: they read every child


async def test_updates_write_exactly_the_affected_children(operator: Operator) -> None:
    body = agent_service()
    await ready_service(operator, body)
    token = operator.children()["Secret/demo-auth"]["data"]["token"]
    edits: list[tuple[str, Any]] = [
        ("image", lambda s: s.update(image="registry.example/agent-runtime:2.0")),
        ("env", lambda s: s.update(env=[{"name": "FEATURE_X", "value": "on"}])),
        ("worker replicas", lambda s: s["worker"].update(replicas=7)),
        ("alert threshold", lambda s: s.update(alerts={"errorRate": 0.25})),
    ]
    for what, edit in edits:
        before = copy.deepcopy(body)
        edit(body["spec"])
        expected = changed(before, body)
        assert expected, what
        mark = operator.cluster.request_count
        generation = operator.service()["metadata"]["generation"]  # type: ignore[index]
        await operator.put(body)
        await eventually(lambda g=generation: operator.status().get("observedGeneration") == g + 1)
        await operator.settle(passes=2)
        assert child_writes(operator.cluster.writes(mark)) == expected, what
        assert len([r for r in operator.cluster.writes(mark) if r.resource.plural not in ("events",)]) >= len(expected)
    kinds = {
        "image": {"deployments/demo-api", "deployments/demo-worker"},
        "worker replicas": {"deployments/demo-worker"},
        "alert threshold": {"prometheusrules/demo-alerts"},
    }
    assert kinds["worker replicas"] == changed(
        agent_service(), {**agent_service(), "spec": {**agent_service()["spec"], "worker": {"replicas": 7}}}
    )
    assert kinds["alert threshold"] == changed(agent_service(), agent_service(alerts={"errorRate": 0.25}))
    assert kinds["image"] <= changed(agent_service(), agent_service(image="registry.example/agent-runtime:2.0"))
    assert operator.children()["Secret/demo-auth"]["data"]["token"] == token
    worker = operator.children()["Deployment/demo-worker"]
    assert worker["spec"]["replicas"] == 7


async def test_deleted_auth_secret_is_restored_by_the_resync_timer(operator: Operator) -> None:
    children = await ready_service(operator, agent_service())
    original = children["Secret/demo-auth"]
    async with aiohttp.ClientSession() as http:
        response = await http.delete(f"{operator.url}/api/v1/namespaces/default/secrets/demo-auth")
        assert response.status == 200
    assert "Secret/demo-auth" not in operator.children()
    restored = await eventually(lambda: operator.children().get("Secret/demo-auth"))
    assert set(restored["data"]) == {"token"}
    assert restored["metadata"]["uid"] != original["metadata"]["uid"]


async def test_hand_edited_child_is_restored(operator: Operator) -> None:
    children = await ready_service(operator, agent_service())
    image = children["Deployment/demo-api"]["spec"]["template"]["spec"]["containers"][0]["image"]
    edit = {"spec": {"replicas": 9, "template": {"spec": {"containers": [{"name": "api", "image": "evil:latest"}]}}}}
    async with aiohttp.ClientSession() as http:
        response = await http.patch(
            f"{operator.url}/apis/apps/v1/namespaces/default/deployments/demo-api",
            json=edit,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status == 200, await response.text()
        response = await http.patch(
            f"{operator.url}/api/v1/namespaces/default/configmaps/demo-config",
            json={"data": {"config.json": "{}"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status == 200
    api = operator.children()["Deployment/demo-api"]
    assert api["spec"]["replicas"] == 9

    def restored() -> bool:
        now = operator.children()
        container = now["Deployment/demo-api"]["spec"]["template"]["spec"]["containers"][0]
        return (
            container["image"] == image
            and now["Deployment/demo-api"]["spec"]["replicas"] == 2
            and now["ConfigMap/demo-config"]["data"] == children["ConfigMap/demo-config"]["data"]
        )

    await eventually(restored)
    mark = operator.cluster.request_count
    await operator.settle(passes=3)
    assert child_writes(operator.cluster.writes(mark)) == set()


async def test_restart_resumes_without_duplicates_or_writes(operator: Operator) -> None:
    await ready_service(operator, agent_service())
    await ready_service(operator, agent_service(name="other"))
    before = {key: obj["metadata"]["uid"] for key, obj in operator.children().items()}
    token = operator.children()["Secret/demo-auth"]["data"]["token"]
    await operator.halt()
    mark = operator.cluster.request_count
    await operator.start()
    await operator.settle(passes=4)
    assert operator.cluster.writes(mark) == []
    after = {key: obj["metadata"]["uid"] for key, obj in operator.children().items()}
    assert after == before
    assert len(operator.cluster.live_objects("apps/v1/deployments")) == 4
    assert operator.children()["Secret/demo-auth"]["data"]["token"] == token


def leftover(kind: str, name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    """A Deployment or Service labelled as the service's, as an earlier operator would have named it."""
    meta: dict[str, Any] = {"name": name, "namespace": "default", "labels": naming.instance_labels("demo")}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": models.API_VERSION, "kind": models.KIND, "name": "demo",
             "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        ]  # fmt: skip
    selector = {"matchLabels": naming.selector_labels("demo", naming.Component.WORKER)}
    if kind == "Deployment":
        template = {
            "metadata": {"labels": selector["matchLabels"]},
            "spec": {"containers": [{"name": "w", "image": "x"}]},
        }
        return {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": meta,
            "spec": {"selector": selector, "template": template},
        }
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": meta,
        "spec": {"selector": selector["matchLabels"], "ports": [{"port": 9}]},
    }


async def test_children_of_an_earlier_naming_rule_are_deleted_after_a_restart(operator: Operator) -> None:
    await ready_service(operator, agent_service())
    owner = operator.service()
    assert owner is not None
    before = {key: obj["metadata"]["uid"] for key, obj in operator.children().items()}
    await operator.halt()
    for plural, kind in (("apps/v1/deployments", "Deployment"), ("v1/services", "Service")):
        await operator.cluster.put_object(plural, leftover(kind, "demo-worker-by-an-older-rule", owner))
        await operator.cluster.put_object(plural, leftover(kind, "demo-worker-not-ours", None))
    await operator.start()
    await eventually(
        lambda: (
            not {"Deployment/demo-worker-by-an-older-rule", "Service/demo-worker-by-an-older-rule"}
            & operator.children().keys()
        ),
        timeout=15,
    )
    after = operator.children()
    assert {"Deployment/demo-worker-not-ours", "Service/demo-worker-not-ours"} <= after.keys()  # not ours: kept
    assert {k: v["metadata"]["uid"] for k, v in after.items() if "not-ours" not in k} == before


async def test_metrics_count_the_operators_writes(operator: Operator) -> None:
    mark = operator.cluster.request_count
    await ready_service(operator, agent_service())

    def ours() -> int:
        writes = operator.cluster.writes(mark)
        return len([r for r in writes if r.headers.get("User-Agent", "").startswith(naming.FIELD_MANAGER)])

    def counted() -> float:
        return sum(
            sample.value
            for metric in operator.metrics.registry.collect()
            if metric.name == "agentservice_operator_api_writes"
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    # The counter goes up as a write is sent, the cluster logs it when it arrives: read both until
    # they agree, since a write still in flight is in one and not yet in the other (a loaded run
    # read 16 counted against 15 arrived). A counter that misses or doubles writes never agrees.
    await eventually(lambda: counted() == ours() > 0)
    body = operator.metrics.exposition().decode()
    assert 'agentservice_operator_reconciles_total{result="ready"}' in body
    assert "agentservice_operator_reconcile_duration_seconds_count" in body


async def test_deleting_the_service_garbage_collects_its_children(operator: Operator) -> None:
    await ready_service(operator, agent_service())
    async with aiohttp.ClientSession() as http:
        path = f"/apis/{AGSVC.rsplit('/', 1)[0]}/namespaces/default/{models.PLURAL}/demo"
        response = await http.delete(operator.url + path)
        assert response.status == 200
    await eventually(lambda: operator.service() is None and not operator.children())
