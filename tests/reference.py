"""The in-process reference run: the services' own steps, without transport.

Coordinator (optimizer side), Evaluator (worker side) and the graders are the
objects the services wrap; here they talk by direct calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hatchery.core.checkpoint import latest_checkpoint, write_checkpoint
from hatchery.core.config import RunConfig
from hatchery.core.model import load_model
from hatchery.core.start import prepare_start
from hatchery.service.settings import es_settings
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import reward_pb2
from inference_svc.evaluator import Evaluator
from optimizer_svc.coordinator import Coordinator
from reward_svc.graders import builtin_graders
from reward_svc.server import to_proto


def run_reference(cfg: RunConfig, run_dir: Path) -> Coordinator:
    start = prepare_start(cfg, run_dir).path
    coordinator = Coordinator(cfg, load_model(start, cfg.model.dtype), run_dir)
    evaluator = Evaluator(load_model(start, cfg.model.dtype), es_settings(cfg))
    if coordinator.checkpoint is not None:  # joins at the newest checkpoint, as a worker does
        evaluator.restore(coordinator.checkpoint.generation, *coordinator.checkpoint.load())
    while True:
        work = coordinator.get_work("reference", evaluator.applied_generation)
        for record in work.updates:
            evaluator.apply(record)
        if work.finished:
            return coordinator
        report_lease(coordinator, evaluator, work.lease)


def report_lease(coordinator: Coordinator, evaluator: Evaluator, lease: pb.Lease) -> None:
    """Evaluates a lease, scores it with the run's built-in grader and reports it, as a worker does."""
    grader = builtin_graders()[coordinator.cfg.grader or coordinator.task.grader]
    completions = evaluator.evaluate(lease)
    prompts = list(lease.prompts) * (len(completions.texts) // len(lease.prompts))
    scores = [to_proto(o) for o in grader.score([
        reward_pb2.Sample(prompt=p.text, completion=c, reference=p.reference, metadata=p.metadata)
        for c, p in zip(completions.texts, prompts)])]
    reply = coordinator.report(pb.ReportResultRequest(
        worker_id="reference", lease_id=lease.lease_id, generation=lease.generation,
        rewards=[s.score for s in scores], statuses=[s.status for s in scores],
        weights_fingerprint=evaluator.fingerprint(), generated_tokens=completions.new_tokens))
    assert reply.accepted, reply.reason


def replay_twice_and_resume(worker: Callable[[], Any], fitness: list[list[float]], directory: Path,
                            lr: float = 0.05) -> tuple[Any, Any, Any]:
    """Two updaters from `worker()` replay the same records, and a third resumes from a
    checkpoint the first wrote after two of them: (first, second, resumed), for a test to
    compare their bytes."""
    first, second = worker(), worker()
    for epoch, f in enumerate(fitness):
        first.apply(epoch, lr, f)
        second.apply(epoch, lr, f)
        if epoch == 1:
            write_checkpoint(directory, 2, first.state_dict(), first.steps, keep=1)
    resumed = worker()
    resumed.load_state_dict(*latest_checkpoint(directory).load())
    for epoch, f in list(enumerate(fitness))[2:]:
        resumed.apply(epoch, lr, f)
    return first, second, resumed
