"""The dev cluster answers API errors as the API server does, and keeps nothing of them.

Covers: a GET of an absent object, a create of an existing one and a DELETE of an absent one are
answered with a Status (code, reason, message) and no traceback; none is kept as an emulator fault
(kmock keeps every exception it renders, frames included, until it stops: 130,000 404s at a burst
of 10,000 services).
"""

from __future__ import annotations

from typing import Any

import aiohttp
from agentops_dev import devcluster

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}}


async def test_api_errors_are_statuses_and_are_not_kept(cluster: tuple[devcluster.DevCluster, str]) -> None:
    emulator, url = cluster
    path = f"{url}/api/v1/namespaces/default/configmaps"
    answers: list[tuple[int, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as session:
        for method, target, body in (
            ("GET", f"{path}/a", None),
            ("POST", path, CONFIGMAP),
            ("POST", path, CONFIGMAP),
            ("DELETE", f"{path}/b", None),
        ):
            async with session.request(method, target, json=body) as response:
                answers.append((response.status, await response.json()))
    assert [status for status, _ in answers] == [404, 201, 409, 404]
    for status, payload in (answers[0], answers[2], answers[3]):
        assert payload["kind"] == "Status" and payload["code"] == status and payload["message"]
        assert "traceback" not in payload["details"]
    assert emulator.errors == []
