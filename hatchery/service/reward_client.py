"""The caller's side of hatchery.v1.RewardService: several services with weights,
replicas spread round robin, deadlines, retries with backoff, bearer tokens.

A sample's reward is the weighted sum of the services' scores. A sample that any
service cannot score keeps that service's status, so the optimizer's
failed-sample policy decides what it means; nothing becomes a silent 0.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import grpc

from hatchery.service.security import Tls
from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc

log = logging.getLogger("hatchery.reward.client")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
MAX_BACKOFF_SECONDS = 10.0


@dataclass(frozen=True)
class Endpoint:
    addresses: Sequence[str]  # replicas of one service
    grader: str = ""  # empty: the service's default
    weight: float = 1.0
    token: str = ""  # bearer token; empty: none


KNOWN_STATUSES = frozenset(pb.ScoreStatus.values()) - {pb.SCORE_STATUS_UNSPECIFIED}


def _checked(result: pb.SampleScore) -> pb.SampleScore:
    """A remote service's result as the optimizer will accept it: an unknown status or a
    non-finite OK score becomes FAILED (never a crash of the worker, never a 0)."""
    if result.status not in KNOWN_STATUSES:
        return pb.SampleScore(status=pb.SCORE_STATUS_FAILED, error=f"the reward service sent status {result.status}")
    if result.status == pb.SCORE_STATUS_OK and not math.isfinite(result.score):
        return pb.SampleScore(status=pb.SCORE_STATUS_FAILED, error=f"non-finite score {result.score}")
    return result


class _Service:
    def __init__(self, endpoint: Endpoint, tls: Tls | None):
        if not endpoint.addresses:
            raise ValueError("a reward service needs at least one address")
        self.endpoint = endpoint
        self.channels = [channel(a, tls, endpoint.token) for a in endpoint.addresses]
        self.stubs = [reward_pb2_grpc.RewardServiceStub(c) for c in self.channels]
        self.turn = itertools.count()  # round robin over replicas; thread-safe enough under the GIL


class Scored(NamedTuple):
    rewards: list[float]
    statuses: list[int]
    sub_scores: dict[str, tuple[float, int]]  # name -> (sum, count) over the samples scored OK


class RewardClient:
    def __init__(self, endpoints: Sequence[Endpoint], timeout_seconds: float = 60.0, retries: int = 5,
                 batch_size: int = 256, backoff_seconds: float = 0.5, tls: Tls | None = None):
        if not endpoints:
            raise ValueError("a reward client needs at least one service")
        self.services = [_Service(e, tls) for e in endpoints]
        self.timeout_seconds, self.retries = timeout_seconds, retries
        self.batch_size, self.backoff_seconds = batch_size, backoff_seconds
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reward-client")

    def score(self, samples: Sequence[pb.Sample], stop: threading.Event | None = None) -> Scored:
        """Rewards and statuses (hatchery.v1.ScoreStatus), one per sample; a reward is
        meaningful only where its status is OK. Raises the last grpc.RpcError when a
        service stays unreachable through all retries, or at once when `stop` is set
        (a worker shutting down does not sit out the backoff)."""
        n = len(samples)
        jobs = [(service, samples[i:i + self.batch_size]) for service in self.services
                for i in range(0, n, self.batch_size)]
        stop = stop or threading.Event()  # never set: retries run their course
        flat = [r for chunk in self._pool.map(lambda job: self._call(*job, stop), jobs) for r in chunk]
        rewards, statuses = [0.0] * n, [pb.SCORE_STATUS_OK] * n
        for k, service in enumerate(self.services):
            for i, r in enumerate(flat[k * n:(k + 1) * n]):
                if statuses[i] == pb.SCORE_STATUS_OK and r.status != pb.SCORE_STATUS_OK:
                    rewards[i], statuses[i] = 0.0, r.status  # the score is meaningless, as in the proto
                elif statuses[i] == pb.SCORE_STATUS_OK:
                    rewards[i] += service.endpoint.weight * r.score
        parts: dict[str, list[float]] = {}  # sub-score name -> [sum, count] over the samples scored OK
        for k in range(len(self.services)):
            for i, r in enumerate(flat[k * n:(k + 1) * n]):
                if statuses[i] == pb.SCORE_STATUS_OK:
                    for name, value in r.sub_scores.items():
                        total = parts.setdefault(name, [0.0, 0])
                        total[0] += value
                        total[1] += 1
        return Scored(rewards, statuses, {name: (s, int(c)) for name, (s, c) in parts.items()})

    def _call(self, service: _Service, samples: Sequence[pb.Sample], stop: threading.Event) -> list[pb.SampleScore]:
        request = pb.ScoreRequest(samples=samples, grader=service.endpoint.grader)
        for attempt in range(self.retries + 1):
            replica = next(service.turn) % len(service.stubs)
            try:
                reply = service.stubs[replica].Score(request, timeout=self.timeout_seconds)
                break
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or attempt == self.retries or stop.is_set():
                    raise
                delay = min(self.backoff_seconds * 2**attempt, MAX_BACKOFF_SECONDS) * random.uniform(0.5, 1.0)
                log.warning("reward service %s: %s (%s); retry %d of %d in %.1f s",
                            service.endpoint.addresses[replica], err.code().name, err.details(), attempt + 1,
                            self.retries, delay)
                if stop.wait(delay):
                    raise
        results = list(reply.results)
        if len(results) != len(samples):
            error = f"{service.endpoint.addresses[replica]} returned {len(results)} results for {len(samples)} samples"
            return [pb.SampleScore(status=pb.SCORE_STATUS_FAILED, error=error)] * len(samples)
        return [_checked(r) for r in results]

    def close(self) -> None:
        self._pool.shutdown()
        for service in self.services:
            for c in service.channels:
                c.close()
