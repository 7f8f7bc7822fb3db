"""The evaluation Job of one suite at one gate, and the candidate's queue lane. Pure.

The Job runs the runtime image as the candidate's worker does (its pod template: image, env,
Secrets, the canary ConfigMap, security context), with `agent-runtime eval --in-process-api`: the
task API is served inside the Job's own process on the candidate's configuration, writing to the
candidate's lane of the queue (`AGENT_QUEUE_LANE`), which only the candidate's workers read. No
Service, no user-facing API pod, and so no user task, is involved. The suite comes from the spec
(`inline`, as an environment variable) or from the tenant's ConfigMap in the same namespace (a
volume: a pod can mount nothing from another namespace). The summary comes back as the
container's termination message; `backoffLimit: 0` (a run is not retried behind the gate's back)
and `activeDeadlineSeconds` (a Job past it is inconclusive).
"""

from __future__ import annotations

import copy
from typing import Any, Final

from agent_operator.api import models
from agent_operator.manifests import naming

from agent_runtime import constants

COMPONENT: Final = "evaluation"
SUITE_LABEL: Final = "agentops.dev/evaluation-suite"
GATE_ANNOTATION: Final = "agentops.dev/evaluation-gate"
REVISION_ANNOTATION: Final = "agentops.dev/evaluation-revision"
SUITE_ENV: Final = "AGENT_EVAL_SUITE"
SUITE_VOLUME: Final = "evaluation-suite"
SUITE_DIR: Final = "/etc/agent-evaluation"
TERMINATION_LOG: Final = "/dev/termination-log"
TTL_SECONDS: Final = 86_400  # a finished Job stays a day for `kubectl logs`; its result is in the status by then


def lane(revision: str) -> str:
    """The queue lane of a candidate revision (its workers read it while the `before` gate stands)."""
    return f"eval-{revision}"


def gate_tag(gate: str) -> str:
    """A gate as a name part: `before`, `step-50`."""
    return gate.replace(":", "-")


def job_name(service: str, suite: str, gate: str, revision: str) -> str:
    """`<svc>-eval-<suite>-<gate>-<revision>`, shortened with a hash past 63 characters (the job-name label)."""
    return naming.fit(f"{service}-eval-{suite}-{gate_tag(gate)}", revision)


def build_job(
    svc: models.AgentService,
    source: models.EvaluationSuiteSource,
    *,
    gate: str,
    revision: str,
    worker_template: dict[str, Any],
) -> dict[str, Any]:
    """The Job running `source` against the candidate whose worker pod template is `worker_template`."""
    name = svc.metadata.name
    template = copy.deepcopy(worker_template)
    pod = template["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe", "ports"):
        container.pop(probe, None)
    args = ["eval", "--in-process-api", "-o", "json", "--termination-log", TERMINATION_LOG]
    env = [e for e in container.get("env", []) if e.get("name") not in (constants.QUEUE_LANE_ENV, SUITE_ENV)]
    env.append({"name": constants.QUEUE_LANE_ENV, "value": lane(revision)})
    if source.inline is not None:
        env.append({"name": SUITE_ENV, "value": source.inline})
        args += ["--suite-env", SUITE_ENV]
    else:
        assert source.config_map_ref is not None  # the model: exactly one source
        ref = source.config_map_ref
        pod["volumes"].append(
            {"name": SUITE_VOLUME, "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": "suite.yaml"}]}}
        )
        container["volumeMounts"].append({"name": SUITE_VOLUME, "mountPath": SUITE_DIR, "readOnly": True})
        args += ["--suite", f"{SUITE_DIR}/suite.yaml"]
    container.update(
        name=COMPONENT,
        args=args,
        env=env,
        terminationMessagePath=TERMINATION_LOG,
        terminationMessagePolicy="File",
    )
    pod["restartPolicy"] = "Never"
    labels = {
        **naming.standard_labels(name, COMPONENT, template["metadata"]["labels"].get("app.kubernetes.io/version", "")),
        SUITE_LABEL: source.name,
    }
    template["metadata"]["labels"] = labels
    annotations = {GATE_ANNOTATION: gate, REVISION_ANNOTATION: revision}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, source.name, gate, revision),
            "namespace": svc.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": source.timeout_seconds,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": template,
        },
    }
