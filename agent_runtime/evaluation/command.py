"""`agentctl eval` and `agent-runtime eval`: one command, two entry points (the CLI and the operator's Job).

Exit codes: 0 every threshold holds; 1 one does not; 2 a bad suite or usage (one line naming the
field, no traceback); 3 the evaluation could not decide (runs that could not be submitted or read:
the verdict is `inconclusive`, which a gate never takes for a pass).
`-o json` prints the report (`Report.to_json`); `-o text` a table of the failed runs and the figures.
`--termination-log PATH` also writes the short summary there (the operator's Job reads it as the
container's termination message, which Kubernetes caps at 4 KiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pydantic

from agent_runtime import config as runtime_config
from agent_runtime import constants, errors
from agent_runtime.evaluation.report import Report
from agent_runtime.evaluation.suite import MAX_RUNS, Suite, SuiteError, Thresholds, load_suite

if TYPE_CHECKING:
    from agent_runtime.evaluation.judge import Judge

__all__ = ["EXIT_FAIL", "EXIT_INCONCLUSIVE", "EXIT_PASS", "EXIT_USAGE", "add_arguments", "run"]

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
MAX_CONCURRENCY = 64
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


class _Usage(Exception):
    """A problem with the command line or the suite; the message is the one line printed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--suite", metavar="FILE", help="the suite (YAML); - reads standard input")
    source.add_argument("--suite-env", metavar="NAME", help="an environment variable holding the suite (YAML)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--api", metavar="URL", help="the task API's base URL")
    target.add_argument(
        "--in-process-api",
        action="store_true",
        help="serve the task API in this process from the runtime config and Redis of the environment "
        f"(${constants.CONFIG_PATH_ENV}, ${constants.REDIS_URL_ENV}, ${constants.QUEUE_LANE_ENV}): "
        "the operator's evaluation Job reaches the candidate's queue this way, through no Service users reach",
    )
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        default=None,
        help=f"environment variable holding the API's bearer token (default {constants.AUTH_TOKEN_ENV}, if set)",
    )
    parser.add_argument("--runs", type=int, metavar="N", help=f"runs of each case (1-{MAX_RUNS}; overrides the suite)")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N", help="runs in flight at once (default 4)")
    parser.add_argument("--min-accuracy", type=float, metavar="X", help="overrides thresholds.minAccuracy (0-1)")
    parser.add_argument("--max-cost-usd", type=float, metavar="X", help="overrides thresholds.maxCostPerTaskUSD")
    parser.add_argument(
        "--max-p95-latency-seconds", type=float, metavar="X", help="overrides thresholds.maxP95LatencySeconds"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="runtime config (JSON, as the operator mounts it) naming the providers a `judge` grader calls "
        f"(default: ${constants.CONFIG_PATH_ENV} or {constants.CONFIG_PATH}, if present)",
    )
    parser.add_argument("-o", "--output", choices=["json", "text"], default="text")
    parser.add_argument("--termination-log", metavar="PATH", default=None, help=argparse.SUPPRESS)


