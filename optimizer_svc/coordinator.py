"""The optimizer's run state machine: leases out, rewards in, one update per generation.

Transport-free: the gRPC servicer and the in-process reference run both drive
this class, so the services and the reference take exactly the same steps. The
lease logic is in leases.py, the generation in flight in generation.py, the
metrics rows in hatchery.core.run_metrics; this class ties them to the update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import yaml

from hatchery.core.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    remove_partial_checkpoints,
    replay,
    write_checkpoint,
)
from hatchery.core.config import RunConfig
from hatchery.core.drift import Drift, DriftMonitor
from hatchery.core.failpoints import failpoint
from hatchery.core.model import LoadedModel, fingerprint, read_lora_adapter
from hatchery.core.prompt_data import run_task
from hatchery.core.prompt_schedule import PromptSchedule
from hatchery.core.run_files import RunFilesError, writing
from hatchery.core.run_metrics import WORKER_TIME_SPLIT, GenerationStats, MetricsLog
from hatchery.core.tasks import Task, TaskPrompt
from hatchery.core.update_log import UpdateLog, UpdateRecord
from hatchery.es import NonFiniteUpdate, find_targets, sampling_seed, scheduled_lr, shape_fitness
from hatchery.service.prompts import lease_prompt
from hatchery.service.run_state import state_name
from hatchery.service.settings import make_updater
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import reward_pb2
from optimizer_svc.control import RunControl
from optimizer_svc.generation import Generation, HeldOut
from optimizer_svc.leases import LeaseBook

log = logging.getLogger("hatchery.optimizer")


def _proto_prompts(prompts: Sequence[TaskPrompt]) -> list[pb.Prompt]:
    return [lease_prompt(i, p) for i, p in enumerate(prompts)]


@dataclass
class _Worker:
    leases_completed: int = 0
    fingerprint: str = ""
    last_seen: float = 0.0
    device: str = ""  # as the worker said at join


MAX_WORKERS = 10_000  # workers kept in the registry; the least recently seen go first
STATUS_WORKERS = 100  # workers GetStatus lists, the most recently seen
HELDOUT_SAMPLES = 4  # completions of each held-out evaluation kept in its metrics row, for watchers
MAX_COMPLETION_CHARS = 16_384  # of each, as kept
PAUSED_RETRY_SECONDS = 1.0  # how often a worker asks again while the run is paused


class Coordinator:
    """One run: hands out leases, collects rewards, shapes, updates, logs."""

    def __init__(self, cfg: RunConfig, lm: LoadedModel, run_dir: Path,
                 on_generation: Callable[[GenerationStats], None] = lambda s: None,
                 clock: Callable[[], float] = time.monotonic,
                 write_outputs: Callable[[], None] = lambda: None):
        """`write_outputs` writes what a finished run leaves besides its logs (the model, the
        plot); it runs once the final evaluation is in, off the RPC that brought it."""
        self.cfg, self.lm, self.run_dir, self.clock = cfg, lm, run_dir, clock
        self.on_generation, self.write_outputs = on_generation, write_outputs
        self.task: Task = run_task(cfg)
        self.max_new_tokens = cfg.task.max_new_tokens or self.task.max_new_tokens
        self.targets = find_targets(lm.model, cfg.es.target_modules, cfg.es.exclude_modules)
        self.updater = make_updater(self.targets, cfg.es)
        self.checkpoint_dir = run_dir / "checkpoints"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "updates.jsonl").exists():
            with writing(run_dir / "config.yaml"):
                (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.log = UpdateLog(run_dir / "updates.jsonl")
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", len(self.log.records))
        self.history = self.metrics.history
        self._drop_unannounced_record()
        self.checkpoint = self._restore_weights()
        self.generation = len(self.log.records)
        self.schedule = PromptSchedule(len(self.task.train), cfg.train.prompts_per_member, cfg.es.seed,
                                       cfg.train.prompt_selection)
        for stats in self.history:
            self.schedule.observe(stats.prompts, stats.spread_prompts)
        self.leases = LeaseBook()
        self.workers: OrderedDict[str, _Worker] = OrderedDict()  # least recently seen first
        # A live worker calls at least once per lease; one not seen for twice the lease timeout is gone.
        self.worker_forget_seconds = 2 * cfg.train.lease_timeout_seconds
        self.fingerprint_mismatches = 0
        self.control = RunControl.load(run_dir)
        # made from the weights as they are now, before any update, or read back from the run dir
        self.drift = (DriftMonitor.open(run_dir, lm, cfg.train.drift_probe, at_start=not self.log.records)
                      if cfg.train.drift else None)
        self._drift: tuple[threading.Thread, list[Drift]] | None = None  # the measurement under way
        # Set while the weights match every logged record; clear while the optimizer's own update
        # runs beside the next generation (train.overlap_update), which no result may meet first.
        self.weights_ready = threading.Event()
        self.weights_ready.set()
        self._unrecorded_seconds = 0.0  # of the closed generation whose row the update thread writes
        self._paused_since = self.clock() if self.control.paused else None
        # training_done: no more updates; only the final held-out evaluation remains
        self.training_done = self._training_over()
        self.finished = threading.Event()  # training and the final evaluation are done: workers may go
        self.completed = threading.Event()  # and the outputs are written (or the run failed)
        self.failure = ""  # why the run stopped short of its budget; empty while it runs or when it ends well
        self.started = False  # a first lease went out: the clock no longer waits for a worker
        self._weights_fingerprint = fingerprint(self.targets)
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)  # notified on every row, state change and end
        with self._lock:
            if self.history and not self.history[-1].trained:  # restarted after its final evaluation
                self.current = Generation(self.generation, self.clock(), cfg.es.population)
                self._finish()
            else:
                self._open_generation()

    def _drop_unannounced_record(self) -> None:
        """A last record whose generation has no metrics row was appended by a process that died
        (or could not write) before the generation's row: the generation reruns and writes the
        same record again. With train.overlap_update the record may have gone out with the next
        generation's leases; a worker that applied it is told to join again (get_work)."""
        logged, closed = len(self.log.records), len(self.history)
        if closed == logged - 1:
            self.log.drop_last()
            for ckpt in list_checkpoints(self.checkpoint_dir):  # written for it before its row was
                if ckpt.generation > len(self.log.records):
                    ckpt.path.unlink()
        elif closed < logged:
            raise ValueError(f"{self.metrics.path} holds rows for {closed} generations but {self.log.path} "
                             f"holds {logged} records: restore the metrics file, or start a new run")

    def _restore_weights(self) -> Checkpoint | None:
        """Weights after every logged record: the newest checkpoint plus the records after it."""
        remove_partial_checkpoints(self.checkpoint_dir)
        if self.cfg.model.adapter and self.cfg.es.space == "lora":
            self._write_start_adapter()
        ckpt, records = latest_checkpoint(self.checkpoint_dir), self.log.records
        if ckpt is not None and ckpt.generation > len(records):
            raise ValueError(f"{ckpt.path} covers {ckpt.generation} generations but the log holds {len(records)}")
        return replay(self.updater, self.checkpoint_dir, records, len(records))

    def _write_start_adapter(self) -> None:
        """A lora-space run from model.adapter starts at that adapter: checkpoint 0, which is never
        pruned, so workers join at it and a replay from the start begins there. Written again
        if it is missing: the adapter is checked against start.json's hash, so it is the same."""
        if latest_checkpoint(self.checkpoint_dir, at_most=0) is None:
            self.updater.start_from(read_lora_adapter(self.cfg.model.adapter))
            write_checkpoint(self.checkpoint_dir, 0, self.updater.state_dict(), 0, self.cfg.train.checkpoints_kept)

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
        return pb.Lease(lease_id=self.leases.new_id(self.generation), kind=kind, generation=self.generation,
                        sampling=self._sampling(kind), deadline_seconds=self.cfg.train.lease_timeout_seconds,
                        **fields)

    def _open_generation(self) -> None:
        """Queues the held-out evaluation when one is due, else the training leases: the
        evaluation runs alone, so its time is measured apart and kept off the training clock."""
        self.current = Generation(self.generation, self.clock(), self.cfg.es.population)
        if self.generation % self.cfg.train.eval_every == 0 or self.training_done:
            self.leases.queue(self._new_lease(pb.LEASE_KIND_EVAL, prompts=_proto_prompts(self.task.heldout),
                                              return_completions=HELDOUT_SAMPLES))
            self._start_drift()
        else:
            self._queue_training()

    def _queue_training(self) -> None:
        """The population's leases; every member answers the same P training prompts."""
        self.current.train_on(self.schedule.pick(self.generation))
        prompts = _proto_prompts([self.task.train[i] for i in self.current.prompt_indices])
        n = self.cfg.es.population
        chunk = self.cfg.train.members_per_lease or n
        for start in range(0, n, chunk):
            self.leases.queue(self._new_lease(pb.LEASE_KIND_TRAIN, member_start=start,
                                              member_end=min(n, start + chunk), sigma=self.cfg.es.sigma,
                                              prompts=prompts))

    # -- worker-facing ---------------------------------------------------------------

    def join(self, worker_id: str, device: str = "") -> None:
        with self._lock:
            self._seen(worker_id).device = device

    def _seen(self, worker_id: str) -> _Worker:
        """The worker's entry, marked seen now; entries of workers gone for good are dropped, so
        the registry stays bounded however many workers come and go."""
        now = self.clock()
        worker = self.workers.setdefault(worker_id, _Worker())
        worker.last_seen = now
        self.workers.move_to_end(worker_id)
        while len(self.workers) > MAX_WORKERS or \
                next(iter(self.workers.values())).last_seen < now - self.worker_forget_seconds:
            self.workers.popitem(last=False)
        return worker

    def get_work(self, worker_id: str, applied_generation: int) -> pb.GetWorkResponse:
        with self._lock:
            if applied_generation > self.generation + 1:
                raise ValueError(f"applied_generation {applied_generation} is ahead of the run ({self.generation})")
            self._seen(worker_id)
            if applied_generation == self.generation + 1:
                # The worker applied a record this optimizer dropped on restart (announced, but its
                # generation had no row yet): the generation reruns, and the worker joins again.
                return pb.GetWorkResponse(resync=True)
            response = pb.GetWorkResponse(updates=[pb.UpdateRecord(**dataclasses.asdict(r))
                                                   for r in self.log.since(applied_generation)])
            if self.finished.is_set():
                response.finished = True
                return response
            if self.control.paused:
                response.retry_after_seconds = PAUSED_RETRY_SECONDS
                return response
            lease = self.leases.take(worker_id, self.clock())
            if lease is None:
                response.retry_after_seconds = 0.05
                return response
            if not self.started:
                self.started, self.current.started = True, self.clock()  # not counting the wait for a first worker
            response.lease.CopyFrom(lease)
            return response

    def release(self, worker_id: str, lease_id: str) -> bool:
        """Queues a lease its worker will not finish first in line again; False (and nothing
        changed) when it is not out with that worker."""
        with self._lock:
            return self.leases.release(worker_id, lease_id)

    def report(self, req: pb.ReportResultRequest) -> pb.ReportResultResponse:
        with self._lock:
            self._settled()  # a result is checked against weights that include every record announced
            if self.finished.is_set():
                return pb.ReportResultResponse(accepted=False, reason="the run is over: dropped")
            lease = self.leases.held(req.lease_id)
            if lease is None or req.generation != self.generation:
                return pb.ReportResultResponse(accepted=False, reason="late or duplicate result: dropped")
            rows = (lease.member_end - lease.member_start) if lease.kind == pb.LEASE_KIND_TRAIN else 1
            expected = rows * len(lease.prompts)
            if len(req.rewards) != expected or len(req.statuses) != expected:
                raise ValueError(f"lease {req.lease_id} needs {expected} rewards and statuses, "
                                 f"got {len(req.rewards)} and {len(req.statuses)}")
            if any(count > expected for count in req.sub_score_counts.values()):
                raise ValueError(f"sub_score_counts: more than the lease's {expected} samples")
            if len(req.completions) > lease.return_completions:
                raise ValueError(f"lease {req.lease_id} asks for {lease.return_completions} completions, "
                                 f"got {len(req.completions)}")
            if req.generated_tokens > expected * lease.sampling.max_new_tokens:
                raise ValueError(f"generated_tokens {req.generated_tokens} is more than the lease allows "
                                 f"({expected} x {lease.sampling.max_new_tokens})")
            if not self.leases.given_to(req.lease_id, req.worker_id):
                return pb.ReportResultResponse(accepted=False, reason=f"lease {req.lease_id} was not handed to "
                                               f"worker {req.worker_id!r}: dropped")
            worker = self._seen(req.worker_id)
            worker.fingerprint = req.weights_fingerprint
            if req.weights_fingerprint != self._weights_fingerprint:
                self.fingerprint_mismatches += 1
                self.leases.redo(req.lease_id)
                return pb.ReportResultResponse(accepted=False, resync=True,
                                               reason="weights fingerprint mismatch: dropped; resync")
            ok = np.array(req.statuses) == reward_pb2.SCORE_STATUS_OK
            rewards = np.where(ok, np.array(req.rewards, dtype=np.float64), np.nan).reshape(rows, -1)
            self.leases.settle(req.lease_id)
            worker.leases_completed += 1
            try:
                if lease.kind == pb.LEASE_KIND_EVAL:
                    self._close_evaluation(rewards[0], list(req.completions))
                    return pb.ReportResultResponse(accepted=True)
                self.current.add(lease.member_start, rewards, req.generated_tokens,
                                 {part: getattr(req, f"{part}_seconds") for part in WORKER_TIME_SPLIT},
                                 {name: (total, req.sub_score_counts.get(name, 0))
                                  for name, total in req.sub_score_sums.items()})
                if self.leases.idle:
                    self._close_generation()
                else:
                    failpoint("mid_generation", self.generation)
            except RunFilesError as err:  # a full disk, an I/O error: stop, keeping what is durable
                self._fail(f"generation {self.generation}: {err}")
                return pb.ReportResultResponse(accepted=False, reason=f"the run failed: {self.failure}")
            return pb.ReportResultResponse(accepted=True)

    def _start_drift(self) -> None:
        """Measures drift while the workers run the held-out evaluation: the weights do not move
        until it is in. It is evaluation time, off the training clock."""
        if self.drift is None:
            return
        result: list[Drift] = []

        def measure() -> None:
            self.weights_ready.wait()  # the optimizer's own update of the last generation comes first
            result.append(self.drift.measure(self.lm))

        thread = threading.Thread(target=measure, name="drift", daemon=True)
        thread.start()
        self._drift = (thread, result)

    def _drift_measured(self) -> Drift | None:
        if self._drift is None:
            return None
        thread, result = self._drift
        thread.join()
        self._drift = None
        return result[0] if result else None

    def _close_evaluation(self, rewards: np.ndarray, completions: list[str]) -> None:
        """Records the held-out reward (NaN where not scored OK) and the drift, then starts the
        training clock of the generation; or ends the run, when this was its final evaluation or
        a stop was asked for."""
        samples = tuple({"prompt": p.text, "reference": p.reference, "completion": text[:MAX_COMPLETION_CHARS],
                         "reward": float(r) if np.isfinite(r) else None}
                        for p, text, r in zip(self.task.heldout, completions, rewards))
        drift = self._drift_measured()
        self.current.heldout = HeldOut.of(rewards[np.isfinite(rewards)], self.clock() - self.current.started, samples,
                                          drift)
        self.current.started = self.clock()
        if self.control.stop_requested:
            self.training_done = True  # the weights just evaluated are the run's last
        if self.training_done:
            self._record(self.current.final_stats(self.clock()))
            self._finish()
        else:
            self._queue_training()

    # -- the update ------------------------------------------------------------------

    def _close_generation(self) -> None:
        es, gen = self.cfg.es, self.current
        started = self.clock()
        fitness = shape_fitness(gen.rewards, es.shaping, es.failed_samples)
        lr = scheduled_lr(es.lr, es.lr_schedule, self._budget_spent())
        try:  # before the record is durable: a refused update never reaches the log or any worker
            self.updater.check(lr, fitness)
        except NonFiniteUpdate as err:
            self._fail(f"generation {self.generation}: {err} (rewards {_range(gen.rewards)}, shaping {es.shaping})")
            return
        record = UpdateRecord(generation=self.generation, noise_epoch=self.generation // es.noise_reuse,
                              lr=lr, sigma=es.sigma, fitness=tuple(fitness.tolist()))
        self.log.append(record)
        failpoint("log_appended", self.generation)
        self.schedule.observe(gen.prompt_indices, gen.spread_prompts())
        if not self.cfg.train.overlap_update:
            self._update_own_weights(gen, record, fitness, started)
            self._next_generation()
            return
        # The record is durable: the next generation's leases go out with it now, and the
        # optimizer's own update, checkpoint and row follow beside that generation.
        closed = self.clock()
        self.weights_ready.clear()
        self._unrecorded_seconds = closed - gen.started
        self._next_generation()
        threading.Thread(target=self._update_beside, args=(gen, record, fitness, started, closed),
                         name="own-update", daemon=True).start()

    def _next_generation(self) -> None:
        self.generation += 1
        if self._training_over():
            self.training_done = True
        self._open_generation()

    def _update_own_weights(self, gen: Generation, record: UpdateRecord, fitness: np.ndarray, started: float,
                            closed: float | None = None) -> None:
        """Applies a logged record to the optimizer's weights, writes a checkpoint when one is
        due and the generation's row. `closed`: when the generation's leases for the next one
        went out, which ends its time (None: it ends with this update)."""
        own = self.clock()
        norm = self.updater.apply(record.noise_epoch, record.lr, fitness)
        weights = fingerprint(self.targets)
        every = self.cfg.train.checkpoint_every
        checkpoint = None
        if every and (gen.number + 1) % every == 0:
            checkpoint = write_checkpoint(self.checkpoint_dir, gen.number + 1, self.updater.state_dict(),
                                          self.updater.steps, self.cfg.train.checkpoints_kept)
        with self._lock:
            if self.finished.is_set():  # the run failed meanwhile; its files are closed
                return
            self._weights_fingerprint = weights
            self.checkpoint = checkpoint or self.checkpoint
            now = self.clock()
            if closed is None:
                self._record(gen.stats(now, norm, now - started))
            else:
                self._unrecorded_seconds = 0.0  # counted in the row from now on
                self._record(gen.stats(closed, norm, closed - started, overlapped=now - own))

    def _update_beside(self, gen: Generation, record: UpdateRecord, fitness: np.ndarray, started: float,
                       closed: float) -> None:
        """The optimizer's own update while the next generation runs; a failure (a full disk at the
        checkpoint) ends the run as it would have on the critical path.

        It first yields the cores for as long as a worker last took to apply a record: a worker
        on this machine applies the same record now, and that update is on the critical path,
        while this one is needed only when the next generation's first result comes in."""
        try:
            self.finished.wait(gen.longest_update)
            failpoint("own_update", gen.number)
            self._update_own_weights(gen, record, fitness, started, closed)
        except Exception as err:  # no RPC to carry it: the run stops, keeping what is durable
            if not isinstance(err, RunFilesError):
                log.exception("the optimizer's own update of generation %d failed", gen.number)
            with self._lock:
                self._fail(f"generation {gen.number}: {err}")
        finally:
            with self._lock:
                self.weights_ready.set()
                self.changed.notify_all()

    def _budget_spent(self) -> float:
        """The share of the training budget spent: of its generations or of its training time (this
        process's and earlier ones', evaluations not counted), whichever runs out first."""
        tr = self.cfg.train
        spent = self.generation / tr.generations
        if tr.time_budget_seconds > 0:
            seconds = sum(s.seconds for s in self.history) + self._unrecorded_seconds
            spent = max(spent, seconds / tr.time_budget_seconds)
        return spent

    def _training_over(self) -> bool:
        return self.control.stop_requested or self._budget_spent() >= 1.0

    def _record(self, stats: GenerationStats) -> None:
        self.metrics.append(stats)
        self.changed.notify_all()
        self.on_generation(stats)

    def _finish(self) -> None:
        """Workers are told the run is over; the outputs are written in the background."""
        self.log.close()
        self.metrics.close()
        self.finished.set()
        self.changed.notify_all()
        threading.Thread(target=self._complete, name="write-outputs", daemon=True).start()

    def _complete(self) -> None:
        try:
            self.write_outputs()
        except RunFilesError as err:
            with self._lock:
                self.failure = f"the run is complete in its update log, but {err}"
        with self._lock:
            self.completed.set()
            self.changed.notify_all()

    def _fail(self, reason: str) -> None:
        """Ends the run without the generation in flight: its files stay as they were after the
        last good generation (a write cut short is dropped on resume), so nothing NaN is ever
        written and, once the cause is fixed, the run resumes."""
        self.failure = reason
        for f in (self.log, self.metrics):
            with contextlib.suppress(OSError):  # what a full disk refused, it refuses again
                f.close()
        self.finished.set()
        self.completed.set()
        self.changed.notify_all()

    # -- run control -----------------------------------------------------------------

    def state(self) -> pb.RunState:
        with self._lock:
            if self.failure:
                return pb.RUN_STATE_FAILED
            if self.completed.is_set():
                return pb.RUN_STATE_FINISHED
            if self.finished.is_set() or self.training_done or self.control.stop_requested:
                return pb.RUN_STATE_FINISHING
            return pb.RUN_STATE_PAUSED if self.control.paused else pb.RUN_STATE_RUNNING

    def pause(self) -> pb.RunState:
        """No lease goes out until resume(); FinishingError once the run is ending."""
        with self._lock:
            if self.state() not in (pb.RUN_STATE_RUNNING, pb.RUN_STATE_PAUSED):
                raise FinishingError(f"the run is {state_name(self.state())}: there is nothing to pause")
            if not self.control.paused:
                self._set_control(paused=True)
                self._paused_since = self.clock()
            return self.state()

    def resume(self) -> pb.RunState:
        with self._lock:
            if self.control.paused:
                self._set_control(paused=False)
                self.current.started += self.clock() - self._paused_since  # paused time is off the clock
                self._paused_since = None
            return self.state()

    def stop(self) -> pb.RunState:
        """Ends the run after the generation in flight (resuming it first, so that generation can
        finish); nothing changes for a run that is already ending."""
        with self._lock:
            if not self.finished.is_set() and not self.control.stop_requested:
                self.resume()
                self._set_control(stop_requested=True)
            return self.state()

    def _set_control(self, **change: bool) -> None:
        """Durable before it takes effect: a restarted optimizer honours it."""
        control = dataclasses.replace(self.control, **change)
        control.save(self.run_dir)
        self.control = control
        self.changed.notify_all()

    def _settled(self) -> None:
        """Waits (the lock held) until the weights include every announced record and the row
        of each closed generation is written: the optimizer's own update may run beside the
        next generation for a moment."""
        self.changed.wait_for(self.weights_ready.is_set)

    @property
    def weights_fingerprint(self) -> str:
        """The fingerprint of the optimizer's weights with every announced record applied."""
        with self._lock:
            self._settled()
            return self._weights_fingerprint

    def rows_since(self, generation: int) -> list[GenerationStats]:
        """The metrics rows of `generation` and later, as metrics.jsonl holds them."""
        with self._lock:
            self._settled()
            return self.history[generation:]

    # -- for the servicer ------------------------------------------------------------

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
            self._settled()
            now = self.clock()
            return pb.GetStatusResponse(
                run_id=self.run_dir.name, generation=self.generation, total_generations=self.cfg.train.generations,
                finished=self.finished.is_set(), weights_fingerprint=self.weights_fingerprint,
                last_checkpoint=self.checkpoint_info(), fingerprint_mismatches=self.fingerprint_mismatches,
                lease_reassignments=self.leases.reassignments, lease_releases=self.leases.releases,
                history=[pb.GenerationSummary(generation=s.generation, reward_mean=_or_nan(s.reward_mean),
                                              reward_max=_or_nan(s.reward_max), seconds=s.seconds,
                                              heldout_reward=_or_nan(s.heldout_reward))
                         for s in self.history[-20:]],
                workers_total=len(self.workers), state=self.state(), failure=self.failure,
                training_seconds=sum(s.seconds for s in self.history if s.trained),
                time_budget_seconds=self.cfg.train.time_budget_seconds,
                workers=[pb.WorkerStatus(worker_id=w_id, leases_completed=w.leases_completed,
                                         weights_fingerprint=w.fingerprint, last_seen_seconds_ago=now - w.last_seen,
                                         device=w.device)
                         for w_id, w in itertools.islice(reversed(self.workers.items()), STATUS_WORKERS)])


class FinishingError(ValueError):
    """A control request that makes no sense once the run is ending."""


def _range(rewards: np.ndarray) -> str:
    finite = rewards[np.isfinite(rewards)]
    return f"{finite.min():.3g} to {finite.max():.3g}" if finite.size else "none scored"


def _or_nan(value: float | None) -> float:
    """GetStatus reports "none" (no training, no evaluation) as NaN, as it always has."""
    return float("nan") if value is None else value
