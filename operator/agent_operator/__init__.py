"""The AgentService operator: spec models, pure builders, the kopf reconciler and `agentctl`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentservice-operator")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
