"""A Secret that goes missing for a running service holds its runtime config too.

Covers: a running, Ready service whose spec gains a provider with a missing key Secret gets
SecretMissing; its Deployments *and* its mounted runtime ConfigMap are left exactly as they
were (a new config naming the keyless provider would crash the running pods at their next
restart); once the Secret exists, the new config rolls out.
"""

from __future__ import annotations

import base64
import copy
import json

from tests.integration.operator.conftest import Operator, agent_service, eventually, ready_service


async def test_missing_secret_holds_the_mounted_config(operator: Operator) -> None:
    body = agent_service()
    await ready_service(operator, body)
    config_before = copy.deepcopy(operator.children()["ConfigMap/demo-config"]["data"])

    changed = copy.deepcopy(body)
    changed["spec"]["model"]["providers"].append(
        {"name": "backup", "model": "m2", "apiKeySecretRef": {"name": "backup-key", "key": "k"}}
    )
    mark = operator.cluster.request_count
    await operator.put(changed)
    await eventually(lambda: operator.condition("SecretMissing").get("status") == "True")
    await operator.settle(passes=3)
    written = {f"{r.resource.plural}/{r.name}" for r in operator.cluster.writes(mark) if r.resource is not None}
    assert "configmaps/demo-config" not in written
    assert not any(w.startswith("deployments/") for w in written)
    assert operator.children()["ConfigMap/demo-config"]["data"] == config_before

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "backup-key", "namespace": "default"},
        "data": {"k": base64.b64encode(b"key").decode()},
    }
    await operator.cluster.put_object("v1/secrets", secret)
    await eventually(lambda: operator.condition("SecretMissing").get("status") == "False")

    def backup_configured() -> bool:
        config = json.loads(operator.children()["ConfigMap/demo-config"]["data"]["config.json"])
        return any(p["name"] == "backup" for p in config["providers"])

    await eventually(backup_configured)