def _read(path: str | None, env_name: str | None) -> str:
    if env_name is not None:
        text = os.environ.get(env_name)
        if not text:
            raise _Usage(f"--suite-env: the environment variable {env_name} is not set")
        return text
    assert path is not None  # argparse: --suite or --suite-env
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise _Usage(f"--suite: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _Usage(f"--suite: {path} is not UTF-8 text") from None


def _judge_config(path: str | None) -> runtime_config.RuntimeConfig:
    environ = dict(os.environ)
    if path is not None:
        if not Path(path).is_file():
            raise _Usage(f"--config: {path} is not a file")
        environ[constants.CONFIG_PATH_ENV] = path
    try:
        return runtime_config.load(environ)
    except (ValueError, pydantic.ValidationError) as exc:
        raise _Usage(f"--config: not a runtime config: {' '.join(str(exc).split())[:200]}") from None


def _check_numbers(args: argparse.Namespace) -> None:
    if args.runs is not None and not 1 <= args.runs <= MAX_RUNS:
        raise _Usage(f"--runs: {args.runs} is outside 1-{MAX_RUNS}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise _Usage(f"--concurrency: {args.concurrency} is outside 1-{MAX_CONCURRENCY}")
    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise _Usage(f"--min-accuracy: {args.min_accuracy} is outside 0-1")
    limits = (("--max-cost-usd", args.max_cost_usd), ("--max-p95-latency-seconds", args.max_p95_latency_seconds))
    for flag, value in limits:
        if value is not None and not value > 0:
            raise _Usage(f"{flag}: {value} must be greater than 0")
    if args.api is not None and not args.api.startswith(("http://", "https://")):
        raise _Usage(f"--api: {args.api!r} is not an http(s) URL")


def _token(name: str | None) -> str | None:
    if name is None:
        return os.environ.get(constants.AUTH_TOKEN_ENV) or None
    token = os.environ.get(name)
    if not token:
        raise _Usage(f"--token-env: the environment variable {name} is not set")
    return token


async def _evaluate(args: argparse.Namespace) -> Report:
    # Here, not at the top: they load the HTTP and provider clients, which the rest of agentctl
    # (render, crd) does not need, and `agentctl --help` should not wait for.
    from agent_runtime.evaluation.judge import Judge, JudgeSetupError  # noqa: PLC0415
    from agent_runtime.evaluation.runner import EvaluationTarget, run_suite  # noqa: PLC0415

    _check_numbers(args)
    where = args.suite or f"${args.suite_env}"
    try:
        suite = load_suite(_read(args.suite, args.suite_env))
    except SuiteError as exc:
        raise _Usage(f"{where}: {exc}") from None
    if args.runs is not None:
        suite = suite.model_copy(update={"runs": args.runs})
    thresholds = suite.thresholds.merged(
        min_accuracy=args.min_accuracy,
        max_cost_per_task_usd=args.max_cost_usd,
        max_p95_latency_seconds=args.max_p95_latency_seconds,
    )
    judge = None
    if suite.judges():
        judge = Judge(_judge_config(args.config))
        try:
            judge.check([j for _, j in suite.judges()])
        except JudgeSetupError as exc:
            index = suite.judges()[0][0]
            raise _Usage(f"{where}: cases[{index}].expect.{exc}") from None
    try:
        if args.in_process_api:
            return await _against_in_process_api(suite, thresholds, args.concurrency, judge)
        target = EvaluationTarget(api_url=args.api, token=_token(args.token_env))
        return await run_suite(suite, target, thresholds=thresholds, concurrency=args.concurrency, judge=judge)
    finally:
        if judge is not None:
            await judge.aclose()


async def _against_in_process_api(
    suite: Suite, thresholds: Thresholds, concurrency: int, judge: Judge | None
) -> Report:
    """The suite against the API app built here, on the environment's config and Redis (the Job's way)."""
    import httpx  # noqa: PLC0415 - see _evaluate
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from agent_runtime.api import create_app  # noqa: PLC0415
    from agent_runtime.composition import connect_redis  # noqa: PLC0415
    from agent_runtime.evaluation.runner import EvaluationTarget, run_suite  # noqa: PLC0415

    try:
        config = runtime_config.load()
    except (ValueError, pydantic.ValidationError) as exc:
        raise _Usage(f"--in-process-api: the runtime config is not valid: {' '.join(str(exc).split())[:200]}") from None
    redis_client = connect_redis(os.environ.get(constants.REDIS_URL_ENV, constants.DEFAULT_REDIS_URL), config.redis)
    try:
        app = create_app(config, redis=redis_client, registry=CollectorRegistry(), auth_token=None)
        target = EvaluationTarget(api_url="http://in-process", transport=httpx.ASGITransport(app=app))
        return await run_suite(suite, target, thresholds=thresholds, concurrency=concurrency, judge=judge)
    finally:
        await redis_client.aclose()


def _text(report: Report, out: TextIO) -> None:
    for r in report.runs:
        if not r.passed:
            print(f"FAIL {r.case} (run {r.run}): {r.reason}", file=out)
    figures = report.to_json()
    print(
        f"suite {report.suite}: {report.verdict} — accuracy {report.accuracy:.3f} ({report.passed} passed, "
        f"{report.failed} failed), cost per task max {figures['costUSDPerTaskMax']:g} USD "
        f"(total {figures['costUSDTotal']:g}), p95 latency {figures['latencyP95Seconds']:g} s",
        file=out,
    )
    if report.judge_calls:
        print(f"judge: {report.judge_calls} calls, {figures['judge']['costUSD']:g} USD", file=out)
    for problem in report.failed_thresholds:
        print(f"threshold not met: {problem}", file=out)


def termination_summary(report: Report) -> str:
    """The summary as JSON within Kubernetes' 4 KiB; failed cases dropped from the end until it fits."""
    summary = report.summary()
    while True:
        text = json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
        if len(text.encode()) <= TERMINATION_LIMIT or not summary["failedCases"]:
            return text[:TERMINATION_LIMIT]
        summary["failedCases"] = summary["failedCases"][:-1]
        summary["failedCasesTruncated"] = True


def run(args: argparse.Namespace, *, prog: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        report = asyncio.run(_evaluate(args))
    except _Usage as exc:
        print(f"{prog}: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.ConfigError as exc:
        print(f"{prog}: error: --config: {exc}", file=err)
        return EXIT_USAGE
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False), file=out)
    else:
        _text(report, out)
    if args.termination_log:
        Path(args.termination_log).write_text(termination_summary(report))
    if report.verdict == "pass":
        return EXIT_PASS
    return EXIT_FAIL if report.verdict == "fail" else EXIT_INCONCLUSIVE


def main(argv: Sequence[str] | None = None, *, prog: str = "agentctl eval") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Run an evaluation suite against a task API.")
    add_arguments(parser)
    return run(parser.parse_args(argv), prog=prog)
