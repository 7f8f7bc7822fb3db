"""Bounded specs (issue 27, point 6): every string and map a tenant writes has a bound, and the
children a spec renders have a ceiling checked before they are built.

Covers: env values, pod annotations (count, key and value), budget.prices (count and key), resource
quantities and `alerts.for` are refused past their bounds by the models (the CRD carries the same
bounds, generated); `rendered_size_bound` is an upper bound of what `desired` builds, both tracks,
for the worst cases of each field (escape-heavy text included); a spec whose children could pass
the ceiling is refused naming the figures, before anything is built.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pydantic
import pytest
from agent_operator.api import models
from agent_operator.manifests import builders

BASE: dict[str, Any] = {
    "apiVersion": models.API_VERSION,
    "kind": models.KIND,
    "metadata": {"name": "a" * 63, "namespace": "n" * 63, "uid": "u"},
    "spec": {
        "model": {"providers": [{"name": "p", "model": "m", "baseURL": "http://llm:1/"}]},
        "redis": {"url": "redis://r:6379/0"},
    },
}


def service(**spec: Any) -> models.AgentService:
    body = copy.deepcopy(BASE)
    body["spec"].update(spec)
    return models.AgentService.model_validate(body)


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"env": [{"name": "E", "value": "v" * 4097}]}, "env.0.value"),
        ({"podAnnotations": {f"k{i}": "v" for i in range(65)}}, "podAnnotations"),
        ({"podAnnotations": {"k" * 318: "v"}}, "podAnnotations"),
        ({"podAnnotations": {"k": "v" * 4097}}, "podAnnotations.k"),
        ({"budget": {"prices": {f"m{i}": {"inputPerMtok": 1, "outputPerMtok": 1} for i in range(65)}}}, "prices"),
        ({"budget": {"prices": {"m" * 201: {"inputPerMtok": 1, "outputPerMtok": 1}}}}, "prices"),
        ({"api": {"resources": {"requests": {"cpu": "1" * 65}}}}, "cpu"),
        ({"alerts": {"for": "1" * 16 + "s"}}, "for"),
    ],
)
def test_every_free_text_field_and_map_is_bounded(spec: dict[str, Any], where: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        service(**spec)
    assert where in str(caught.value)


def rendered(svc: models.AgentService) -> int:
    desired = builders.desired(svc)
    return len(orjson.dumps(desired.children + desired.canary))


ESCAPES = '"\\\x01</>'  # what JSON escapes, twice in the runtime configuration (a JSON string in JSON)
WORST_CASES = {
    "env": {"env": [{"name": f"E{i}", "value": ESCAPES * 512} for i in range(4)]},
    "annotations": {"podAnnotations": {f"k{i}.example/x": ESCAPES * 512 for i in range(4)}},
    "prompt": {
        "model": {
            "systemPrompt": ESCAPES * 2500,
            "providers": [{"name": f"p{i}", "model": ESCAPES * 25, "baseURL": "http://llm:1/"} for i in range(8)],
        }
    },
    "prices": {
        "budget": {"prices": {f"{ESCAPES * 24}{i}": {"inputPerMtok": 1, "outputPerMtok": 2} for i in range(64)}}
    },
    "minimal": {},
}


@pytest.mark.parametrize("case", sorted(WORST_CASES))
def test_the_estimate_bounds_what_is_built(case: str) -> None:
    svc = service(**WORST_CASES[case])
    assert rendered(svc) <= builders.rendered_size_bound(svc)


def test_a_spec_that_could_render_past_the_ceiling_is_refused_before_building() -> None:
    big = service(env=[{"name": f"E{i}", "value": "v" * 4096} for i in range(40)])
    with pytest.raises(ValueError, match=r"^spec: its children could take \d+ bytes, more than the ceiling of 524288"):
        builders.desired(big)
    # the largest allowed spec renders within the ceiling
    largest = service(env=[{"name": f"E{i}", "value": "v" * 4096} for i in range(26)])
    assert builders.rendered_size_bound(largest) <= builders.RENDER_CEILING
    assert rendered(largest) <= builders.RENDER_CEILING
    assert json.dumps(largest.spec.model_dump(by_alias=True))  # a real spec, not a stub
