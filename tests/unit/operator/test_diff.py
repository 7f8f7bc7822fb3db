"""Unit tests of the apply layer's pure core: quantities, drift, the applied hash, field ownership.

Covers:
- `quantity`: binary and decimal suffixes, exponents, signs; text Python's Decimal would take
  but Kubernetes would not (`NaN`, `1_000`, ` 1`, bare suffixes) is not a quantity;
- `drift`: desired ⊆ live (server defaults ignored), quantities equal by value in either
  direction (`0.5`/`500m`, `2`/"2"), booleans never equal to numbers, empty values equal to
  absent ones (`""` included: the API server drops omitempty strings such as `env[].value`),
  named lists matched by name (order, a missing item, extra items injected by others), other
  lists by position and length, type changes;
- `needs_write`: absent objects, the hash annotation noticing a field the operator stopped
  setting, a live object carrying everything (including server-side extras) needing no write;
- properties (hypothesis): any JSON value has no drift against itself or against a copy with
  extra keys; stamping is deterministic and any change of a leaf changes the hash;
- `owns_field`: managedFields of Apply operations only, by manager and path.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from agent_operator.kube import apply, diff
from hypothesis import given
from hypothesis import strategies as st


def stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    """A stamped copy of `manifest`."""
    return diff.stamp(copy.deepcopy(manifest))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("250m", Decimal("0.25")),
        ("1", Decimal(1)),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("1Ki", Decimal(1024)),
        ("1Gi", Decimal(2**30)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("2k", Decimal(2000)),
        ("1M", Decimal(10**6)),
        ("1E", Decimal(10**18)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("12e-3", Decimal("0.012")),
        ("-1", Decimal(-1)),
        ("+2k", Decimal(2000)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_quantity_reads_the_kubernetes_grammar(text: str, value: Decimal) -> None:
    assert diff.quantity(text) == value


@pytest.mark.parametrize("text", ["", "m", "Ki", "NaN", "Infinity", "1_000", " 1", "1 ", "1e", "1Kb", "0x10", "abc"])
def test_quantity_refuses_what_is_not_one(text: str) -> None:
    assert diff.quantity(text) is None


def test_drift_ignores_what_the_server_adds() -> None:
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "api", "image": "a:1"}]}}}}
    live = {
        "metadata": {"uid": "u", "resourceVersion": "7"},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {"spec": {"containers": [{"name": "api", "image": "a:1", "imagePullPolicy": "IfNotPresent"}]}},
        },
        "status": {"readyReplicas": 2},
    }
    assert diff.drift(desired, live) == []


def test_drift_names_each_differing_path() -> None:
    desired = {"spec": {"replicas": 2, "paused": False}, "data": {"a": "1", "b": "2"}}
    live = {"spec": {"replicas": 3}, "data": {"a": "1", "b": "x"}}
    assert diff.drift(desired, live) == [".spec.replicas", ".spec.paused", ".data.b"]


@pytest.mark.parametrize(
    ("desired", "live"),
    [("500m", "0.5"), ("0.5", "500m"), ("1Gi", "1024Mi"), ("2", 2), (2, "2"), ("1", 1.0), ("1000m", "1")],
)
def test_drift_compares_quantities_by_value_both_ways(desired: Any, live: Any) -> None:
    assert diff.drift({"cpu": desired}, {"cpu": live}) == []


@pytest.mark.parametrize(
    ("desired", "live"),
    [
        (True, 1),
        (False, 0),
        (1, True),
        ("true", True),
        ("1k", "1kb"),
        ("NaN", "NaN "),
        ("1_000", "1000"),
        ("a", "b"),
        (1, 2),
        ("1", None),
    ],
)
def test_drift_sees_different_scalars(desired: Any, live: Any) -> None:
    assert diff.drift({"x": desired}, {"x": live}) == [".x"]


@pytest.mark.parametrize("empty", [None, {}, [], ""])
def test_empty_desired_values_equal_absent_ones(empty: Any) -> None:
    # A real API server drops empty maps, lists and omitempty strings (EnvVar.value == "")
    # from its answers: comparing them to "absent" must not start a write on every pass.
    assert diff.drift({"value": empty, "name": "X"}, {"name": "X"}) == []
    assert diff.drift({"env": [{"name": "X", "value": empty}]}, {"env": [{"name": "X"}]}) == []


def test_empty_map_against_a_null_or_a_scalar() -> None:
    assert diff.drift({"labels": {}}, {"labels": None}) == []
    assert diff.drift({"labels": {"a": "b"}}, {"labels": None}) == [".labels"]
    assert diff.drift({"labels": {}}, {"labels": "x"}) == [".labels"]


def test_named_lists_match_by_name_and_keep_order() -> None:
    desired = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    assert diff.drift(desired, {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}) == []
    # Another manager (a mutating webhook, a sidecar injector) may add items: not a difference.
    injected = {"env": [{"name": "A", "value": "1"}, {"name": "ISTIO", "value": "x"}, {"name": "B", "value": "2"}]}
    assert diff.drift(desired, injected) == []
    edited = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]}
    assert diff.drift(desired, edited) == [".env[B].value"]
    assert diff.drift(desired, {"env": [{"name": "A", "value": "1"}]}) == [".env"]  # B missing
    assert diff.drift(desired, {"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]}) == [".env"]


def test_ports_match_by_their_key_when_unnamed() -> None:
    desired = {"ports": [{"containerPort": 8000}, {"containerPort": 9090}]}
    assert diff.drift(desired, {"ports": [{"containerPort": 8000, "protocol": "TCP"}, {"containerPort": 9090}]}) == []
    assert diff.drift(desired, {"ports": [{"containerPort": 8000}]}) == [".ports"]


def test_items_that_share_a_name_compare_by_position() -> None:
    """A TriggerAuthentication names one Secret per parameter: not a list keyed by name."""
    refs = [
        {"parameter": "address", "name": "redis-credentials", "key": "address"},
        {"parameter": "password", "name": "redis-credentials", "key": "password"},
    ]
    assert diff.drift({"secretTargetRef": refs}, {"secretTargetRef": [dict(r) for r in refs]}) == []
    swapped = [refs[0] | {"key": "host"}, refs[1]]
    assert diff.drift({"secretTargetRef": refs}, {"secretTargetRef": swapped}) == [".secretTargetRef[0].key"]
    assert diff.drift({"secretTargetRef": refs}, {"secretTargetRef": refs[:1]}) == [".secretTargetRef"]


def test_other_lists_compare_by_position_and_length() -> None:
    assert diff.drift({"args": ["a", "b"]}, {"args": ["a", "b"]}) == []
    assert diff.drift({"args": ["a", "b"]}, {"args": ["b", "a"]}) == [".args[0]", ".args[1]"]
    assert diff.drift({"args": ["a"]}, {"args": ["a", "b"]}) == [".args"]
    assert diff.drift({"args": ["a"]}, {"args": "a"}) == [".args"]
    assert diff.drift({"args": []}, {}) == []


def test_needs_write_when_absent_or_different() -> None:
    desired = stamped({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}})
    assert diff.needs_write(desired, None) == ["absent"]
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="u", resourceVersion="3", creationTimestamp="2026-01-01T00:00:00Z")
    assert diff.needs_write(desired, live) == []
    live["data"]["k"] = "edited"
    assert diff.needs_write(desired, live) == [".data.k"]


def test_the_hash_notices_a_field_the_operator_stopped_setting() -> None:
    before = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}
    after = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    live = stamped(before)
    # desired ⊆ live still holds for the smaller manifest; only the hash tells them apart.
    assert diff.drift({"data": after["data"]}, live) == []
    assert diff.needs_write(stamped(after), live) == [f".metadata.annotations.{diff.APPLIED_HASH_ANNOTATION}"]


def test_stamped_copies_and_does_not_hash_its_own_stamp() -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    stamp = stamped(manifest)
    assert "annotations" not in manifest["metadata"]  # the input is untouched
    assert stamped(stamp) == stamp  # re-stamping a stamped manifest is stable
    assert stamp["metadata"]["annotations"][diff.APPLIED_HASH_ANNOTATION] == diff.manifest_hash(manifest)


def test_adopt_owns_and_stamps_private_copies() -> None:
    owner = {
        "apiVersion": "agentops.dev/v1alpha1",
        "kind": "AgentService",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "uid-1"},
    }
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-config", "namespace": "ns"}}
    (adopted,) = apply.adopt([child], owner)
    assert child == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-config", "namespace": "ns"}}
    assert adopted["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert adopted["metadata"]["ownerReferences"][0]["controller"] is True
    unstamped = copy.deepcopy(adopted)
    del unstamped["metadata"]["annotations"]
    assert adopted == stamped(unstamped)  # the hash covers the ownerReference too


KEYS = st.text("xyz", min_size=1, max_size=2)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text("ab1m", max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)


@given(JSON)
def test_nothing_drifts_from_itself(value: Any) -> None:
    assert diff.drift(value, copy.deepcopy(value)) == []


@given(st.dictionaries(st.text("xyz", min_size=1, max_size=2), JSON, max_size=4), JSON)
def test_extra_live_keys_are_not_drift(desired: dict[str, Any], extra: Any) -> None:
    live = {**copy.deepcopy(desired), "serverSide": extra}
    assert diff.drift(desired, live) == []


@given(st.dictionaries(st.text("xyz", min_size=1, max_size=2), st.text("ab", min_size=1, max_size=3), min_size=1))
def test_stamping_is_deterministic_and_sensitive(data: dict[str, str]) -> None:
    manifest: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data}
    assert stamped(manifest) == stamped(copy.deepcopy(manifest))
    first = next(iter(data))
    changed = copy.deepcopy(manifest)
    changed["data"][first] = data[first] + "!"
    assert diff.manifest_hash(changed) != diff.manifest_hash(manifest)
    assert diff.needs_write(stamped(changed), stamped(manifest)) != []


def test_owns_field_reads_apply_entries_by_manager_and_path() -> None:
    live = {
        "metadata": {
            "managedFields": [
                {"manager": "agentservice-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:paused": {}}}},
            ]
        }
    }
    assert diff.owns_field(live, "agentservice-operator", "spec", "replicas")
    assert diff.owns_field(live, "agentservice-operator", "spec")
    assert not diff.owns_field(live, "agentservice-operator", "spec", "paused")
    assert not diff.owns_field(live, "kubectl", "spec", "paused")  # an Update, not an Apply
    assert not diff.owns_field({"metadata": {}}, "agentservice-operator", "spec")
