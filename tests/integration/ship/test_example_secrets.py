"""Each example with its own Secret commands: what the comments tell a reader to create is what the spec reads.

Covers: the `kubectl create secret ...` commands in each valid example's header comment run
through the real kubectl (client-side dry run, so no cluster), and the Secrets they create hold
every key the spec references — through the operator's own check (`kube.secrets.references` and
`problems`, the check that holds a rollout with `SecretMissing`), KEDA's keys and CA included —
and every `imagePullSecrets` name is created as a docker-registry Secret. A command in the
comments that kubectl refuses fails the test too.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_operator.api import models
from agent_operator.kube import secrets

ROOT = Path(__file__).resolve().parents[3]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# A PEM for `--from-file=ca.crt=./ca.crt` (the commands run in a scratch directory holding it).
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def secret_commands(path: Path) -> list[list[str]]:
    """The `kubectl ... create secret` commands of the example's comments, continuation lines joined."""
    commands: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            continue
        text = line.lstrip("#").strip()
        if pending:
            pending += " " + text
        elif text.startswith("kubectl") and " create secret " in f" {text} ":
            pending = text
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append(pending)
        pending = ""
    return [shlex.split(command) for command in commands]


def created(command: list[str], cwd: Path) -> dict[str, Any]:
    assert command[0] == "kubectl"
    result = subprocess.run(
        [str(KUBECTL), *command[1:], "--dry-run=client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, f"{shlex.join(command)}: {result.stderr}"
    secret: dict[str, Any] = json.loads(result.stdout)
    return secret


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_creates_the_secrets_it_references(path: Path, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text(PEM)
    live = {}
    for command in secret_commands(path):
        secret = created(command, tmp_path)
        live[secret["metadata"]["name"]] = secret
    for document in yaml.safe_load_all(path.read_text()):
        svc = models.AgentService.model_validate(document)
        refs = secrets.references(svc.spec)
        assert refs, f"{path.name} references no Secret: the test would prove nothing"
        assert secrets.problems(refs, live) == [], f"{path.name}: its comments do not create what it reads"
        for pull in svc.spec.image_pull_secrets:
            assert pull.name in live, f"{path.name}: imagePullSecrets {pull.name!r} is never created"
            assert live[pull.name]["type"] == "kubernetes.io/dockerconfigjson"


def test_keda_example_reads_every_key_through_the_check() -> None:
    # The defect this test was written for: usernameKey named a key no command created. The
    # check above sees it only if the KEDA keys are among the references.
    svc = models.AgentService.model_validate(yaml.safe_load((ROOT / "examples" / "keda.yaml").read_text()))
    fields = {ref.field for ref in secrets.references(svc.spec)}
    assert {"spec.redis.keda.addressKey", "spec.redis.keda.passwordKey", "spec.redis.keda.usernameKey"} <= fields


def test_the_parser_joins_continuation_lines(tmp_path: Path) -> None:
    example = tmp_path / "x.yaml"
    example.write_text("#   kubectl -n a create secret generic s \\\n#     --from-literal=k=v\nkind: X\n")
    assert secret_commands(example) == [
        ["kubectl", "-n", "a", "create", "secret", "generic", "s", "--from-literal=k=v"]
    ]
