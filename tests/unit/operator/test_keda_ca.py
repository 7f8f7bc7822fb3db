"""Engine keda with a private CA (`redis.tls.caSecretRef`): the CA reaches KEDA's TriggerAuthentication.

Covers: with a literal URL or a urlSecretRef, TLS on and a CA Secret, the ScaledObject's trigger
names a TriggerAuthentication whose `secretTargetRef` carries KEDA's `ca` parameter from that
Secret key (KEDA reads it itself; the operator never copies it), valid against KEDA's CRD schema;
no `ca` without TLS or without a CA; the operator's missing-Secret check lists the CA once.
"""

from __future__ import annotations

from typing import Any

from agent_operator.api import models
from agent_operator.kube import secrets
from agent_operator.manifests import builders

from tests.unit.operator.test_kubernetes_schemas import assert_valid

CA = {"name": "redis-ca", "key": "ca.crt"}


def svc(redis: dict[str, Any]) -> models.AgentService:
    return models.AgentService.model_validate(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": "demo", "namespace": "t"},
            "spec": {
                "model": {
                    "providers": [{"name": "p", "kind": "openai-compatible", "model": "m", "baseURL": "http://m"}]
                },
                "redis": redis,
                "autoscaling": {"engine": "keda", "minReplicas": 0},
            },
        }
    )


def keda_objects(service: models.AgentService) -> tuple[dict[str, Any], dict[str, Any] | None]:
    children = builders.build_children(service)
    scaled = next(c for c in children if c["kind"] == "ScaledObject")
    auth = next((c for c in children if c["kind"] == "TriggerAuthentication"), None)
    return scaled, auth


def test_literal_url_with_a_ca_gets_a_trigger_authentication() -> None:
    scaled, auth = keda_objects(svc({"url": "rediss://redis.t.svc:6380/0", "tls": {"caSecretRef": CA}}))
    assert auth is not None
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "ca", **CA}]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert_valid([scaled, auth])


def test_url_secret_with_a_ca_adds_it_beside_the_address() -> None:
    _, auth = keda_objects(svc({"urlSecretRef": {"name": "r", "key": "url"}, "tls": {"caSecretRef": CA}}))
    assert auth is not None
    parameters = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert parameters == {"address": ("r", "address"), "password": ("r", "password"), "ca": ("redis-ca", "ca.crt")}


def test_no_ca_without_tls_or_without_a_ca() -> None:
    _, auth = keda_objects(svc({"url": "redis://redis.t.svc:6379/0", "tls": {"enabled": False, "caSecretRef": CA}}))
    assert auth is None
    _, auth = keda_objects(svc({"url": "rediss://redis.t.svc:6380/0"}))
    assert auth is None


def test_the_ca_is_checked_once() -> None:
    service = svc({"url": "rediss://redis.t.svc:6380/0", "tls": {"caSecretRef": CA}})
    refs = secrets.references(service.spec)
    assert [r for r in refs if r.name == "redis-ca"] == [
        secrets.Reference("redis-ca", "ca.crt", "spec.redis.tls.caSecretRef")
    ]
