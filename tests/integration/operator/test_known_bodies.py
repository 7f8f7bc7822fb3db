"""What the reconciler keeps of each AgentService for its loops, at the size 10,000 services need.

Covers: the kept copy of a body has no managedFields nor kopf's diff-base annotation (a second copy
of the spec), and once the watch brings the operator's own
status write back, its status is the one the reporter remembers writing (one object, not two); a
resync reconcile from that copy writes nothing; a status that differs (someone else's write) is
kept as a copy of its own, and changing the body afterwards does not change what is kept.
"""

from __future__ import annotations

import copy
import json

from agent_operator import opmetrics, reconcile
from agentops_dev import devcluster

from tests.integration.operator.conftest import AGSVC, agent_service, direct_client

MANAGED = [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]


async def test_kept_body_shares_the_written_status_and_drops_managed_fields(
    cluster: tuple[devcluster.DevCluster, str],
) -> None:
    emulator, url = cluster
    metrics = opmetrics.create()

    async with direct_client(url, metrics) as client:
        reconciler = reconcile.Reconciler(client, metrics)
        created = copy.deepcopy(await emulator.put_object(AGSVC, agent_service()))
        assert (await reconciler.reconcile(created)).status_written
        echo = copy.deepcopy(emulator.live(AGSVC, "default", "demo"))  # the watch event of our status write
        assert echo is not None
        echo["metadata"]["managedFields"] = MANAGED
        # kopf's diff base: the whole spec again, as JSON text (issue 27: never two copies of a spec)
        diffbase = {reconcile.DIFFBASE_ANNOTATION: json.dumps({"spec": echo["spec"]}), "team.example/keep": "1"}
        echo["metadata"]["annotations"] = {**echo["metadata"].get("annotations", {}), **diffbase}
        reconciler.observe(echo)
        uid = echo["metadata"]["uid"]

        kept = reconciler._known[uid]
        assert "managedFields" not in kept["metadata"]
        assert reconcile.DIFFBASE_ANNOTATION not in kept["metadata"]["annotations"]
        assert kept["metadata"]["annotations"]["team.example/keep"] == "1"
        assert kept["status"] == echo["status"]
        assert kept["status"] is reconciler._status.previous(uid, echo)  # one status object, not two
        mark = emulator.request_count
        assert not (await reconciler.reconcile(kept)).status_written  # the resync's reconcile: nothing to do
        assert emulator.writes(mark) == []

        foreign = copy.deepcopy(echo)
        foreign["status"]["phase"] = "Failed"  # not what the operator wrote
        reconciler.observe(foreign)
        kept = reconciler._known[uid]
        assert kept["status"] == foreign["status"]
        assert kept["status"] is not reconciler._status.previous(uid, foreign)
        foreign["status"]["phase"] = "Changed"
        foreign["spec"]["image"] = "changed"
        assert kept["status"]["phase"] == "Failed"  # a copy: the caller's body may change after
        assert kept["spec"].get("image") != "changed"
