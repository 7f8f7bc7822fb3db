"""Least-privilege RBAC for the operator, derived from the code rather than kept by hand.

Where each rule comes from:
- the children: every kind that `builders.build_children` emits for specs that switch on every
  optional child (both autoscaling engines, the Redis URL literal or in a Secret: KEDA's
  TriggerAuthentication, PDBs, NetworkPolicy, alerts), with the verbs the apply layer uses on a
  child: `get` to compare with the live object, `create` and `patch` for server-side apply (which
  creates an absent object); `list` and `delete` for the kinds `kube.prune.prune` removes
  (`prune.PRUNABLE`, and `prune.RENAMEABLE` under a name the naming rule no longer gives);
  `delete` for the canary track's objects;
  `list` and `watch` for the kinds `kube.watch` follows (`watch.WATCHED`: every child kind but
  Secrets, which RBAC cannot narrow by label);
- referenced Secrets are read (`get`) by `secrets.py`; Events are posted (`create`);
- evaluation gates (`canary/rollouts.py`): Jobs are applied (`create`, `get`, `patch`) and the
  finished ones' Pods listed (`list`) for their termination message;
- the AgentService itself: kopf lists and watches it and keeps its bookkeeping in annotations
  (`patch`); the operator writes its status subresource (`patch`) and never reads single objects;
- cluster scope: kopf watches CustomResourceDefinitions;
- with peering (`--peering`, several replicas): kopf lists and watches its peering object and
  patches its own keep-alive into it (and removes dead peers from it): `clusterPeering`, granted
  with the cluster-wide rules, or `namespacedPeering`, granted in each watched namespace. A single
  replica runs standalone and is granted neither.

`agentctl rbac` prints this document; the Helm chart grants exactly it (a test compares the
rendered chart with it), and an audit test replays the operator against the dev cluster and
checks that every request it makes is granted here.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from agent_operator.api import models
from agent_operator.kube import client, prune, watch
from agent_operator.manifests import builders

CHILD_VERBS = ("create", "get", "patch")
PRUNE_VERBS = ("delete", "list")
WATCH_VERBS = ("list", "watch")
# The canary track's objects (`builders.Desired.canary`) exist only during a rollout and are
# deleted at promotion or rollback.
CANARY_KINDS = (("apps/v1", "Deployment"), ("v1", "ConfigMap"))
AGENTSERVICE_VERBS = ("list", "patch", "watch")
# kopf's peering: the observer lists and watches the object; keep-alives and clean-ups patch it.
PEERING_GROUP = "kopf.dev"
PEERING_VERBS = ("list", "patch", "watch")

_BASE_SPEC: dict[str, Any] = {
    "model": {"providers": [{"name": "p", "model": "m", "apiKeySecretRef": {"name": "k", "key": "k"}}]},
    "redis": {"url": "redis://redis:6379/0"},
    "networkPolicy": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "alerts": {"enabled": True},
}


# A literal URL, and one in a Secret (with engine keda: KEDA's TriggerAuthentication).
_REDIS: tuple[dict[str, Any], ...] = (
    {"url": "redis://redis:6379/0"},
    {"urlSecretRef": {"name": "redis", "key": "url"}},
)


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _specs_with_every_child() -> list[models.AgentService]:
    services = []
    for engine, canary, redis in itertools.product(models.AutoscalingEngine, (False, True), _REDIS):
        spec = {**_BASE_SPEC, "autoscaling": {"engine": engine.value, "minReplicas": 1}, "canary": {"enabled": canary}}
        spec["redis"] = redis
        manifest = {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": "x"}, "spec": spec}
        services.append(models.AgentService.model_validate(manifest))
    return services


def child_kinds() -> set[tuple[str, str]]:
    """(apiVersion, kind) of everything the builders can emit."""
    return {
        (child["apiVersion"], child["kind"])
        for svc in _specs_with_every_child()
        for child in builders.build_children(svc)
    }


def _namespaced_grants() -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = defaultdict(set)
    for api_version, kind in child_kinds():
        grants[(_group(api_version), client.PLURALS[(api_version, kind)])].update(CHILD_VERBS)
    for api_version, kind in prune.LISTED:
        grants[(_group(api_version), client.PLURALS[(api_version, kind)])].update(PRUNE_VERBS)
    for watched in watch.WATCHED:
        grants[(_group(watched.api_version), client.PLURALS[(watched.api_version, watched.kind)])].update(WATCH_VERBS)
    for api_version, kind in CANARY_KINDS:
        grants[(_group(api_version), client.PLURALS[(api_version, kind)])].add("delete")
    grants[("", "secrets")].add("get")
    grants[("", "events")].add("create")
    grants[("batch", "jobs")].update(CHILD_VERBS)
    grants[("", "pods")].add("list")
    grants[(models.GROUP, models.PLURAL)].update(AGENTSERVICE_VERBS)
    grants[(models.GROUP, f"{models.PLURAL}/status")].add("patch")
    return grants


def _rules(grants: dict[tuple[str, str], set[str]]) -> list[dict[str, Any]]:
    """One rule per (group, verb set), resources sorted: stable output for diffs and tests."""
    by_verbs: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for (group, resource), verbs in grants.items():
        by_verbs[(group, tuple(sorted(verbs)))].append(resource)
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
        for (group, verbs), resources in sorted(by_verbs.items())
    ]


def rules_document() -> dict[str, list[dict[str, Any]]]:
    """`cluster`: cluster-scoped needs; `namespaced`: granted cluster-wide or per watched namespace;
    `clusterPeering` and `namespacedPeering`: the same two scopes, granted only with peering."""
    # kopf watches CRDs to learn its resources; it watches namespaces only for glob patterns,
    # which `agentctl operator` never passes (exact names or cluster-wide).
    cluster = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    return {
        "cluster": _rules(cluster),
        "namespaced": _rules(_namespaced_grants()),
        "clusterPeering": _rules({(PEERING_GROUP, "clusterkopfpeerings"): set(PEERING_VERBS)}),
        "namespacedPeering": _rules({(PEERING_GROUP, "kopfpeerings"): set(PEERING_VERBS)}),
    }


def allows(document: dict[str, list[dict[str, Any]]], group: str, resource: str, verb: str) -> bool:
    """Whether some rule of the document grants `verb` on `group/resource`."""
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rules in document.values()
        for rule in rules
    )
