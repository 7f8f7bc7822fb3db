"""Argo CD on the real control plane, and the git repository it syncs from.

The binary (its application controller and repo server, no API server, no UI) is built from Argo
CD's Go module by `scripts/argocd.sh` (github.com/argoproj/argo-cd/v3, pinned, cached under
~/.cache/agentops); `ArgoCD.start()` installs it the way its own manifests do:
- its CRDs (Application, AppProject) and the application controller's ClusterRole and binding,
  from the module of the same version;
- the `argocd` namespace, the controller's ServiceAccount (a TokenRequest token is the identity the
  controller runs with, so the audit log tells its requests apart), `argocd-cm` (the settings under
  test: the tracking method and our Lua health check, exactly as docs/gitops.md gives them) and
  `argocd-secret`, both labelled `app.kubernetes.io/part-of: argocd` as Argo CD requires;
- the `default` AppProject (Argo CD's API server creates it; that server is not run here);
- `scripts/argocd.sh start DIR`: redis-server, the repo server and the application controller.

`GitRepository` is a real git repository served by `git daemon` on loopback (git://), committed
to by the tests as a user would push.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import yaml

from tests.cluster.harness import wait_for
from tests.support import controlplane as cp
from tests.support.redis_server import free_port

__all__ = ["NAMESPACE", "ArgoCD", "ArgoCDError", "GitRepository", "binaries", "built"]

ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = ROOT / "scripts" / "argocd.sh"
NAMESPACE: Final = "argocd"
CONTROLLER_ACCOUNT: Final = "argocd-application-controller"
CONTROLLER_USER: Final = f"system:serviceaccount:{NAMESPACE}:{CONTROLLER_ACCOUNT}"
PART_OF: Final = {"app.kubernetes.io/part-of": "argocd"}


class ArgoCDError(RuntimeError):
    """Argo CD could not be had or started (the message says why)."""


def built() -> bool:
    return subprocess.run(["bash", str(SCRIPT), "built"], capture_output=True, check=False).returncode == 0


def binaries() -> Path:
    """The folder of the built `argocd` and its manifests (`scripts/argocd.sh dir`; builds when missing)."""
    result = subprocess.run(["bash", str(SCRIPT), "dir"], capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise ArgoCDError(f"scripts/argocd.sh dir failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class GitRepository:
    """A git repository with a working tree, served read-only by `git daemon` on a loopback port."""

    def __init__(self, directory: Path, name: str = "gitops") -> None:
        self.base = directory
        self.path = directory / name
        self.path.mkdir(parents=True)
        self.port = free_port()
        self.url = f"git://127.0.0.1:{self.port}/{name}"
        self._git("init", "--quiet", "--initial-branch=main")
        self._git("config", "user.name", "gitops-test")
        self._git("config", "user.email", "gitops-test@example.invalid")
        with (directory / "git-daemon.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={directory}",
                 "--listen=127.0.0.1", f"--port={self.port}", "--informative-errors", str(directory)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def _git(self, *args: str) -> str:
        result = subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def serving(self) -> bool:
        """Whether `git ls-remote` over git:// answers (the daemon is up)."""
        assert self.process.poll() is None, (self.base / "git-daemon.log").read_text()
        probe = subprocess.run(["git", "ls-remote", self.url], capture_output=True, check=False, timeout=30)
        return probe.returncode == 0

    def commit(self, message: str, files: dict[str, str | None]) -> str:
        """Write (text) or remove (None) files, commit them all, and return the commit's SHA."""
        for name, text in files.items():
            target = self.path / name
            if text is None:
                self._git("rm", "--quiet", "-r", name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            self._git("add", name)
        self._git("commit", "--quiet", "--allow-empty", "-m", message)
        return self._git("rev-parse", "HEAD")

    def head(self) -> str:
        return self._git("rev-parse", "HEAD")

    def copy_tree(self, source: Path, into: str) -> None:
        """Copy a folder (a chart) to `into` in the working tree, staged for the next `commit`."""
        shutil.copytree(source, self.path / into)
        self._git("add", into)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def argocd_cm(tracking: str, health_lua: str) -> dict[str, Any]:
    """The `argocd-cm` under test: the tracking method and the AgentService health check."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": NAMESPACE, "labels": PART_OF},
        "data": {
            "application.resourceTrackingMethod": tracking,
            "resource.customizations.health.agentops.dev_AgentService": health_lua,
        },
    }


class ArgoCD:
    """Argo CD's application controller and repo server against one control plane (see the module doc)."""

    def __init__(self, plane: cp.ControlPlane, directory: Path) -> None:
        self.plane = plane
        self.directory = directory
        self.kubeconfig = directory / "argocd-controller.kubeconfig"
        self.running = False

    def install(self, *, tracking: str, health_lua: str) -> None:
        """Argo CD's CRDs, RBAC, namespace, settings and default project (idempotent)."""
        manifests = binaries()
        plane = self.plane
        plane.kubectl("apply", "--server-side", "-f", str(manifests / "crds"))
        for crd in ("applications.argoproj.io", "appprojects.argoproj.io"):
            wait_for(lambda crd=crd: _established(plane, crd), timeout=60, what=f"CRD {crd} Established")
        if not plane.exists("namespace", NAMESPACE):
            plane.kubectl("create", "namespace", NAMESPACE)
        if not plane.exists("serviceaccount", CONTROLLER_ACCOUNT, "-n", NAMESPACE):
            plane.kubectl("create", "serviceaccount", CONTROLLER_ACCOUNT, "-n", NAMESPACE)
        plane.kubectl("apply", "--server-side", "-f", str(manifests / "rbac"))
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "argocd-secret", "namespace": NAMESPACE, "labels": PART_OF},
            "type": "Opaque",
        }
        project = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "AppProject",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {
                "sourceRepos": ["*"],
                "destinations": [{"server": "*", "namespace": "*"}],
                "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
            },
        }
        documents = [argocd_cm(tracking, health_lua), secret, project]
        plane.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=argocd-install", "-f", "-",
            input="\n---\n".join(yaml.safe_dump(d) for d in documents),
        )  # fmt: skip

    def start(self, *, tracking: str, health_lua: str) -> ArgoCD:
        self.install(tracking=tracking, health_lua=health_lua)
        self.plane.token_kubeconfig(NAMESPACE, CONTROLLER_ACCOUNT, self.kubeconfig, duration="4h")
        result = subprocess.run(
            ["bash", str(SCRIPT), "start", str(self.directory)],
            env={**_environ(), "KUBECONFIG": str(self.kubeconfig), "ARGOCD_NAMESPACE": NAMESPACE},
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        self.running = True  # stop() ends whatever the script started, even after a failure
        if result.returncode != 0:
            raise ArgoCDError(f"scripts/argocd.sh start failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return self

    def stop(self) -> None:
        if self.running:
            subprocess.run(["bash", str(SCRIPT), "stop", str(self.directory)], check=False, timeout=60)
            self.running = False

    def logs(self, process: str = "application-controller") -> str:
        path = self.directory / f"{process}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def application(self, name: str) -> dict[str, Any]:
        result = self.plane.kubectl("get", "application", name, "-n", NAMESPACE, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def apply_application(self, body: dict[str, Any]) -> None:
        body.setdefault("metadata", {})["namespace"] = NAMESPACE
        self.plane.kubectl(
            "apply", "--server-side", "--field-manager=gitops-test", "--force-conflicts", "-f", "-",
            input=json.dumps(body),
        )  # fmt: skip

    def delete_application(self, name: str) -> None:
        self.plane.kubectl("delete", "application", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true",
                           timeout=180)  # fmt: skip


def _established(plane: cp.ControlPlane, crd: str) -> bool:
    conditions = (plane.get("crd", crd).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _environ() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def application(
    name: str,
    repo_url: str,
    path: str,
    namespace: str,
    *,
    helm_release: str | None = None,
    sync_options: list[str] | None = None,
) -> dict[str, Any]:
    """An Application as docs/gitops.md writes it: automated sync, prune and self-heal."""
    source: dict[str, Any] = {"repoURL": repo_url, "path": path, "targetRevision": "main"}
    if helm_release is not None:
        source["helm"] = {"releaseName": helm_release}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "project": "default",
            "source": source,
            "destination": {"server": "https://kubernetes.default.svc", "namespace": namespace},
            "syncPolicy": {
                "automated": {"prune": True, "selfHeal": True},
                "syncOptions": sync_options or [],
            },
        },
    }


def sync_and_health(app: dict[str, Any]) -> tuple[str, str, str]:
    """(sync status, health status, the revision synced) of an Application, '' where absent."""
    status = app.get("status") or {}
    sync = status.get("sync") or {}
    return (
        str(sync.get("status", "")),
        str((status.get("health") or {}).get("status", "")),
        str(sync.get("revision", "")),
    )


def resource_statuses(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Application's resources (what Argo CD tracks), by `Kind/namespace/name`."""
    return {
        f"{r['kind']}/{r.get('namespace', '')}/{r['name']}": r for r in (app.get("status") or {}).get("resources", [])
    }
