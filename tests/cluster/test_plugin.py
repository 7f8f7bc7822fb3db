"""`kubectl agentservice` on the real control plane: kubectl runs the plugin, the API server judges it.

kubectl finds `kubectl-agentservice` on the PATH and runs it; the plugin reads $KUBECONFIG (or
`--kubeconfig`) naming the real API server, with RBAC on; the operator runs as the chart's
ServiceAccount, without Prometheus, so only the gates move a rollout (its interval is an hour).

- `list` (the namespace's, `-A` every namespace's) and `get` during a rollout: phase, step and
  weight, both revisions, replicas per track with the Deployments' names, conditions and the
  operator's real Events (found by the API server's field selectors);
- `get --watch` redraws when the rollout changes and ends on Ctrl-C with exit code 130;
- `pause` and `resume` write `spec.canary.paused` (visible on the object), the operator answers
  Paused and Progressing; `promote`, `abort` and `promote --full` write their annotations (seen
  on the object by a `kubectl get -w` of its every version) and the operator acts on them and
  removes them; `history` shows how both rollouts ended;
- the error lines: exit 1 and one line on stderr, nothing on stdout, for an AgentService or a
  namespace that does not exist, a gate with no rollout in progress, a ServiceAccount without
  rights (get, list, list -A), one that may read but not write (pause), and credentials the API
  server does not accept.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import OperatorProcess, kubectl_plugin, plugin_command, wait_for
from tests.cluster.test_lifecycle import agent_service, apply
from tests.support import controlplane as cp
from tests.support.interrupt import as_foreground_job

# The first test of a session also starts the control plane: a slow machine needs more than 120 s.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NAME = "support-agent"
NAMESPACE = "plugin-ops"
PROMOTE, ABORT = "agentops.dev/promote", "agentops.dev/abort"
CANARY = {"enabled": True, "steps": [10, 50, 100], "interval": "1h", "inconclusiveLimit": 100}


def service(image: str) -> dict[str, Any]:
    return agent_service(NAME, NAMESPACE, image=image, canary=CANARY, api={"replicas": 2}, worker={"replicas": 2})


def canary(plane: cp.ControlPlane) -> dict[str, Any]:
    body = plane.get("agsvc", NAME, "-n", NAMESPACE)
    return dict((body.get("status") or {}).get("canary") or {})


def annotations(plane: cp.ControlPlane) -> dict[str, str]:
    return dict(plane.get("agsvc", NAME, "-n", NAMESPACE)["metadata"].get("annotations") or {})


def event_reasons(plane: cp.ControlPlane) -> set[str]:
    listing = plane.get("events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={NAME}")
    return {e["reason"] for e in listing["items"]}


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a gate command prints on success."""
    assert (result.returncode, result.stderr) == (0, ""), result
    assert len(result.stdout.splitlines()) == 1, result.stdout
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed command: exit 1, nothing on stdout, one line on stderr."""
    assert result.returncode == 1, result
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


class Versions:
    """Every version of the AgentService, as `kubectl get -w -o json` streams them into a file.

    A gate annotation lives a moment: the operator removes it once it has acted. The watch sees the
    version that carried it however soon that is.
    """

    def __init__(self, plane: cp.ControlPlane, path: Path) -> None:
        self.path = path
        with path.open("wb") as sink:
            self.process = subprocess.Popen(
                [cp.kubectl_path(), "--kubeconfig", str(plane.kubeconfig), "get", "agsvc", NAME, "-n", NAMESPACE,
                 "-w", "-o", "json"],
                stdout=sink, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def seen(self) -> list[dict[str, Any]]:
        """The versions streamed so far (a torn last one waits for the next call)."""
        text, found, decoder, at = self.path.read_text(), [], json.JSONDecoder(), 0
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            try:
                obj, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                return found
            found.append(obj)

    def annotated(self, key: str, value: str) -> bool:
        return any((v["metadata"].get("annotations") or {}).get(key) == value for v in self.seen())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Watching:
    """`kubectl agentservice get NAME --watch`, running; its output read line by line as it comes."""

    def __init__(self, plane: cp.ControlPlane) -> None:
        argv, env = plugin_command(plane, "get", NAME, "-n", NAMESPACE, "--watch")
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=as_foreground_job,  # noqa: PLW1509 - a signal reset only, before exec
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def rollout_lines(self) -> list[str]:
        """The `Rollout:` line of every frame drawn so far (a frame is drawn whenever the view changes)."""
        return [line for line in list(self.lines) if line.startswith("Rollout:")]

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and what went to stderr."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        self.reader.join(timeout=10)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def namespace(controlplane: cp.ControlPlane) -> str:
    controlplane.kubectl("create", "namespace", NAMESPACE)
    return NAMESPACE


def test_list_get_watch_gates_and_history_on_a_rollout(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    plane = controlplane
    apply(plane, service("registry.example/agent-runtime:1.0"))
    plane.kubectl("wait", "--for=condition=Ready", f"agsvc/{NAME}", "-n", NAMESPACE, "--timeout=90s", timeout=120)
    wait_for(lambda: canary(plane).get("phase") == "Idle", what="rollout at rest")

    listed = kubectl_plugin(plane, "list", "-n", NAMESPACE)
    assert (listed.returncode, listed.stderr) == (0, ""), listed
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "READY", "ROLLOUT", "STEP", "WEIGHT", "STABLE", "CANARY", "AGE"]
    assert row.split()[:6] == [NAME, "Ready", "4/4", "Idle", "-", "-"], row
    everywhere = kubectl_plugin(plane, "list", "-A")
    assert everywhere.returncode == 0, everywhere
    assert everywhere.stdout.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [NAMESPACE, NAME] in [line.split()[:2] for line in everywhere.stdout.splitlines()[1:]]

    # A rollout: the new image goes to the canary track at 10%, and there it stays (no analyses).
    apply(plane, service("registry.example/agent-runtime:2.0"))
    status = wait_for(lambda: (c := canary(plane)).get("phase") == "Progressing" and c.get("weight") == 10 and c)
    wait_for(lambda: "RolloutStarted" in event_reasons(plane), what="the RolloutStarted Event")
    shown = kubectl_plugin(plane, "get", NAME, "-n", NAMESPACE)
    assert (shown.returncode, shown.stderr) == (0, ""), shown
    text = shown.stdout
    assert text.startswith(f"Name:       {NAMESPACE}/{NAME}\n"), text
    assert re.search(r"^Rollout:\s+Progressing\s+step 1/\d\s+weight 10%", text, re.MULTILINE), text
    assert f"Stable:     {status['stableRevision']}" in text and f"Canary:     {status['canaryRevision']}" in text
    replicas = {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines() if line.startswith("  ")}
    for component in ("api", "worker"):
        for track, suffix in (("stable", ""), ("canary", "-canary")):
            assert replicas[(component, track)][-1] == f"{NAME}-{component}{suffix}", text
    assert re.search(r"^  Ready\s+True", text, re.MULTILINE), text  # conditions
    assert re.search(r"^  \S+\s+Normal\s+RolloutStarted\s+rollout started for revision", text, re.MULTILINE), text

    versions = Versions(plane, tmp_path / "versions.json")
    watching = Watching(plane)
    try:
        wait_for(versions.seen, what="the watch of the AgentService")
        wait_for(watching.rollout_lines, what="the first frame of get --watch")

        # pause and resume: spec.canary.paused, on the object; the operator and the watch follow.
        line = one_line(kubectl_plugin(plane, "pause", NAME, "-n", NAMESPACE))
        assert line == f"agentservice/{NAME}: paused (spec.canary.paused: false -> true)\n"
        assert plane.get("agsvc", NAME, "-n", NAMESPACE)["spec"]["canary"]["paused"] is True
        wait_for(lambda: canary(plane).get("phase") == "Paused", what="Paused")
        wait_for(lambda: any(re.match(r"Rollout:\s+Paused", r) for r in watching.rollout_lines()), what="redrawn")
        line = one_line(kubectl_plugin(plane, "resume", NAME, "-n", NAMESPACE))
        assert line == f"agentservice/{NAME}: resumed (spec.canary.paused: true -> false)\n"
        assert plane.get("agsvc", NAME, "-n", NAMESPACE)["spec"]["canary"]["paused"] is False
        wait_for(lambda: canary(plane).get("phase") == "Progressing", what="Progressing again")
        wait_for(lambda: re.match(r"Rollout:\s+Progressing", watching.rollout_lines()[-1]), what="redrawn again")
        code, stderr = watching.interrupt()
        assert (code, stderr) == (130, ""), stderr

        # promote one step: the annotation is written, the operator moves to 50% and removes it.
        line = one_line(kubectl_plugin(plane, "promote", NAME, "-n", NAMESPACE))
        assert line == (
            f"agentservice/{NAME}: promote revision {status['canaryRevision']} one step: weight 10% -> 50% "
            f"({PROMOTE}=step:10)\n"
        )
        wait_for(lambda: versions.annotated(PROMOTE, "step:10"), what="the promote annotation on the object")
        wait_for(lambda: canary(plane).get("weight") == 50, what="weight 50")
        wait_for(lambda: PROMOTE not in annotations(plane), what="the promote gate consumed")

        # abort: rolled back, the stable track kept.
        line = one_line(kubectl_plugin(plane, "abort", NAME, "-n", NAMESPACE))
        assert line == (
            f"agentservice/{NAME}: abort: revision {status['canaryRevision']} rolled back, "
            f"{status['stableRevision']} kept ({ABORT}=true)\n"
        )
        wait_for(lambda: versions.annotated(ABORT, "true"), what="the abort annotation on the object")
        wait_for(lambda: canary(plane).get("phase") == "RolledBack", what="RolledBack")

        # another revision, promoted in full.
        apply(plane, service("registry.example/agent-runtime:3.0"))
        wait_for(lambda: canary(plane).get("phase") == "Progressing", what="the next rollout")
        line = one_line(kubectl_plugin(plane, "promote", NAME, "-n", NAMESPACE, "--full"))
        assert "in full" in line and line.endswith(f"({PROMOTE}=true)\n"), line
        wait_for(lambda: versions.annotated(PROMOTE, "true"), what="the full promote annotation on the object")
        wait_for(lambda: canary(plane).get("phase") == "Promoted", what="Promoted")
    finally:
        watching.stop()
        versions.stop()

    history = kubectl_plugin(plane, "history", NAME, "-n", NAMESPACE)
    assert (history.returncode, history.stderr) == (0, ""), history
    rows = [line.split() for line in history.stdout.splitlines()]
    assert rows[0] == ["#", "FINISHED", "REVISION", "FROM", "OUTCOME", "REASON"], history.stdout
    # each row: number, age ("12s ago"), revision, the stable revision it started from, outcome, reason
    assert rows[1][-4:] == [status["canaryRevision"], status["stableRevision"], "RolledBack", "Aborted"], rows
    assert rows[2][-4:-2] == [canary(plane)["stableRevision"], status["stableRevision"]], rows
    assert rows[2][-2:] == ["Promoted", "PromotedByAnnotation"], rows

    # Gates with nothing in progress, and names that do not exist: one line each, exit 1.
    assert refused(kubectl_plugin(plane, "promote", NAME, "-n", NAMESPACE)) == (
        f'error: agentservice "{NAME}" has no rollout in progress (rollout phase Promoted)'
    )
    assert refused(kubectl_plugin(plane, "abort", NAME, "-n", NAMESPACE)) == (
        f'error: agentservice "{NAME}" has no rollout in progress (rollout phase Promoted)'
    )
    for command in ("get", "history", "promote", "abort", "pause", "resume"):
        assert refused(kubectl_plugin(plane, command, "nobody", "-n", NAMESPACE)) == (
            f'error: agentservice "nobody" not found in namespace "{NAMESPACE}"'
        ), command
    assert refused(kubectl_plugin(plane, "get", NAME, "-n", "no-such-namespace")) == (
        f'error: agentservice "{NAME}" not found in namespace "no-such-namespace"'
    )


VIEWER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "agentservice-viewer", "namespace": NAMESPACE},
    "rules": [
        {"apiGroups": ["agentops.dev"], "resources": ["agentservices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    ],
}


def test_forbidden_and_unauthorized_are_one_line(controlplane: cp.ControlPlane, namespace: str, tmp_path: Path) -> None:
    plane = controlplane
    name = "guarded"
    apply(plane, agent_service(name, NAMESPACE))
    for account in ("nobody", "viewer"):
        plane.kubectl("create", "serviceaccount", account, "-n", NAMESPACE)
    plane.kubectl("apply", "-f", "-", input=json.dumps(VIEWER_ROLE))
    plane.kubectl("create", "rolebinding", "viewer", "--role=agentservice-viewer",
                  f"--serviceaccount={NAMESPACE}:viewer", "-n", NAMESPACE)  # fmt: skip
    nobody = plane.token_kubeconfig(NAMESPACE, "nobody", tmp_path / "nobody.kubeconfig")
    viewer = plane.token_kubeconfig(NAMESPACE, "viewer", tmp_path / "viewer.kubeconfig")
    user = f"system:serviceaccount:{NAMESPACE}:nobody"

    # No rights at all: get, list and list -A refused, the API server's reason in one line. The
    # kubeconfig comes by flag here (after the command, as kubectl hands it over), by $KUBECONFIG below.
    line = refused(kubectl_plugin(plane, "get", name, "--kubeconfig", str(nobody)))
    assert line == (
        f'error: forbidden: agentservices.agentops.dev "{name}" is forbidden: User "{user}" cannot get resource '
        f'"agentservices" in API group "agentops.dev" in the namespace "{NAMESPACE}"'
    ), line
    line = refused(kubectl_plugin(plane, "list", kubeconfig=nobody))
    assert line.startswith("error: forbidden: ") and 'cannot list resource "agentservices"' in line, line
    line = refused(kubectl_plugin(plane, "list", "-A", kubeconfig=nobody))
    assert line.startswith("error: forbidden: ") and "at the cluster scope" in line, line

    # May read, may not write: get and list work, pause is refused (its patch).
    shown = kubectl_plugin(plane, "get", name, kubeconfig=viewer)
    assert (shown.returncode, shown.stderr) == (0, ""), shown
    assert shown.stdout.startswith(f"Name:       {NAMESPACE}/{name}\n"), shown.stdout
    assert kubectl_plugin(plane, "list", kubeconfig=viewer).returncode == 0
    line = refused(kubectl_plugin(plane, "pause", name, kubeconfig=viewer))
    assert line.startswith("error: forbidden: ") and 'cannot patch resource "agentservices"' in line, line
    assert plane.get("agsvc", name, "-n", NAMESPACE)["spec"].get("canary", {}).get("paused") in (None, False)

    # Credentials the API server does not accept: one line, and not a word of "forbidden".
    bogus = tmp_path / "bogus.kubeconfig"
    config = json.loads(nobody.read_text())
    config["users"][0]["user"]["token"] = "not-a-token"
    bogus.write_text(json.dumps(config))
    line = refused(kubectl_plugin(plane, "get", name, kubeconfig=bogus))
    assert line == "error: unauthorized: the API server did not accept the kubeconfig's credentials (Unauthorized)"
