"""The pod-template hash: a short, stable fingerprint of what a Deployment runs.

The canary logic compares it (the stable Deployment's annotation against the desired one) to
decide whether a change is a new revision, so it must change exactly when the pod template
changes: it is a digest of the canonical JSON of the template (sorted keys, no whitespace), taken
before the hash annotation itself is added. Replica counts live outside the template and never
move it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

HASH_LENGTH: Final = 10


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Serialize with sorted keys and no insignificant whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def template_hash(template: Mapping[str, Any]) -> str:
    """The first `HASH_LENGTH` hex digits of the SHA-256 of the template's canonical JSON."""
    return hashlib.sha256(canonical_json(template)).hexdigest()[:HASH_LENGTH]


def combine(hashes: Mapping[str, str]) -> str:
    """One fingerprint for several named templates (e.g. API and worker), order-independent."""
    return template_hash(dict(hashes))
