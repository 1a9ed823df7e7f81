"""Fault injection for tests of durability: HATCHERY_FAILPOINT=NAME:GENERATION[:enospc].

The first time the named point is reached at that generation or a later one,
the process kills itself with SIGKILL, as an OOM killer or a lost node would:
no cleanup, no flush; with `:enospc` it raises the OSError a full disk gives
instead. Unset (the default), a failpoint costs one lookup.

Points: mid_generation, log_appended, own_update (its own update of a logged record,
beside the next generation), checkpoint_written_not_renamed (the optimizer; the last
one counts checkpoint generations), lease_received (a worker);
and before each write of a run's file: log_append, metrics_append, checkpoint_write.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "HATCHERY_FAILPOINT"


def failpoint(name: str, generation: int) -> None:
    wanted, _, rest = os.environ.get(ENV, "").partition(":")
    at, _, action = rest.partition(":")
    if wanted == name and generation >= int(at or 0):
        if action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)
