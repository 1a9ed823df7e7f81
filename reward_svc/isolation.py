"""The built-in graders in worker processes, under a time limit per call.

Their parsing is bounded so that no sample should take more than milliseconds; this
makes it a guarantee. A call that runs past its limit kills its process and is retried
sample by sample, so the one sample that ran long is marked TIMED_OUT and the rest are
scored; meanwhile the reward service's threads only wait on a pipe, so health checks and
SIGTERM are answered whatever a grader is doing. The reward service runs its built-ins
here; in-process callers (the reference run, `hatchery eval`) use them directly.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any

from hatchery.v1 import reward_pb2
from reward_svc.graders import BatchGrader, Outcome, Status, builtin_graders
from reward_svc.plugins import ProcessGrader

BUILTINS = "reward_svc.graders:builtin_graders"
TIMEOUT_SECONDS = 2.0  # per call of at most BATCH_SIZE samples; then per sample
BATCH_SIZE = 64
PROCESSES = 2
MEMORY_MB = 2048


@functools.cache
def _hosted(factory: str) -> dict[str, BatchGrader]:
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)()


def grade(factory: str, grader: str, samples: list[bytes]) -> list[tuple[int, float, dict[str, float], str]]:
    """Runs in the worker process: the outcomes of one grader of `factory`'s, as plain tuples."""
    outcomes = _hosted(factory)[grader].score([reward_pb2.Sample.FromString(s) for s in samples])
    return [(o.status.value, o.score, o.sub_scores, o.error) for o in outcomes]


class IsolatedGrader(ProcessGrader):
    """One grader of `factory` (default: the built-ins), scored in worker processes started on first use."""

    def __init__(self, name: str, sub_score_names: tuple[str, ...] = (), factory: str = BUILTINS,
                 path: str = "", timeout_seconds: float = TIMEOUT_SECONDS):
        super().__init__(f"{__name__}:grade", path, timeout_seconds, MEMORY_MB, PROCESSES, BATCH_SIZE,
                         confined=False, start_now=False)
        self.name, self.factory, self.sub_score_names = name, factory, sub_score_names
        self.label = f"grader {name}"

    def _request(self, samples: Sequence[reward_pb2.Sample]) -> dict[str, Any]:
        return {"factory": self.factory, "grader": self.name, "samples": [s.SerializeToString() for s in samples]}

    def _outcomes(self, value: list, samples: Sequence[reward_pb2.Sample]) -> list[Outcome]:
        return [Outcome(Status(status), score, sub_scores, error) for status, score, sub_scores, error in value]


def isolated_builtins() -> dict[str, BatchGrader]:
    """builtin_graders(), each scored in worker processes under a time limit."""
    return {name: IsolatedGrader(name, grader.sub_score_names) for name, grader in builtin_graders().items()}
