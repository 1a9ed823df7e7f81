"""The lease logic: which work is queued, who holds what, and until when.

A lease is a member range x prompts of one generation, held by one worker until
its deadline. A lease whose worker vanished goes out again once its deadline
passes (a reassignment); a worker that will not finish one hands it back and it
goes out first (a release). Only a worker a lease was handed to may report it:
the holder, or an earlier holder whose deadline passed (its late answer still
counts, and the later copy's answer is then the duplicate). Lease ids carry a
per-process prefix, so a result for a lease of an earlier optimizer process
(before a restart) never matches a new one.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from dataclasses import dataclass

from hatchery.v1 import optimizer_pb2 as pb


@dataclass
class Outstanding:
    lease: pb.Lease
    deadline: float  # on the coordinator's clock
    worker_id: str


class LeaseBook:
    """Queued and outstanding leases of the generation in flight, and the run's lease counters."""

    def __init__(self) -> None:
        self.pending: deque[pb.Lease] = deque()
        self.outstanding: dict[str, Outstanding] = {}
        self._given: dict[str, set[str]] = {}  # lease id -> the workers it went to and who kept it
        self.reassignments = 0  # leases handed out again after their deadline
        self.releases = 0  # leases handed back by their worker
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count()

    def new_id(self, generation: int) -> str:
        return f"{self._prefix}-g{generation}-{next(self._ids)}"

    def queue(self, lease: pb.Lease) -> None:
        self.pending.append(lease)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing out: the generation's work is all in."""
        return not self.pending and not self.outstanding

    def take(self, worker_id: str, now: float) -> pb.Lease | None:
        """The next lease for worker_id, first reclaiming those past their deadline; None when none is queued."""
        for lease_id, out in list(self.outstanding.items()):
            if out.deadline < now:
                del self.outstanding[lease_id]
                self.pending.appendleft(out.lease)
                self.reassignments += 1
        if not self.pending:
            return None
        lease = self.pending.popleft()
        self.outstanding[lease.lease_id] = Outstanding(lease, now + lease.deadline_seconds, worker_id)
        self._given.setdefault(lease.lease_id, set()).add(worker_id)
        return lease

    def release(self, worker_id: str, lease_id: str) -> bool:
        """Queues a lease its worker will not finish first in line again; False (and nothing
        changed) when it is not out with that worker."""
        out = self.outstanding.get(lease_id)
        if out is None or out.worker_id != worker_id:
            return False
        del self.outstanding[lease_id]
        self.pending.appendleft(out.lease)
        self._given[lease_id].discard(worker_id)
        self.releases += 1
        return True

    def held(self, lease_id: str) -> pb.Lease | None:
        out = self.outstanding.get(lease_id)
        return out.lease if out else None

    def given_to(self, lease_id: str, worker_id: str) -> bool:
        """Was the lease handed to worker_id (and not handed back)?"""
        return worker_id in self._given.get(lease_id, ())

    def settle(self, lease_id: str) -> None:
        """The lease's result is in: it is done."""
        del self.outstanding[lease_id]
        del self._given[lease_id]

    def redo(self, lease_id: str) -> None:
        """The lease's result was refused (weights out of sync): it goes out again first."""
        self.pending.appendleft(self.outstanding.pop(lease_id).lease)
