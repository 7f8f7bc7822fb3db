"""The platform's admission rules for AgentServices, as the operator enforces them itself. Pure.

An AgentService makes the operator create pods, with the operator's rights: without rules, a
tenant who may edit AgentServices may run any image as any ServiceAccount of its namespace, with
that account's token mounted and any pod annotation (AppArmor `unconfined`, sidecar-injection
opt-outs, Vault roles). The chart installs a ValidatingAdmissionPolicy with these same rules
(`templates/admissionpolicy.yaml`, from the same values), so the API server refuses such a spec at
`kubectl apply`; where that policy is off (a cluster before 1.30, or `policy.admissionPolicy`
false), the operator refuses it here: the `PolicyViolation` condition, and no children.

The rules, one per value of the chart (`policy.*`), passed to the operator as flags:
- `allowedImages`: `spec.image`, when set, is one of these repositories with a tag or digest
  (`repo`, `repo:tag`, `repo@sha256:...`), or starts with an entry that ends in `/` (a whole
  registry path). A bare prefix never matches a longer repository name (`agentops/agent-runtime`
  does not allow `agentops/agent-runtime-evil`). Unset: the bundled runtime, always allowed.
- `allowedServiceAccounts`: `spec.serviceAccountName`, when set, is one of these names.
- `allowTokenAutomount`: `spec.automountServiceAccountToken: true` needs it.
- `allowedPodAnnotations`: every key of `spec.podAnnotations` starts with one of these prefixes.
- `allowedProviderHosts` (operator flag only): when given, every provider `baseURL` names one of
  these hosts. Link-local and metadata hosts are refused in every case, by the spec's own
  validation (`api/models.py`).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Sequence

from agent_operator.api import models

CONDITION = "PolicyViolation"


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the platform allows; `enforced=False` (the default): the four pod rules are off."""

    enforced: bool = False
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    allow_token_automount: bool = False
    allowed_pod_annotations: tuple[str, ...] = ()
    allowed_provider_hosts: tuple[str, ...] = ()  # empty: any host (but link-local and metadata ones)

    def violations(self, spec: models.AgentServiceSpec) -> list[str]:
        """Each rule `spec` breaks, naming the field and what is allowed; empty when it passes."""
        found = []
        if self.enforced:
            if spec.image is not None and not image_allowed(spec.image, self.allowed_images):
                found.append(f"spec.image {spec.image!r} is not allowed (allowed: {_listed(self.allowed_images)})")
            account = spec.service_account_name
            if account is not None and account not in self.allowed_service_accounts:
                found.append(
                    f"spec.serviceAccountName {account!r} is not allowed"
                    f" (allowed: {_listed(self.allowed_service_accounts)})"
                )
            if spec.automount_service_account_token and not self.allow_token_automount:
                found.append("spec.automountServiceAccountToken is not allowed (policy.allowTokenAutomount is false)")
            refused = sorted(k for k in spec.pod_annotations if not k.startswith(self.allowed_pod_annotations))
            if refused:
                found.append(
                    f"spec.podAnnotations {', '.join(repr(k) for k in refused[:5])}"
                    f"{' and more' if len(refused) > 5 else ''} not allowed"
                    f" (allowed prefixes: {_listed(self.allowed_pod_annotations)})"
                )
        if self.allowed_provider_hosts:
            allowed = {h.lower().rstrip(".") for h in self.allowed_provider_hosts}
            for provider in spec.model.providers:
                if provider.base_url is None:
                    continue  # the provider's public API
                host = (urllib.parse.urlsplit(provider.base_url).hostname or "").rstrip(".")
                if host not in allowed:
                    found.append(
                        f"spec.model.providers[{provider.name}].baseURL host {host!r} is not allowed"
                        f" (allowed: {_listed(self.allowed_provider_hosts)})"
                    )
        return found


def image_allowed(image: str, allowed: Sequence[str]) -> bool:
    """Whether `image` is one of the `allowed` repositories (any tag or digest) or under an entry ending in `/`."""
    return any(
        image == entry
        or image.startswith((entry + ":", entry + "@"))
        or (entry.endswith("/") and image.startswith(entry))
        for entry in allowed
        if entry
    )


def _listed(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values) if values else "none"
