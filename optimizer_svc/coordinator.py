"""The optimizer's run state machine: leases out, rewards in, one update per generation.

Transport-free: the gRPC servicer and the in-process reference run both drive
this class, so the services and the reference take exactly the same steps.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from hatchery.config import RunConfig
from hatchery.es import EsUpdater, find_targets, shape_fitness
from hatchery.model import LoadedModel, fingerprint
from hatchery.settings import es_settings, step_rule
from hatchery.tasks import Task, TaskPrompt, load_task
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import reward_pb2
from optimizer_svc.update_log import UpdateLog


def _proto_prompts(prompts: list[TaskPrompt]) -> list[pb.Prompt]:
    return [pb.Prompt(index=i, text=p.text, reference=p.reference, metadata=p.metadata)
            for i, p in enumerate(prompts)]


@dataclass
class _Outstanding:
    lease: pb.Lease
    deadline: float


@dataclass
class _Worker:
    leases_completed: int = 0
    fingerprint: str = ""
    last_seen: float = 0.0


@dataclass
class GenerationStats:
    generation: int
    reward_mean: float
    reward_max: float
    reward_std: float
    heldout_reward: float | None
    seconds: float
    generated_tokens: int
    update_norm: float
    prompts_with_spread: float  # share of prompts whose rewards differ across members

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


class Coordinator:
    """One run: hands out leases, collects rewards, shapes, updates, logs."""

    def __init__(self, cfg: RunConfig, lm: LoadedModel, run_dir: Path,
                 on_generation: Callable[[GenerationStats], None] = lambda s: None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg, self.lm, self.run_dir, self.clock = cfg, lm, run_dir, clock
        self.on_generation = on_generation
        self.task: Task = load_task(cfg.task.name, cfg.task.seed, cfg.task.heldout_size)
        self.max_new_tokens = cfg.task.max_new_tokens or self.task.max_new_tokens
        self.targets = find_targets(lm.model, cfg.es.target_modules, cfg.es.exclude_modules)
        self.updater = EsUpdater(self.targets, cfg.es.seed, cfg.es.rank, step_rule(es_settings(cfg)))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.log = UpdateLog(run_dir / "updates.jsonl")
        self._metrics = open(run_dir / "metrics.jsonl", "w", encoding="utf-8")
        self.history: list[GenerationStats] = []
        self.workers: dict[str, _Worker] = {}
        self.fingerprint_mismatches = 0
        self.lease_reassignments = 0
        self.generation = 0
        self.training_done = False  # no more updates; only the final held-out evaluation remains
        self.finished = threading.Event()
        self.train_started: float | None = None
        self.weights_fingerprint = fingerprint(self.targets)
        self._lease_ids = itertools.count()
        self._lock = threading.RLock()
        self._open_generation()

    # -- schedule -----------------------------------------------------------------

    def train_prompts(self, generation: int) -> list[TaskPrompt]:
        """The P prompts every member answers in a generation; seeded, never held-out."""
        rng = random.Random(f"{self.cfg.es.seed}:{generation}")
        return rng.sample(self.task.train, min(self.cfg.train.prompts_per_member, len(self.task.train)))

    def _sampling(self) -> pb.Sampling:
        return pb.Sampling(max_new_tokens=self.max_new_tokens, temperature=self.cfg.train.temperature,
                           chat_template=self.cfg.task.chat_template)

    def _new_lease(self, **fields) -> pb.Lease:
        return pb.Lease(lease_id=f"g{self.generation}-{next(self._lease_ids)}", generation=self.generation,
                        sampling=self._sampling(), deadline_seconds=self.cfg.train.lease_timeout_seconds, **fields)

    def _open_generation(self) -> None:
        g, tr = self.generation, self.cfg.train
        self.gen_started = self.clock()
        self.gen_tokens = 0
        self.pending: deque[pb.Lease] = deque()
        self.outstanding: dict[str, _Outstanding] = {}
        self.heldout: float | None = None
        if g % tr.eval_every == 0 or self.training_done:
            self.pending.append(self._new_lease(kind=pb.LEASE_KIND_EVAL,
                                                prompts=_proto_prompts(self.task.heldout)))
        if self.training_done:
            return
        self.prompts = self.train_prompts(g)
        n = self.cfg.es.population
        self.rewards = np.full((n, len(self.prompts)), np.nan)
        chunk = tr.members_per_lease or n
        for start in range(0, n, chunk):
            self.pending.append(self._new_lease(kind=pb.LEASE_KIND_TRAIN, member_start=start,
                                                member_end=min(n, start + chunk), sigma=self.cfg.es.sigma,
                                                prompts=_proto_prompts(self.prompts)))

    # -- worker-facing ---------------------------------------------------------------

    def join(self, worker_id: str) -> None:
        with self._lock:
            self.workers.setdefault(worker_id, _Worker()).last_seen = self.clock()

    def get_work(self, worker_id: str, applied_generation: int) -> pb.GetWorkResponse:
        with self._lock:
            if applied_generation > self.generation:
                raise ValueError(f"applied_generation {applied_generation} is ahead of the run ({self.generation})")
            self.join(worker_id)
            response = pb.GetWorkResponse(updates=self.log.since(applied_generation))
            if self.finished.is_set():
                response.finished = True
                return response
            self._reclaim_expired()
            if not self.pending:
                response.retry_after_seconds = 0.05
                return response
            lease = self.pending.popleft()
            if self.train_started is None:
                self.train_started = self.clock()
            self.outstanding[lease.lease_id] = _Outstanding(lease, self.clock() + lease.deadline_seconds)
            response.lease.CopyFrom(lease)
            return response

    def _reclaim_expired(self) -> None:
        now = self.clock()
        for lease_id, out in list(self.outstanding.items()):
            if out.deadline < now:
                del self.outstanding[lease_id]
                self.pending.appendleft(out.lease)
                self.lease_reassignments += 1

    def report(self, req: pb.ReportResultRequest) -> pb.ReportResultResponse:
        with self._lock:
            out = self.outstanding.get(req.lease_id)
            if out is None or req.generation != self.generation:
                return pb.ReportResultResponse(accepted=False, reason="late or duplicate result: dropped")
            lease = out.lease
            rows = (lease.member_end - lease.member_start) if lease.kind == pb.LEASE_KIND_TRAIN else 1
            expected = rows * len(lease.prompts)
            if len(req.rewards) != expected or len(req.statuses) != expected:
                raise ValueError(f"lease {req.lease_id} needs {expected} rewards and statuses, "
                                 f"got {len(req.rewards)} and {len(req.statuses)}")
            worker = self.workers.setdefault(req.worker_id, _Worker())
            worker.last_seen, worker.fingerprint = self.clock(), req.weights_fingerprint
            if req.weights_fingerprint != self.weights_fingerprint:
                self.fingerprint_mismatches += 1
                del self.outstanding[req.lease_id]
                self.pending.appendleft(lease)
                return pb.ReportResultResponse(accepted=False, reason="weights fingerprint mismatch: dropped")
            ok = np.array(req.statuses) == reward_pb2.SCORE_STATUS_OK
            rewards = np.where(ok, np.array(req.rewards, dtype=np.float64), np.nan).reshape(rows, -1)
            if lease.kind == pb.LEASE_KIND_EVAL:
                self.heldout = float(np.nanmean(rewards)) if ok.any() else math.nan
            else:
                self.rewards[lease.member_start:lease.member_end] = rewards
            del self.outstanding[req.lease_id]
            worker.leases_completed += 1
            self.gen_tokens += req.generated_tokens
            if not self.pending and not self.outstanding:
                self._close_generation()
            return pb.ReportResultResponse(accepted=True)

    # -- the update ------------------------------------------------------------------

    def _close_generation(self) -> None:
        if self.training_done:
            self._record_stats(math.nan, math.nan, math.nan, 0.0, 0.0)
            self._finish()
            return
        es = self.cfg.es
        fitness = shape_fitness(self.rewards, es.shaping, es.failed_samples)
        record = pb.UpdateRecord(generation=self.generation, noise_epoch=self.generation // es.noise_reuse,
                                 lr=es.lr, sigma=es.sigma, fitness=fitness.tolist())
        self.log.append(record)
        norm = self.updater.apply(record.noise_epoch, record.lr, fitness)
        self.weights_fingerprint = fingerprint(self.targets)
        r = self.rewards
        spread = float(np.mean(np.nanmax(r, axis=0) > np.nanmin(r, axis=0))) if np.isfinite(r).any() else 0.0
        self._record_stats(float(np.nanmean(r)), float(np.nanmax(r)), float(np.nanstd(r)), norm, spread)
        self.generation += 1
        budget = self.cfg.train.time_budget_seconds
        out_of_time = budget > 0 and self.clock() - (self.train_started or 0.0) >= budget
        if self.generation >= self.cfg.train.generations or out_of_time:
            self.training_done = True
        self._open_generation()

    def _record_stats(self, mean: float, best: float, std: float, norm: float, spread: float) -> None:
        stats = GenerationStats(self.generation, mean, best, std, self.heldout, self.clock() - self.gen_started,
                                self.gen_tokens, norm, spread)
        self.history.append(stats)
        row = {**stats.__dict__, "tokens_per_second": stats.tokens_per_second, "final": self.training_done}
        self._metrics.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                        for k, v in row.items()}) + "\n")
        self._metrics.flush()
        self.on_generation(stats)

    def _finish(self) -> None:
        self.log.close()
        self._metrics.close()
        self.finished.set()

    def status(self) -> pb.GetStatusResponse:
        with self._lock:
            now = self.clock()
            return pb.GetStatusResponse(
                run_id=self.run_dir.name, generation=self.generation, total_generations=self.cfg.train.generations,
                finished=self.finished.is_set(), weights_fingerprint=self.weights_fingerprint,
                history=[pb.GenerationSummary(generation=s.generation, reward_mean=s.reward_mean,
                                              reward_max=s.reward_max, seconds=s.seconds,
                                              heldout_reward=math.nan if s.heldout_reward is None else s.heldout_reward)
                         for s in self.history[-20:]],
                workers=[pb.WorkerStatus(worker_id=w_id, leases_completed=w.leases_completed,
                                         weights_fingerprint=w.fingerprint, last_seen_seconds_ago=now - w.last_seen)
                         for w_id, w in sorted(self.workers.items())])
