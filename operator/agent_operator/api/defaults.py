"""Operator-wide defaults for every AgentService, set once at start-up (the chart's values).

Pure: `apply` merges them into a parsed AgentService before the builders run, so the builders
keep taking one spec and `agentctl render` with the same flags prints what the operator applies.
The spec wins: its image pull secrets come first, its monitoring labels and annotations override
the defaults' keys.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping

import pydantic
from agent_operator.api import models


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What the operator adds to every AgentService it renders."""

    image_pull_secrets: tuple[str, ...] = ()
    monitoring_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    monitoring_annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked with the spec's own rules, so a bad chart value stops the operator at start-up
        # rather than failing every AgentService at apply.
        for name in self.image_pull_secrets:
            models.LocalObjectReference(name=name)
        models.Monitoring(labels=dict(self.monitoring_labels), annotations=dict(self.monitoring_annotations))

    @property
    def empty(self) -> bool:
        return not (self.image_pull_secrets or self.monitoring_labels or self.monitoring_annotations)


NONE = Defaults()


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """`key=value` strings (flags, environment) as a mapping; ValueError names a pair without '='."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r}: expected key=value")
        out[key] = value
    return out


def apply(svc: models.AgentService, defaults: Defaults) -> models.AgentService:
    """`svc` with the operator-wide defaults merged in (the same object when there are none)."""
    if defaults.empty:
        return svc
    spec = svc.spec
    own = [ref.name for ref in spec.image_pull_secrets]
    secrets = [*own, *(name for name in defaults.image_pull_secrets if name not in own)]
    monitoring = spec.monitoring.model_copy(
        update={
            "labels": {**defaults.monitoring_labels, **spec.monitoring.labels},
            "annotations": {**defaults.monitoring_annotations, **spec.monitoring.annotations},
        }
    )
    merged = spec.model_copy(
        update={
            "image_pull_secrets": [models.LocalObjectReference(name=name) for name in secrets],
            "monitoring": monitoring,
        }
    )
    return svc.model_copy(update={"spec": merged})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the operator-wide defaults (`agentctl operator` and `agentctl render` share them)."""
    parser.add_argument(
        "--image-pull-secret",
        action="append",
        default=[],
        metavar="NAME",
        help="add this Secret to every agent pod's imagePullSecrets, after spec.imagePullSecrets (repeatable)",
    )
    parser.add_argument(
        "--monitoring-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label every ServiceMonitor and PrometheusRule (spec.monitoring.labels win; repeatable)",
    )
    parser.add_argument(
        "--monitoring-annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="annotate every ServiceMonitor and PrometheusRule (spec.monitoring.annotations win; repeatable)",
    )


def from_args(args: argparse.Namespace) -> Defaults:
    """The operator-wide defaults the flags name; ValueError says which flag is wrong."""
    try:
        return Defaults(
            image_pull_secrets=tuple(getattr(args, "image_pull_secret", None) or ()),
            monitoring_labels=parse_pairs(getattr(args, "monitoring_label", None) or ()),
            monitoring_annotations=parse_pairs(getattr(args, "monitoring_annotation", None) or ()),
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--image-pull-secret/--monitoring-label/--monitoring-annotation: {problems}") from None
