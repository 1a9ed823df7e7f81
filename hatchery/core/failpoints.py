"""Crash injection for tests of durability: HATCHERY_FAILPOINT=NAME:GENERATION.

The first time the named point is reached at that generation or a later one,
the process kills itself with SIGKILL, as an OOM killer or a lost node would:
no cleanup, no flush. Unset (the default), a failpoint costs one lookup.

Points: mid_generation, log_appended, checkpoint_written_not_renamed (the
optimizer; the last one counts checkpoint generations), lease_received (a worker).
"""

from __future__ import annotations

import os
import signal

ENV = "HATCHERY_FAILPOINT"


def failpoint(name: str, generation: int) -> None:
    wanted, _, at = os.environ.get(ENV, "").partition(":")
    if wanted == name and generation >= int(at or 0):
        os.kill(os.getpid(), signal.SIGKILL)
