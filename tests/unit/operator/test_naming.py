"""Unit tests of `agent_operator.manifests.naming`: child names of AgentServices up to 63 characters.

Covers:
- `fit`: a name that fits is `<base>-<suffix>` unchanged; a longer one is `<base cut>-<hash>-<suffix>`
  of exactly its limit (one shorter when the cut ends in '-'), the hash being sha256 of the whole
  name; pinned values, so that a change of the rule (which would orphan every long-named child)
  fails here; no room for the suffix is refused;
- stability (the same input, the same name) and uniqueness (names sharing everything but their
  last characters, and every child of one service, stay distinct);
- limits, for every name length 1..63 and a hypothesis property over DNS-1035 names: Services and
  everything else within 63 characters and DNS-1035 labels, Deployments within 46 so that a pod
  name `<deployment>-<pod-template-hash>-<5 random>` keeps its ReplicaSet's name whole;
- the Grafana dashboard uid within 40 characters and distinct for two services whose
  `agsvc-<namespace>-<name>` share the first 40 characters (the old cut made them one dashboard).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from agent_operator.api import models
from agent_operator.manifests import naming
from hypothesis import given
from hypothesis import strategies as st

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# What the apiserver does to a Deployment's pod names (k8s.io/kubernetes pkg/controller/deployment
# and apiserver's names.SimpleNameGenerator): `<deployment>-<hash, <= 10>-` cut to 58, then 5 random.
POD_TEMPLATE_HASH_MAX = 10
GENERATE_NAME_BASE_MAX = 58

# Every name function: its kind's limit and the suffix it keeps.
NAMED: dict[str, tuple[Callable[[str], str], int, str]] = {
    "Deployment api": (lambda s: naming.deployment_name(s, naming.Component.API), 46, "api"),
    "Deployment worker": (lambda s: naming.deployment_name(s, naming.Component.WORKER), 46, "worker"),
    "Deployment api-canary": (
        lambda s: naming.deployment_name(s, naming.Component.API, naming.Track.CANARY),
        46,
        "api-canary",
    ),
    "Deployment worker-canary": (
        lambda s: naming.deployment_name(s, naming.Component.WORKER, naming.Track.CANARY),
        46,
        "worker-canary",
    ),
    "Service api": (naming.api_service_name, 63, "api"),
    "ConfigMap config": (naming.config_map_name, 63, "config"),
    "ConfigMap config-canary": (lambda s: naming.config_map_name(s, naming.Track.CANARY), 63, "config-canary"),
    "Secret auth": (naming.auth_secret_name, 63, "auth"),
    "ConfigMap dashboard": (naming.dashboard_name, 63, "dashboard"),
    "PrometheusRule": (naming.prometheus_rule_name, 63, "alerts"),
    "ServiceMonitor": (naming.service_monitor_name, 63, "runtime"),
    "NetworkPolicy": (naming.network_policy_name, 63, "ingress"),
}
SERVICE_NAMES = st.from_regex(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def test_a_name_that_fits_is_left_alone() -> None:
    assert naming.fit("demo", "api") == "demo-api"
    assert naming.deployment_name("demo", naming.Component.WORKER, naming.Track.CANARY) == "demo-worker-canary"
    assert naming.fit("a" * 59, "api") == "a" * 59 + "-api"  # exactly 63
    assert naming.deployment_name("a" * 42, naming.Component.API) == "a" * 42 + "-api"  # exactly 46
    assert naming.dashboard_uid("default", "support-agent") == "agsvc-default_support-agent"


def test_a_long_name_is_cut_and_hashed_keeping_its_suffix() -> None:
    service = "a" * 60
    name = naming.fit(service, "api")
    digest = hashlib.sha256(f"{service}-api".encode()).hexdigest()[:10]
    assert name == "a" * 48 + f"-{digest}-api" and len(name) == 63
    # A cut that ends in '-' drops it: the name stays a DNS label, one character short.
    cut = naming.fit("ab-" * 21, "config")
    assert len(cut) == 62 and "--" not in cut and DNS_1035.match(cut), cut


def test_pinned_names() -> None:
    """The rule itself: changing it renames every long-named child (the old ones are orphaned)."""
    longest = "a-name-of-sixty-three-characters-exactly-the-most-a-service-has"
    assert len(longest) == 63
    assert naming.deployment_name(longest, naming.Component.API) == "a-name-of-sixty-three-character-f8b99132bc-api"
    assert naming.api_service_name(longest) == "a-name-of-sixty-three-characters-exactly-the-mos-f8b99132bc-api"
    assert naming.dashboard_uid("default", longest) == "agsvc-default_a-name-of-sixty-fb82a9a06d"


def test_the_same_input_gives_the_same_name() -> None:
    for function, _, _ in NAMED.values():
        assert function("x" * 63) == function("x" * 63)


def test_names_sharing_a_long_prefix_stay_distinct() -> None:
    services = [f"{'p' * 60}-{n:02d}" for n in range(100)]  # 63 characters, alike but for the last two
    for what, (function, _, _) in NAMED.items():
        names = {function(s) for s in services}
        assert len(names) == len(services), what


def test_the_children_of_one_service_have_distinct_names_per_kind() -> None:
    for length in (4, 42, 43, 50, 59, 60, 63):
        service = "s" * length
        deployments = [f(service) for what, (f, _, _) in NAMED.items() if what.startswith("Deployment")]
        config_maps = [f(service) for what, (f, _, _) in NAMED.items() if what.startswith("ConfigMap")]
        assert len(set(deployments)) == 4 and len(set(config_maps)) == 3, length


@pytest.mark.parametrize("length", range(1, models.SERVICE_NAME_MAX_LENGTH + 1))
def test_every_length_fits_its_kind(length: int) -> None:
    service = ("agent-" * 11)[: length - 1] + "z"  # '-' at many cut positions
    assert DNS_1035.match(service)
    for what, (function, limit, suffix) in NAMED.items():
        name = function(service)
        assert len(name) <= limit and DNS_1035.match(name), (what, name)
        assert name.startswith(service[: min(length, 10)].rstrip("-")) and name.endswith(f"-{suffix}"), (what, name)


@given(SERVICE_NAMES)
def test_any_valid_service_name_gives_valid_child_names(service: str) -> None:
    for what, (function, limit, suffix) in NAMED.items():
        name = function(service)
        assert len(name) <= limit and DNS_1035.match(name) and name.endswith(f"-{suffix}"), (what, name)


def test_deployment_pod_names_keep_their_replica_set_name() -> None:
    deployment = naming.deployment_name("z" * 63, naming.Component.WORKER, naming.Track.CANARY)
    pod_base = f"{deployment}-{'9' * POD_TEMPLATE_HASH_MAX}-"
    assert len(pod_base) <= GENERATE_NAME_BASE_MAX, pod_base


def test_dashboard_uids_within_40_and_distinct() -> None:
    first = naming.dashboard_uid("team-payments", "support-agent-europe-1")
    second = naming.dashboard_uid("team-payments", "support-agent-europe-2")
    assert len(first) <= 40 and len(second) <= 40 and first != second
    assert re.fullmatch(r"[-_a-z0-9]+", first)  # what Grafana accepts in a uid


def test_dashboard_uids_of_different_namespaces_never_collide() -> None:
    """Issue 27: `team-a/x` and `team/a-x` were both `agsvc-team-a-x`; one tenant's dashboard replaced the other's."""
    assert naming.dashboard_uid("team-a", "x") != naming.dashboard_uid("team", "a-x")
    long_ns, long_name = "n" * 30, "s" * 40  # both past the 40 characters: the hash takes the whole pair
    assert naming.dashboard_uid(long_ns + "-a", long_name) != naming.dashboard_uid(long_ns, "a-" + long_name)


def test_no_room_for_the_suffix_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        naming.fit("service", "a-suffix-longer-than-the-limit", limit=20)
