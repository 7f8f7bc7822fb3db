"""The operator's start-up flags reach kopf's settings."""

from __future__ import annotations

import kopf
import pytest
from agent_operator import run


def settings(*argv: str) -> kopf.OperatorSettings:
    return run.settings_for(run.config_from(run.build_parser().parse_args(list(argv))))


def test_kopf_processes_a_bounded_number_of_services_at_once_by_default() -> None:
    assert settings().queueing.worker_limit == run.DEFAULT_WORKER_LIMIT


def test_worker_limit_is_set_and_zero_means_unbounded() -> None:
    assert settings("--worker-limit", "16").queueing.worker_limit == 16
    assert settings("--worker-limit", "0").queueing.worker_limit is None


def test_a_negative_worker_limit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["--worker-limit", "-1"])
    assert "--worker-limit: must be 0 (unbounded) or more, not -1" in capsys.readouterr().err


def test_a_worker_frees_its_slot_a_second_after_its_objects_last_event() -> None:
    # kopf's default (5 s) held each of the 128 slots long enough to pace a burst of creations at
    # ~25 services a second (bench/RESULTS.md); the events a reconcile causes come back sooner.
    assert kopf.OperatorSettings().queueing.idle_timeout == 5.0
    assert settings().queueing.idle_timeout == run.WORKER_IDLE_TIMEOUT == 1.0
