"""`agentctl eval` / `agent-runtime eval` against real runtime processes: the API and a worker on a
real redis-server, the local model answering (rightly, or 3 of 10 wrong with no error).

Covers: a good model passes a 10-case suite (exit 0, accuracy 1, the JSON report's keys, the
tool calls seen, the judge's calls counted and priced apart from the cases' cost); the same suite
against a model answering 30 % wrong fails (exit 1, accuracy 0.7, the three failed cases named
with the number they ended with) while every task succeeded; `--min-accuracy` overrides the
suite's threshold (exit 0); `--runs 2` doubles the runs; `agent-runtime eval` is the same command
(text output); an API that cannot be reached is inconclusive (exit 3), never a pass; a bad suite
and a bad flag are exit 2 with one line naming the field; a token variable that is not set is 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from agentops_dev.localmodel import Faults, LocalModelServer
from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config

from agent_runtime import constants
from agent_runtime.config import RuntimeConfig

TOKEN = "eval-token"
CASES = [(a, b, c) for a, b, c in [(12, 7, 3), (9, 8, 1), (15, 4, 6), (7, 7, 7), (3, 11, 2),
                                   (21, 2, 5), (6, 6, 6), (13, 3, 4), (8, 9, 10), (5, 12, 8)]]  # fmt: skip


def suite_yaml(*, judge: bool = True, extra: str = "") -> str:
    lines = ["name: smoke", "thresholds: {minAccuracy: 0.85, maxCostPerTaskUSD: 2.0, maxP95LatencySeconds: 30}"]
    lines.append("taskTimeoutSeconds: 60")
    lines.append(extra)
    lines.append("cases:")
    for i, (a, b, c) in enumerate(CASES):
        answer = a * b + c
        lines.append(f"  - name: crate-{i}")
        lines.append(f'    input: "A crate holds {a}*{b}+{c} apples. How many?"')
        lines.append("    metadata: {intent: math}")
        expect = f'contains: ["{answer}"], numeric: {{value: {answer}}}, toolCalled: {{name: calculator}}'
        if judge and i == 0:
            expect += f', judge: {{rubric: "the answer is {answer}", minScore: 0.9}}'
        lines.append(f"    expect: {{{expect}}}")
    return "\n".join(lines) + "\n"


@dataclass
class Stack:
    api_url: str
    config_path: Path
    model: LocalModelServer
    directory: Path


@pytest.fixture
async def stack(tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis, model_server: LocalModelServer
                ) -> AsyncIterator[Stack]:  # fmt: skip
    path = write_config(tmp_path, config.model_dump(mode="json"))
    port = free_port()
    api = ForkedRuntime(
        ["api", "--host", "127.0.0.1", "--port", str(port)],
        config_path=path,
        redis_url=redis_server.url,
        env={constants.AUTH_TOKEN_ENV: TOKEN},
    )
    worker = ForkedRuntime(["worker", "--metrics-port", "0"], config_path=path, redis_url=redis_server.url)
    await api.start()
    await worker.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while True:
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        yield Stack(url, path, model_server, tmp_path)
    finally:
        await worker.kill()
        await api.kill()


async def evaluate(args: list[str], *, program: str = "agentctl", env: dict[str, str] | None = None,
                   stdin: str | None = None) -> tuple[int, str, str]:  # fmt: skip
    module = "agent_operator.cli" if program == "agentctl" else "agent_runtime.cli"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "eval", *args,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_suite(stack: Stack, text: str) -> str:
    path = stack.directory / "suite.yaml"
    path.write_text(text)
    return str(path)


def common(stack: Stack, suite: str) -> list[str]:
    return ["--suite", suite, "--api", stack.api_url, "--token-env", "EVAL_TOKEN", "--config", str(stack.config_path)]


async def test_a_good_model_passes_with_the_judge_priced_apart(stack: Stack) -> None:
    suite = write_suite(stack, suite_yaml())
    code, out, err = await evaluate([*common(stack, suite), "-o", "json"], env={"EVAL_TOKEN": TOKEN})
    assert code == 0, err
    report = json.loads(out)
    assert (report["verdict"], report["accuracy"], report["passed"], report["failed"]) == ("pass", 1.0, 10, 0)
    assert report["thresholds"] == {"minAccuracy": 0.85, "maxCostPerTaskUSD": 2.0, "maxP95LatencySeconds": 30}
    assert [c["name"] for c in report["cases"]] == [f"crate-{i}" for i in range(10)]
    assert all(c["passed"] and c["reason"] == "" and c["costUSD"] > 0 for c in report["cases"])
    assert report["costUSDTotal"] == pytest.approx(sum(c["costUSD"] for c in report["cases"]), abs=1e-6)
    assert report["costUSDPerTaskMax"] == max(c["costUSD"] for c in report["cases"])
    assert 0 < report["latencyP95Seconds"] < 30
    judged = [c for c in stack.model.calls if c.task_id and c.task_id.startswith("eval-smoke-")]
    assert report["judge"]["calls"] == 1 == len(judged)
    assert report["judge"]["costUSD"] > 0  # the judge's call, not in any case's cost


async def test_a_model_answering_30_percent_wrong_fails_naming_the_cases(stack: Stack) -> None:
    stack.model.faults = Faults(wrong_per_ten=3)
    suite = write_suite(stack, suite_yaml(judge=False))
    code, out, err = await evaluate([*common(stack, suite), "-o", "json"], env={"EVAL_TOKEN": TOKEN})
    assert code == 1, err
    report = json.loads(out)
    assert (report["verdict"], report["accuracy"], report["passed"], report["failed"]) == ("fail", 0.7, 7, 3)
    assert report["failedThresholds"] == ["accuracy 0.700 < minAccuracy 0.85"]
    failed = [c for c in report["cases"] if not c["passed"]]
    assert len(failed) == 3
    for case in failed:
        a, b, c = CASES[int(case["name"].split("-")[1])]
        answer = a * b + c
        assert f"numeric: expected {answer} ± 0, the answer ends with {answer + 1}" in case["reason"]
        assert case["costUSD"] > 0  # the task succeeded and was paid for: wrong, with no error
    assert all(c.outcome == "ok" for c in stack.model.calls)

    # The flag overrides the suite's threshold; the same wrong model then passes the looser gate.
    stack.model.faults = Faults(wrong_per_ten=3)
    code, out, err = await evaluate([*common(stack, suite), "--min-accuracy", "0.6"], env={"EVAL_TOKEN": TOKEN})
    assert code == 0, err
    assert "suite smoke: pass — accuracy 0.700 (7 passed, 3 failed)" in out
    assert out.count("FAIL crate-") == 3


async def test_runs_and_the_runtime_entry_point(stack: Stack) -> None:
    suite = write_suite(stack, suite_yaml(judge=False))
    code, out, err = await evaluate(
        [*common(stack, suite), "--runs", "2", "--concurrency", "8"],
        program="agent-runtime",
        env={"EVAL_TOKEN": TOKEN},
    )
    assert code == 0, err
    assert "accuracy 1.000 (20 passed, 0 failed)" in out


async def test_an_unreachable_api_is_inconclusive(stack: Stack) -> None:
    suite = write_suite(stack, suite_yaml(judge=False).replace("taskTimeoutSeconds: 60", "taskTimeoutSeconds: 1"))
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = await evaluate(["--suite", suite, "--api", dead, "-o", "json"])
    assert code == 3, err
    report = json.loads(out)
    assert report["verdict"] == "inconclusive" and report["passed"] == 0
    assert report["cases"][0]["reason"].startswith("not graded: the task API is unreachable")


async def test_a_wrong_token_fails_every_run_as_refused(stack: Stack) -> None:
    suite = write_suite(stack, suite_yaml(judge=False))
    code, out, _ = await evaluate([*common(stack, suite), "-o", "json"], env={"EVAL_TOKEN": "wrong"})
    assert code == 1
    assert json.loads(out)["cases"][0]["reason"].startswith("submit refused: HTTP 401: missing or invalid bearer")


@pytest.mark.parametrize(
    ("suite", "flags", "message"),
    [
        ("name: s\ncases: []\n", [], "suite.yaml: cases: List should have at least 1 item"),
        ("name: s\ncases: [{name: a, input: x, expect: {near: 1}}]\n", [], "cases[0].expect.near: unknown grader"),
        ("name: s\ncases: [{name: a, input: x, expect: {regex: '['}}]\n", [], "cases[0].expect.regex: not a valid"),
        ("name: s\ncases: [{name: a, input: x}]\n", ["--runs", "0"], "--runs: 0 is outside 1-20"),
        (
            "name: s\ncases: [{name: a, input: x}]\n",
            ["--token-env", "NOT_SET_ANYWHERE"],
            "--token-env: the environment",
        ),
        (
            "name: s\ncases: [{name: a, input: x, expect: {judge: {rubric: r, provider: nobody}}}]\n",
            [],
            "cases[0].expect.judge.provider: 'nobody' is not one of the service's providers (local)",
        ),
    ],
)
async def test_bad_suites_and_flags_exit_2_with_one_line(
    tmp_path: Path, config: RuntimeConfig, suite: str, flags: list[str], message: str
) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(suite)
    config_path = write_config(tmp_path, config.model_dump(mode="json"))
    args = ["--suite", str(path), "--api", "http://127.0.0.1:9", "--config", str(config_path), *flags]
    code, out, err = await evaluate(args)
    assert code == 2
    assert out == "" and err.count("\n") == 1 and message in err and "Traceback" not in err


async def test_a_candidate_in_its_own_lane_sees_only_the_evaluation(
    tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis, model_server: LocalModelServer
) -> None:
    """The Job's way: `--in-process-api` on the candidate's config and lane; a user task never reaches it.

    The stable worker (main lane) calls `model_server`; the candidate's worker (lane `eval-1`) calls a
    model answering 3 of 10 wrong. The evaluation fails with accuracy 0.7 and only the candidate's
    model saw its tasks; a user task submitted meanwhile is answered by the stable worker only.
    """
    async with LocalModelServer(faults=Faults(wrong_per_ten=3)) as candidate_model:
        candidate = config.model_copy(
            update={"providers": [config.providers[0].model_copy(update={"base_url": candidate_model.url})]}
        )
        (tmp_path / "stable").mkdir()
        (tmp_path / "candidate").mkdir()
        stable_path = write_config(tmp_path / "stable", config.model_dump(mode="json"))
        candidate_path = write_config(tmp_path / "candidate", candidate.model_dump(mode="json"))
        lane = {constants.QUEUE_LANE_ENV: "eval-1", constants.TRACK_ENV: "canary"}
        workers = [
            ForkedRuntime(["worker", "--metrics-port", "0"], config_path=stable_path, redis_url=redis_server.url),
            ForkedRuntime(
                ["worker", "--metrics-port", "0"], config_path=candidate_path, redis_url=redis_server.url, env=lane
            ),
        ]
        port = free_port()
        user_api = ForkedRuntime(
            ["api", "--host", "127.0.0.1", "--port", str(port)],
            config_path=stable_path,
            redis_url=redis_server.url,
            env={constants.AUTH_TOKEN_ENV: TOKEN},
        )
        for process in [*workers, user_api]:
            await process.start()
        try:
            suite = tmp_path / "suite.yaml"
            suite.write_text(suite_yaml(judge=False))
            env = {
                constants.CONFIG_PATH_ENV: str(candidate_path),
                constants.REDIS_URL_ENV: redis_server.url,
                **lane,
                "SUITE": suite.read_text(),
            }
            code, out, err = await evaluate(["--suite-env", "SUITE", "--in-process-api", "-o", "json"], env=env)
            assert code == 1, err
            report = json.loads(out)
            assert (report["accuracy"], report["failed"]) == (0.7, 3)
            eval_calls = [c for c in candidate_model.calls if c.task_id]
            assert eval_calls and not [c for c in model_server.calls if c.task_id]

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                while True:
                    try:
                        if (await client.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
                auth = {"authorization": f"Bearer {TOKEN}"}
                made = (await client.post("/v1/tasks", json={"input": "What is 6*7?"}, headers=auth)).json()
                while (view := (await client.get(made["status_url"], headers=auth)).json())["status"] != "succeeded":
                    await asyncio.sleep(0.05)
            assert view["result"] == "The answer: 6*7 = 42." and view["tool_calls"] == ["calculator"]
            assert {c.task_id for c in model_server.calls} == {made["task_id"]}
            assert made["task_id"] not in {c.task_id for c in candidate_model.calls}
        finally:
            for process in [*workers, user_api]:
                await process.kill()
