"""The operator reads Secrets only inside the AgentService's namespace, whatever a spec names.

The models and the CRD refuse a hostile reference (tests/unit/operator/test_references.py); these tests
take the next fence: a hostile name that reached the client anyway. On the dev cluster, counting
the requests it serves:
- `Client.read_secret` and `secrets.missing` with `..`, `/`, `%2e%2e`, `%2f`,
  `../../kube-system/secrets/admin-creds`, ... make no request at all (the name is refused before
  one is built), and a valid name makes exactly one, inside the namespace;
- the answer is the same whether a Secret of that name exists in kube-system or not: no
  `SecretMissing` oracle about other namespaces;
- every other read and write path refuses such a name too, and the client never follows a
  redirect (a real HTTP server answering 301 towards kube-system gets exactly one request);
- the real operator, given an AgentService in team-a whose references climb out (as a cluster
  without the CRD's validation would store it), reports SpecInvalid and sends no request outside
  team-a.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import kopf
import pytest
from agent_operator import opmetrics
from agent_operator.kube import client as kube_client
from agent_operator.kube import secrets
from agentops_dev import devcluster

from tests.integration.operator.conftest import Operator, agent_service, eventually

HOSTILE = [
    "..",
    ".",
    "/",
    "%2e%2e",
    "%2E%2E",
    "%2f",
    "%2F",
    "..%2f..%2fkube-system%2fsecrets%2fadmin-creds",
    "../../kube-system/secrets/admin-creds",
    "../kube-system/secrets/admin-creds",
    "admin-creds/../../../kube-system/secrets/admin-creds",
    "admin-creds?namespace=kube-system",
    "admin-creds#",
    "",
]
TEAM = "team-a"


def secret(namespace: str, name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def client_for(url: str) -> kube_client.Client:
    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default")

    return kube_client.Client(login, opmetrics.create())


@pytest.fixture
async def served() -> AsyncIterator[tuple[devcluster.DevCluster, kube_client.Client]]:
    async with devcluster.running() as (cluster, url):
        await cluster.put_object("v1/secrets", secret(TEAM, "llm", key="sk-team-a"))
        client = client_for(url)
        try:
            yield cluster, client
        finally:
            await client.close()


def paths_since(cluster: devcluster.DevCluster, mark: int) -> list[str]:
    """The raw (undecoded) path of every request the cluster served since `mark`."""
    return [str(r.url.raw_path) for r in cluster._requests[mark:]]


async def test_a_hostile_name_never_becomes_a_request(served: tuple[devcluster.DevCluster, kube_client.Client]) -> None:
    cluster, client = served
    for name in HOSTILE:
        mark = cluster.request_count
        with pytest.raises(kube_client.InvalidName):
            await client.read_secret(TEAM, name)
        for kind, api_version in (("ConfigMap", "v1"), ("Deployment", "apps/v1")):
            with pytest.raises(kube_client.InvalidName):
                await client.get(api_version, kind, TEAM, name)
        with pytest.raises(kube_client.InvalidName):
            await client.delete("v1", "ConfigMap", TEAM, name, uid="u", resource_version="1")
        with pytest.raises(kube_client.InvalidName):
            await client.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": TEAM}})
        with pytest.raises(kube_client.InvalidName):
            await client.read_secret(name or "..", "llm")  # a hostile namespace, too
        assert paths_since(cluster, mark) == [], name


async def test_a_valid_name_reads_inside_the_namespace_only(
    served: tuple[devcluster.DevCluster, kube_client.Client],
) -> None:
    cluster, client = served
    mark = cluster.request_count
    live = await client.read_secret(TEAM, "llm")
    assert live is not None and live["metadata"]["namespace"] == TEAM
    assert paths_since(cluster, mark) == [f"/api/v1/namespaces/{TEAM}/secrets/llm"]
    with pytest.raises(TypeError):  # Secrets have one reader: the one that stays in the namespace
        await client.get("v1", "Secret", TEAM, "llm")


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
async def test_no_secret_missing_oracle_about_other_namespaces(
    served: tuple[devcluster.DevCluster, kube_client.Client], name: str
) -> None:
    cluster, client = served
    refs = [
        secrets.Reference(name, "token", "spec.model.providers[0].apiKeySecretRef"),
        secrets.Reference(name, "url", "spec.redis.urlSecretRef"),
        secrets.Reference(name, "token", "spec.env[0].secretKeyRef"),
        secrets.Reference("llm", "key", "spec.env[1].secretKeyRef"),
    ]
    mark = cluster.request_count
    without = await secrets.missing(client, TEAM, refs)
    await cluster.put_object("v1/secrets", secret("kube-system", "admin-creds", token="root", url="redis://x"))
    with_it = await secrets.missing(client, TEAM, refs)
    assert without == with_it  # the answer says nothing about kube-system
    assert len(without) == 3 and all("is not a valid object name" in line for line in without)
    # the one valid reference was read twice, in the namespace; the hostile ones never
    reads = [p for p in paths_since(cluster, mark) if "/secrets" in p]
    assert reads == [f"/api/v1/namespaces/{TEAM}/secrets/llm"] * 2


async def test_the_client_never_follows_a_redirect() -> None:
    """A server (or a proxy) answering 301 towards another namespace is not followed."""
    seen: list[str] = []

    async def redirect(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.raw_path)
        raise aiohttp.web.HTTPMovedPermanently("/api/v1/namespaces/kube-system/secrets/admin-creds")

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = client_for(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(kube_client.ApiError) as refused:
            await client.read_secret(TEAM, "llm")
        assert refused.value.status == 301
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == [f"/api/v1/namespaces/{TEAM}/secrets/llm"]


async def test_the_operator_stays_in_the_namespace_of_a_hostile_spec(operator: Operator) -> None:
    """An AgentService stored without the CRD's validation (the dev cluster has none): SpecInvalid."""
    await operator.cluster.put_object("v1/secrets", secret("kube-system", "admin-creds", token="root"))
    body = agent_service(
        namespace=TEAM,
        model={
            "providers": [
                {
                    "name": "primary",
                    "model": "m",
                    "apiKeySecretRef": {"name": "../../kube-system/secrets/admin-creds", "key": "token"},
                }
            ]
        },
        redis={"urlSecretRef": {"name": "%2e%2e", "key": "url"}},
        env=[{"name": "X", "secretKeyRef": {"name": "%2f", "key": "token"}}],
    )
    mark = operator.cluster.request_count
    await operator.put(body)
    invalid = await eventually(
        lambda: (c := operator.condition("SpecInvalid", namespace=TEAM)).get("status") == "True" and c
    )
    for field in ("providers[0].apiKeySecretRef.name", "redis.urlSecretRef.name", "env[0].secretKeyRef.name"):
        assert field in invalid["message"]
    assert operator.children(namespace=TEAM) == {}
    requests = operator.cluster._requests[mark:]
    assert not [r for r in requests if r.resource is not None and r.resource.plural == "secrets"]
    assert not [r for r in requests if r.namespace not in (None, TEAM) or "kube-system" in str(r.url)]
