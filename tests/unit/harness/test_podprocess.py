"""The harness kubelet's pod processes: what of a pod spec moves into the volumes' host folders.

A container's args and env may name paths inside its mounts (its config file, its /tmp); those
move to the host folders of the volumes. The command is the harness's own executable from this
venv and must never move: a checkout under /tmp (a CI or scratch clone) has its venv there, and a
pod that mounts an emptyDir at /tmp would otherwise be started from a path that does not exist.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.support import podprocess


def worker_pod(config_path: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "svc-worker-1", "namespace": "team-a"},
        "spec": {
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}],
            "containers": [
                {
                    "name": "worker",
                    "image": "agentops/agent-runtime:test",
                    "command": ["agent-runtime"],
                    "args": ["worker", "--config", config_path],
                    "env": [{"name": "TMPDIR", "value": "/tmp"}],
                    "ports": [{"name": "metrics", "containerPort": 9090}],
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "scratch", "mountPath": "/etc/agent"},
                    ],
                }
            ],
        },
    }


def test_the_command_stays_the_venvs_and_spec_paths_move_into_the_volumes(tmp_path: Path) -> None:
    process = podprocess.PodProcess(worker_pod("/etc/agent/config.json"), core=None, directory=tmp_path)  # type: ignore[arg-type]
    process.prepare()
    (container,) = process.containers
    volumes = tmp_path / "team-a_svc-worker-1" / "volumes"
    command, *args = container.argv
    assert Path(command).parent == Path(sys.executable).parent
    assert args[:3] == ["worker", "--config", str(volumes / "scratch" / "config.json")]
    assert args[3:5] == ["--host", podprocess.HOST] and args[5] == "--metrics-port"
    assert container.env["TMPDIR"] == str(volumes / "tmp")
    assert container.env["PYTHONUNBUFFERED"] == "1"  # as the image's ENV: a killed pod's log keeps its last lines


def test_a_venv_under_a_mounted_path_is_not_moved(tmp_path: Path, monkeypatch: Any) -> None:
    """The clone-under-/tmp case: the venv's bin folder lies under the pod's /tmp mount."""
    venv_bin = tmp_path / "clone" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    executable = venv_bin / "agent-runtime"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    monkeypatch.setattr(podprocess, "VENV_BIN", venv_bin)
    pod = worker_pod("/etc/agent/config.json")
    pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] = str(tmp_path)  # the venv is under it
    process = podprocess.PodProcess(pod, core=None, directory=tmp_path / "pods")  # type: ignore[arg-type]
    process.prepare()
    assert process.containers[0].argv[0] == str(executable)
