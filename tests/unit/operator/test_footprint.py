"""What the operator's process loads: no model-provider SDK (the runtime's), which it never calls."""

from __future__ import annotations

import subprocess
import sys

# The anthropic SDK alone is ~76 MB of RSS and ~3,000 modules on import; the operator reached it
# through agent_runtime.errors (Redis URLs, the runtime's config) and held it all its life.
PROVIDER_CLIENTS = ("anthropic", "httpx2")


def test_the_operator_imports_no_model_provider_client() -> None:
    probe = "import sys, agent_operator.run; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert [client for client in PROVIDER_CLIENTS if client in loaded] == []
