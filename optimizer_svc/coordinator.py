"""The optimizer's run state machine: leases out, rewards in, one update per generation.

Transport-free: the gRPC servicer and the in-process reference run both drive
this class, so the services and the reference take exactly the same steps.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import yaml

from hatchery.core.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    remove_partial_checkpoints,
    replay,
    write_checkpoint,
)
from hatchery.core.config import RunConfig
from hatchery.core.failpoints import failpoint
from hatchery.core.model import LoadedModel, fingerprint
from hatchery.core.prompt_schedule import PromptSchedule
from hatchery.core.tasks import Task, TaskPrompt, load_task
from hatchery.core.update_log import UpdateLog, UpdateRecord
from hatchery.es import EsUpdater, find_targets, sampling_seed, scheduled_lr, shape_fitness
from hatchery.service.settings import es_settings, step_rule
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import reward_pb2


def _proto_prompts(prompts: list[TaskPrompt]) -> list[pb.Prompt]:
    return [pb.Prompt(index=i, text=p.text, reference=p.reference, metadata=p.metadata)
            for i, p in enumerate(prompts)]


WORKER_TIME_SPLIT = ("generate", "reward", "update", "noise")  # the ReportResultRequest.*_seconds fields


@dataclass
class _Outstanding:
    lease: pb.Lease
    deadline: float
    worker_id: str


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
    seconds: float  # training wall time: the held-out evaluation before it is not counted
    generated_tokens: int
    update_norm: float
    prompts_with_spread: float  # share of prompts whose rewards differ across members
    failed_samples: int = 0  # samples whose reward came back not OK (see es.failed_samples)
    # Where the time went, summed over the generation's accepted reports (worker seconds)
    # and the optimizer's own update (shaping, log append, its weights, checkpoint).
    time_split: dict[str, float] = field(default_factory=dict)
    heldout_stderr: float | None = None  # standard error of heldout_reward over the held-out prompts
    heldout_seconds: float = 0.0  # wall time of the held-out evaluation, kept off the training clock
    prompts: list[int] = field(default_factory=list)  # indices of the training prompts answered
    spread_prompts: list[int] = field(default_factory=list)  # those whose rewards differed across members

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self, final: bool) -> str:
        row = {**self.__dict__, "tokens_per_second": self.tokens_per_second, "final": final}
        return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})

    @classmethod
    def from_json(cls, line: str) -> GenerationStats:
        row = json.loads(line)
        del row["tokens_per_second"], row["final"]
        optional = ("heldout_reward", "heldout_stderr")
        return cls(**{k: (math.nan if v is None and k not in optional else v) for k, v in row.items()})


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
        self.checkpoint_dir = run_dir / "checkpoints"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "updates.jsonl").exists():
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.log = UpdateLog(run_dir / "updates.jsonl")
        self.checkpoint = self._restore_weights()
        self.generation = len(self.log.records)
        self.schedule = PromptSchedule(len(self.task.train), cfg.train.prompts_per_member, cfg.es.seed,
                                       cfg.train.prompt_selection)
        self.history = self._restore_history()
        for stats in self.history:
            self.schedule.observe(stats.prompts, stats.spread_prompts)
        self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.workers: dict[str, _Worker] = {}
        self.fingerprint_mismatches = 0
        self.lease_reassignments = 0
        self.lease_releases = 0
        # training_done: no more updates; only the final held-out evaluation remains
        self.training_done = self._training_over()
        self.finished = threading.Event()
        self.started = False  # a first lease went out: the clock no longer waits for a worker
        self.weights_fingerprint = fingerprint(self.targets)
        # Lease ids never repeat across restarts, so a result for a lease of an earlier process is dropped.
        self._lease_prefix = secrets.token_hex(4)
        self._lease_ids = itertools.count()
        self._lock = threading.RLock()
        self._open_generation()

    # -- resume -------------------------------------------------------------------

    def _restore_weights(self) -> Checkpoint | None:
        """Weights after every logged record: the newest checkpoint plus the records after it."""
        remove_partial_checkpoints(self.checkpoint_dir)
        ckpt, records = latest_checkpoint(self.checkpoint_dir), self.log.records
        if ckpt is not None and ckpt.generation > len(records):
            raise ValueError(f"{ckpt.path} covers {ckpt.generation} generations but the log holds {len(records)}")
        return replay(self.updater, self.checkpoint_dir, records, len(records))

    def _restore_history(self) -> list[GenerationStats]:
        """Metrics of the logged generations; rows of a generation that did not finish are dropped."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = [GenerationStats.from_json(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        kept = [r for r in rows if r.generation < self.generation]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(r.to_json(final=False) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)
        return kept

    # -- schedule -----------------------------------------------------------------

    def _sampling(self, kind: pb.LeaseKind) -> pb.Sampling:
        """Held-out evaluation is greedy; training samples at train.temperature with noise
        shared by the members, so sampling adds no noise of its own to their fitness."""
        sampling = pb.Sampling(max_new_tokens=self.max_new_tokens, chat_template=self.cfg.task.chat_template,
                               stop_rule=self._stop_rule())
        if kind == pb.LEASE_KIND_TRAIN and self.cfg.train.temperature > 0:
            sampling.temperature = self.cfg.train.temperature
            sampling.sampling_seed = sampling_seed(self.cfg.es.seed, self.generation)
        return sampling

    def _stop_rule(self) -> str:
        """The task's early stop, unless switched off or the run scores with reward services of
        its own (their graders may read more of a completion)."""
        cfg = self.cfg
        return self.task.stop_rule_for(cfg.grader) if cfg.task.early_stop and not cfg.reward.services else ""

    def _new_lease(self, kind: pb.LeaseKind, **fields) -> pb.Lease:
        lease_id = f"{self._lease_prefix}-g{self.generation}-{next(self._lease_ids)}"
        return pb.Lease(lease_id=lease_id, kind=kind, generation=self.generation, sampling=self._sampling(kind),
                        deadline_seconds=self.cfg.train.lease_timeout_seconds, **fields)

    def _open_generation(self) -> None:
        """Queues the held-out evaluation when one is due, else the training leases: the
        evaluation runs alone, so its time is measured apart and kept off the training clock."""
        g, tr = self.generation, self.cfg.train
        self.gen_started = self.clock()
        self.gen_tokens = 0
        self.gen_split = dict.fromkeys(WORKER_TIME_SPLIT, 0.0)
        self.pending: deque[pb.Lease] = deque()
        self.outstanding: dict[str, _Outstanding] = {}
        self.heldout: float | None = None
        self.heldout_stderr: float | None = None
        self.heldout_seconds = 0.0
        self.prompt_indices: list[int] = []  # the training leases' prompts and rewards, once they are queued
        self.rewards = np.full((self.cfg.es.population, 0), np.nan)
        if g % tr.eval_every == 0 or self.training_done:
            self.pending.append(self._new_lease(pb.LEASE_KIND_EVAL,
                                                prompts=_proto_prompts(self.task.heldout)))
        else:
            self._queue_training()

    def _queue_training(self) -> None:
        """The population's leases; every member answers the same P training prompts."""
        tr = self.cfg.train
        self.prompt_indices = self.schedule.pick(self.generation)
        prompts = [self.task.train[i] for i in self.prompt_indices]
        n = self.cfg.es.population
        self.rewards = np.full((n, len(prompts)), np.nan)
        chunk = tr.members_per_lease or n
        for start in range(0, n, chunk):
            self.pending.append(self._new_lease(pb.LEASE_KIND_TRAIN, member_start=start,
                                                member_end=min(n, start + chunk), sigma=self.cfg.es.sigma,
                                                prompts=_proto_prompts(prompts)))

    # -- worker-facing ---------------------------------------------------------------

    def join(self, worker_id: str) -> None:
        with self._lock:
            self.workers.setdefault(worker_id, _Worker()).last_seen = self.clock()

    def get_work(self, worker_id: str, applied_generation: int) -> pb.GetWorkResponse:
        with self._lock:
            if applied_generation > self.generation:
                raise ValueError(f"applied_generation {applied_generation} is ahead of the run ({self.generation})")
            self.join(worker_id)
            response = pb.GetWorkResponse(updates=[pb.UpdateRecord(**dataclasses.asdict(r))
                                                   for r in self.log.since(applied_generation)])
            if self.finished.is_set():
                response.finished = True
                return response
            self._reclaim_expired()
            if not self.pending:
                response.retry_after_seconds = 0.05
                return response
            lease = self.pending.popleft()
            if not self.started:
                self.started, self.gen_started = True, self.clock()  # not counting the wait for a first worker
            self.outstanding[lease.lease_id] = _Outstanding(lease, self.clock() + lease.deadline_seconds, worker_id)
            response.lease.CopyFrom(lease)
            return response

    def release(self, worker_id: str, lease_id: str) -> bool:
        """Queues a lease its worker will not finish first in line again; False (and nothing
        changed) when it is not out with that worker."""
        with self._lock:
            out = self.outstanding.get(lease_id)
            if out is None or out.worker_id != worker_id:
                return False
            del self.outstanding[lease_id]
            self.pending.appendleft(out.lease)
            self.lease_releases += 1
            return True

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
            if req.generated_tokens > expected * lease.sampling.max_new_tokens:
                raise ValueError(f"generated_tokens {req.generated_tokens} is more than the lease allows "
                                 f"({expected} x {lease.sampling.max_new_tokens})")
            worker = self.workers.setdefault(req.worker_id, _Worker())
            worker.last_seen, worker.fingerprint = self.clock(), req.weights_fingerprint
            if req.weights_fingerprint != self.weights_fingerprint:
                self.fingerprint_mismatches += 1
                del self.outstanding[req.lease_id]
                self.pending.appendleft(lease)
                return pb.ReportResultResponse(accepted=False, resync=True,
                                               reason="weights fingerprint mismatch: dropped; resync")
            ok = np.array(req.statuses) == reward_pb2.SCORE_STATUS_OK
            rewards = np.where(ok, np.array(req.rewards, dtype=np.float64), np.nan).reshape(rows, -1)
            del self.outstanding[req.lease_id]
            worker.leases_completed += 1
            if lease.kind == pb.LEASE_KIND_EVAL:
                self._close_evaluation(rewards[0][ok])
                return pb.ReportResultResponse(accepted=True)
            self.rewards[lease.member_start:lease.member_end] = rewards
            self.gen_tokens += req.generated_tokens
            for part in WORKER_TIME_SPLIT:
                self.gen_split[part] += getattr(req, f"{part}_seconds")
            if not self.pending and not self.outstanding:
                self._close_generation()
            else:
                failpoint("mid_generation", self.generation)
            return pb.ReportResultResponse(accepted=True)

    def _close_evaluation(self, scored: np.ndarray) -> None:
        """Records the held-out reward, then starts the training clock of the generation."""
        n = len(scored)
        self.heldout = float(scored.mean()) if n else math.nan
        self.heldout_stderr = float(scored.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        self.heldout_seconds = self.clock() - self.gen_started
        self.gen_started = self.clock()
        if self.training_done:
            self._close_generation()
        else:
            self._queue_training()

    # -- the update ------------------------------------------------------------------

    def _close_generation(self) -> None:
        if self.training_done:
            self._record_stats(math.nan, math.nan, math.nan, 0.0, 0.0)
            self._finish()
            return
        es = self.cfg.es
        started = self.clock()
        fitness = shape_fitness(self.rewards, es.shaping, es.failed_samples)
        lr = scheduled_lr(es.lr, es.lr_schedule, self._budget_spent())
        record = UpdateRecord(generation=self.generation, noise_epoch=self.generation // es.noise_reuse,
                              lr=lr, sigma=es.sigma, fitness=tuple(fitness.tolist()))
        self.log.append(record)
        failpoint("log_appended", self.generation)
        norm = self.updater.apply(record.noise_epoch, record.lr, fitness)
        self.weights_fingerprint = fingerprint(self.targets)
        every = self.cfg.train.checkpoint_every
        if every and (self.generation + 1) % every == 0:
            self.checkpoint = write_checkpoint(self.checkpoint_dir, self.generation + 1, self.updater.state_dict(),
                                               self.updater.steps, self.cfg.train.checkpoints_kept)
        self.gen_split["optimizer_update"] = self.clock() - started
        r = self.rewards
        differs = np.nanmax(r, axis=0) > np.nanmin(r, axis=0) if np.isfinite(r).any() else np.zeros(r.shape[1], bool)
        spread_prompts = [i for i, d in zip(self.prompt_indices, differs) if d]
        self.schedule.observe(self.prompt_indices, spread_prompts)
        self._record_stats(float(np.nanmean(r)), float(np.nanmax(r)), float(np.nanstd(r)), norm,
                           float(np.mean(differs)), int(np.sum(~np.isfinite(r))), spread_prompts)
        self.generation += 1
        if self._training_over():
            self.training_done = True
        self._open_generation()

    def _budget_spent(self) -> float:
        """The share of the training budget spent: of its generations or of its training time (this
        process's and earlier ones', evaluations not counted), whichever runs out first."""
        tr = self.cfg.train
        spent = self.generation / tr.generations
        if tr.time_budget_seconds > 0:
            spent = max(spent, sum(s.seconds for s in self.history) / tr.time_budget_seconds)
        return spent

    def _training_over(self) -> bool:
        return self._budget_spent() >= 1.0

    def _record_stats(self, mean: float, best: float, std: float, norm: float, spread: float,
                      failed: int = 0, spread_prompts: list[int] | None = None) -> None:
        stats = GenerationStats(self.generation, mean, best, std, self.heldout, self.clock() - self.gen_started,
                                self.gen_tokens, norm, spread, failed, self.gen_split, self.heldout_stderr,
                                self.heldout_seconds, self.prompt_indices, spread_prompts or [])
        self.history.append(stats)
        self._metrics.write(stats.to_json(final=self.training_done) + "\n")
        self._metrics.flush()
        self.on_generation(stats)

    def _finish(self) -> None:
        self.log.close()
        self._metrics.close()
        self.finished.set()

    def checkpoint_info(self) -> pb.CheckpointInfo | None:
        with self._lock:
            c = self.checkpoint
            return pb.CheckpointInfo(generation=c.generation, path=str(c.path.resolve()),
                                     size_bytes=c.path.stat().st_size) if c else None

    def open_checkpoint(self, generation: int) -> BinaryIO:
        """The newest checkpoint's file, opened (so pruning cannot pull it away mid-stream);
        LookupError when `generation` is not the newest."""
        with self._lock:
            c = self.checkpoint
            if c is None or c.generation != generation:
                raise LookupError(f"no checkpoint for generation {generation}"
                                  + (f"; the newest covers {c.generation}" if c else ""))
            return open(c.path, "rb")

    def status(self) -> pb.GetStatusResponse:
        with self._lock:
            now = self.clock()
            return pb.GetStatusResponse(
                run_id=self.run_dir.name, generation=self.generation, total_generations=self.cfg.train.generations,
                finished=self.finished.is_set(), weights_fingerprint=self.weights_fingerprint,
                last_checkpoint=self.checkpoint_info(), fingerprint_mismatches=self.fingerprint_mismatches,
                lease_reassignments=self.lease_reassignments, lease_releases=self.lease_releases,
                history=[pb.GenerationSummary(generation=s.generation, reward_mean=s.reward_mean,
                                              reward_max=s.reward_max, seconds=s.seconds,
                                              heldout_reward=math.nan if s.heldout_reward is None else s.heldout_reward)
                         for s in self.history[-20:]],
                workers=[pb.WorkerStatus(worker_id=w_id, leases_completed=w.leases_completed,
                                         weights_fingerprint=w.fingerprint, last_seen_seconds_ago=now - w.last_seen)
                         for w_id, w in sorted(self.workers.items())])
