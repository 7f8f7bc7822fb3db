"""Comparing a desired manifest with its live object: what must be written, and why. Pure.

Each child is compared with its live object on the fields the operator owns and written only on
a difference, so a reconcile with nothing changed makes zero write calls:
- every field of the desired manifest must be present and equal in the live object (defaults
  the API server adds are ignored; quantities compare by value, `1000m` == `1`; empty maps and
  lists equal absent ones, which the server drops);
- lists of named items (containers, env, ports, volumes) match by name, other lists (and lists
  whose items share a name) by position and length;
- the hash of the whole desired manifest rides along as an annotation, so a field the operator
  stops setting (an env var, a label) is noticed although "desired ⊆ live" still holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

APPLIED_HASH_ANNOTATION: Final = "agentops.dev/applied-hash"
NAMED_LIST_KEYS: Final = ("name", "containerPort", "port")

_SUFFIXES: Final = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


# The quantity grammar of k8s.io/apimachinery (resource.Quantity): a signed decimal number with
# a binary suffix, a decimal suffix or a decimal exponent. Anything else (`NaN`, `1_000`, ` 1`,
# all of which Python's Decimal would accept) is not a quantity and compares as plain text.
_QUANTITY: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?")


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity (`250m`, `1Gi`, `1e3`), or None if it is not one."""
    if not _QUANTITY.fullmatch(text):
        return None
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)]:
            return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the grammar admits only decimals
        return None


def _empty(value: Any) -> bool:
    """A value the API server drops from its answer: null, `{}`, `[]`, and `""` (omitempty)."""
    return value is None or value in ({}, [], "")


def _same_scalar(desired: Any, live: Any) -> bool:
    """Equal, or the same quantity in two spellings (`0.5` and `500m`; `2` and "2")."""
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live  # True == 1 in Python, not in an API object
    if isinstance(desired, str | int | float) and isinstance(live, str | int | float):
        if isinstance(desired, str) or isinstance(live, str):
            a, b = quantity(str(desired)), quantity(str(live))
            return a is not None and a == b
        return bool(desired == live)
    return bool(desired == live)


def _list_key(items: Sequence[Any]) -> str | None:
    """The merge key of a list of named items, if every item has it and no two items share it.

    Items that share a `name` are not a named list (a TriggerAuthentication's `secretTargetRef`
    names the same Secret once per parameter): they compare by position.
    """
    if not items or not all(isinstance(i, Mapping) for i in items):
        return None
    for key in NAMED_LIST_KEYS:
        if all(key in i for i in items):
            values = [json.dumps(i[key], sort_keys=True) for i in items]
            if len(set(values)) == len(values):
                return key
    return None


def drift(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths where `live` does not carry what `desired` says (empty: nothing to write)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [path or "."] if not (_empty(desired) and live is None) else []
        found: list[str] = []
        for key, value in desired.items():
            if key not in live:
                if not _empty(value):
                    found.append(f"{path}.{key}")
                continue
            found.extend(drift(value, live[key], f"{path}.{key}"))
        return found
    if isinstance(desired, list):
        return _list_drift(desired, live, path)
    return [] if _same_scalar(desired, live) else [path]


def _list_drift(desired: list[Any], live: Any, path: str) -> list[str]:
    if not isinstance(live, list):
        return [] if (not desired and live is None) else [path]
    key = _list_key(desired)
    if key is not None and _list_key(live) == key:
        by_key = {item[key]: item for item in live}
        wanted = {item[key] for item in desired}
        if [i[key] for i in desired] != [i[key] for i in live if i[key] in wanted]:
            return [path]  # an item is missing or the order changed
        return [p for item in desired for p in drift(item, by_key[item[key]], f"{path}[{item[key]}]")]
    if len(desired) != len(live):
        return [path]
    return [p for i, (d, v) in enumerate(zip(desired, live, strict=True)) for p in drift(d, v, f"{path}[{i}]")]


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """A short, stable fingerprint of a desired manifest (without the fingerprint itself)."""
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    if APPLIED_HASH_ANNOTATION in annotations:
        meta = dict(manifest["metadata"])
        rest = {k: v for k, v in annotations.items() if k != APPLIED_HASH_ANNOTATION}
        if rest:
            meta["annotations"] = rest
        else:
            del meta["annotations"]
        manifest = {**manifest, "metadata": meta}
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest`, changed in place to carry its own hash annotation; returned for chaining."""
    digest = manifest_hash(manifest)
    manifest.setdefault("metadata", {}).setdefault("annotations", {})[APPLIED_HASH_ANNOTATION] = digest
    return manifest


def needs_write(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> list[str]:
    """Why `desired` (already stamped) must be applied; empty when the live object carries it."""
    if live is None:
        return ["absent"]
    return drift(desired, live)


def owns_field(live: Mapping[str, Any], manager: str, *path: str) -> bool:
    """Whether `manager` holds `path` (e.g. `spec`, `replicas`) in the live object's managedFields."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, Mapping) else None
        if node is not None:
            return True
    return False
