"""The bundled image, built from the Dockerfile by the set-up (`scripts/image.sh`), run as containers.

Each entry point runs in podman as the pods run it (tests/support/image.py: the image's non-root
user, read-only root filesystem with /tmp writable, every capability dropped), on the host network
with free ports given by flag:
- `agent-runtime api` and `worker` against a real redis-server answer every probe the operator
  renders for them, and exit 0 on SIGTERM within the pod's grace period;
- `agent-runtime localmodel` (the dev image, as scripts/e2e-kind.sh runs it) serves the model, and
  a task submitted to the API container is answered by the worker container through it;
- the image holds no compiler or build-only package, `pip check` passes, and its Python
  packages are exactly those of constraints.txt.
The operator's container runs against the real control plane in tests/cluster/test_image_operator.py.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentops_dev.localredis import free_port

from agent_runtime import constants
from tests.integration.ship.test_chart import render
from tests.support import image as img
from tests.support.redis_server import running_redis

# Loading the images into the storage (first test) and a containerd import take minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[3]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# Debian packages of a build toolchain or of headers: none belongs in the runtime image.
BUILD_ONLY = ("gcc", "g++", "cpp", "make", "binutils", "build-essential", "libc6-dev", "dpkg-dev", "git")


@pytest.fixture(scope="module")
def images() -> tuple[str, str]:
    reason = img.unavailable()
    if reason is not None:
        pytest.skip(reason)
    if not img.built():
        # A build takes minutes, far past a test's timeout: it belongs to the set-up.
        pytest.fail("the image is not built: run `make setup-test` or `scripts/image.sh build`")
    try:
        return img.load()
    except img.ImageError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def containers() -> Iterator[list[img.Container]]:
    started: list[img.Container] = []
    yield started
    for container in started:
        container.remove()


def test_image_runs_as_its_non_root_user(images: tuple[str, str]) -> None:
    runtime, _ = images
    (inspected,) = json.loads(img.podman("image", "inspect", runtime).stdout)
    config = inspected["Config"]
    assert config["User"] == f"{img.UID}:{img.UID}"
    assert config["Entrypoint"] == ["agent-runtime"] and config["Cmd"] == ["api"]
    result = img.run_once(runtime, ["id", "-u"])
    assert result.stdout.strip() == str(img.UID), result.stderr


def test_root_filesystem_is_read_only_and_tmp_writable(images: tuple[str, str]) -> None:
    runtime, _ = images
    assert img.run_once(runtime, ["touch", "/opt/venv/written"]).returncode != 0
    assert img.run_once(runtime, ["touch", "/tmp/written"]).returncode == 0


def test_no_compiler_or_build_only_package(images: tuple[str, str]) -> None:
    runtime, _ = images
    listed = img.run_once(runtime, ["dpkg-query", "--show", "--showformat=${Package}\\n"])
    assert listed.returncode == 0, listed.stderr
    packages = set(listed.stdout.split())
    found = sorted(p for p in packages if p.split(":")[0] in BUILD_ONLY or p.endswith("-dev"))
    assert not found, f"build-only packages in the image: {found}"
    tools = img.run_once(runtime, ["sh", "-c", "command -v cc gcc c++ make ld as git || true"])
    assert tools.stdout.strip() == "", tools.stdout
    # The build stage's sources stay in the build stage.
    assert img.run_once(runtime, ["test", "-e", "/src"]).returncode != 0


def test_pip_check_passes(images: tuple[str, str]) -> None:
    runtime, _ = images
    result = img.run_once(runtime, ["pip", "check"])
    assert result.returncode == 0, result.stdout + result.stderr


def constraints_module() -> Any:
    spec = importlib.util.spec_from_file_location("constraints", ROOT / "scripts" / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packages_are_those_of_constraints(images: tuple[str, str]) -> None:
    """The image holds the closure of `.[otel]` on its own Python, each at its constraints.txt version."""
    runtime, _ = images
    listed = img.run_once(runtime, ["pip", "list", "--format=json"])
    assert listed.returncode == 0, listed.stderr
    constraints = constraints_module()
    installed = {constraints.canonical(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    # The venv's own installers, and the project itself, are not dependencies.
    for own in ("pip", "setuptools", constraints.PROJECT):
        installed.pop(own, None)
    python = img.run_once(runtime, ["python", "-c", "import platform; print(platform.python_version())"])
    needed = constraints.closure(((constraints.PROJECT, ("otel",)),), pythons=(python.stdout.strip(),))
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    assert set(installed) == set(needed)
    assert installed == {name: pins[name] for name in needed}


def test_oci_archive_runs_in_containerd_under_the_name_the_chart_uses(images: tuple[str, str], tmp_path: Path) -> None:
    """What `kind load image-archive` and a node's `ctr images import` do with the cache's archive."""
    (deployment,) = [d for d in render() if d["kind"] == "Deployment"]
    chart_image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    # The chart names no registry: a node resolves the name under docker.io, as the archive names it.
    assert not any(c in chart_image.split("/", 1)[0] for c in ".:"), chart_image
    qualified = f"docker.io/{chart_image}"
    containerd = img.Containerd(tmp_path / "containerd").start()
    try:
        containerd.ctr("images", "import", str(Path(img.build_env()["DIR"]) / "agent-runtime.oci.tar"))
        assert qualified in containerd.ctr("images", "ls", "--quiet").stdout.split()
        ran = containerd.ctr("run", "--rm", "--net-host", "--read-only", qualified, "image-check", "id", "-u")
        assert ran.stdout.strip() == str(img.UID), ran.stderr
    finally:
        containerd.stop()


@pytest.mark.parametrize("component", ["api", "worker"])
def test_entry_point_answers_its_probes_and_stops_on_sigterm(
    images: tuple[str, str], component: str, tmp_path: Path, containers: list[img.Container]
) -> None:
    runtime, _ = images
    (tmp_path / "redis").mkdir()
    with running_redis(tmp_path / "redis", durable=False) as redis:
        svc = img.runtime_service("http://127.0.0.1:9/", redis.url)
        pod, rendered_container = img.rendered(svc, component)
        port = free_port()
        container = img.runtime_container(runtime, svc, component, port=port, tmp_path=tmp_path, redis_url=redis.url)
        containers.append(container.start())
        for probe in PROBES:
            get = rendered_container[probe]["httpGet"]
            url = f"http://127.0.0.1:{port}{get['path']}"
            assert container.wait_http(url) == 200, (probe, url, container.logs())
        grace = int(pod["terminationGracePeriodSeconds"])
        code, took = container.stop(grace)
        assert code == 0, f"{component} exited {code} on SIGTERM:\n{container.logs()}"
        assert took < grace, f"{component} took {took:.1f} s of its {grace} s grace period"


def test_a_task_is_answered_by_the_containers(
    images: tuple[str, str], tmp_path: Path, containers: list[img.Container]
) -> None:
    runtime, dev = images
    (tmp_path / "redis").mkdir()
    model_port, api_port, worker_port = free_port(), free_port(), free_port()
    model = img.Container(
        image=dev, command=["agent-runtime", "localmodel", "--host", "127.0.0.1", "--port", str(model_port)]
    )
    containers.append(model.start())
    with running_redis(tmp_path / "redis", durable=False) as redis:
        svc = img.runtime_service(f"http://127.0.0.1:{model_port}", redis.url)
        api = img.runtime_container(runtime, svc, "api", port=api_port, tmp_path=tmp_path, redis_url=redis.url)
        worker = img.runtime_container(runtime, svc, "worker", port=worker_port, tmp_path=tmp_path, redis_url=redis.url)
        containers.extend([api.start(), worker.start()])
        assert model.wait_http(f"http://127.0.0.1:{model_port}/_local/calls") == 200
        assert api.wait_http(f"http://127.0.0.1:{api_port}{constants.READY_PATH}") == 200
        assert worker.wait_http(f"http://127.0.0.1:{worker_port}{constants.READY_PATH}") == 200
        headers = {"Authorization": f"Bearer {img.TOKEN}"}
        base = f"http://127.0.0.1:{api_port}"
        submitted = httpx.post(f"{base}/v1/tasks", json={"input": "Say hello to the container."}, headers=headers)
        assert submitted.status_code in (200, 201, 202), submitted.text
        task_id = submitted.json()["task_id"]
        deadline = time.monotonic() + 60
        while True:
            view = httpx.get(f"{base}/v1/tasks/{task_id}", headers=headers).json()
            if view["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert view["status"] == "succeeded", (view, worker.logs())
        calls = httpx.get(f"http://127.0.0.1:{model_port}/_local/calls").json()
        assert calls, "the worker never called the local model"
        code, _ = model.stop(30)
        assert code == 0, f"localmodel exited {code} on SIGTERM:\n{model.logs()}"
