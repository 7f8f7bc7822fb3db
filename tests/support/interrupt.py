"""Starting a process that a test will interrupt with Ctrl-C (SIGINT).

A shell without job control starts a background command with SIGINT ignored, and an ignored
signal stays ignored across fork and exec; Python then installs no KeyboardInterrupt handler at
all. A suite launched as `make test &` (or under nohup from a script) would so hand every child
an immune SIGINT, and a Ctrl-C test would fail however correct the code. A terminal runs its
foreground job with SIGINT at the default action, so the tests do the same.
"""

from __future__ import annotations

import signal


def as_foreground_job() -> None:
    """In the child, before exec: SIGINT back to its default action (a `preexec_fn`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
