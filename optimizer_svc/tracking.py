"""The run in the trackers people already use: TensorBoard, MLflow, Weights & Biases.

Each generation's metrics row becomes scalars at step = generation (training rewards,
update norm, time split, held-out reward and its standard error, the graders' sub-scores),
and each held-out evaluation a table of its sampled completions. Trackers are fed from a
queue by a thread of their own, so a slow tracking server never holds up a generation,
and a tracker that fails is logged and dropped, never failing the run. Which tracker
run to continue after a restart is kept in RUN_DIR/tracking.json.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hatchery.core.config import RunConfig, trackers
from hatchery.core.run_files import replace_text
from hatchery.core.run_metrics import GenerationStats

log = logging.getLogger("hatchery.tracking")
RECORD = "tracking.json"
SAMPLE_COLUMNS = ("prompt", "reference", "completion", "reward")


def scalars(stats: GenerationStats) -> dict[str, float]:
    """A row's numbers by tracker key; held-out ones only where the generation was evaluated."""
    out: dict[str, float] = {}
    if stats.trained:
        out |= {"train/reward_mean": stats.reward_mean, "train/reward_max": stats.reward_max,
                "train/reward_std": stats.reward_std, "train/seconds": stats.seconds,
                "train/tokens_per_second": stats.tokens_per_second, "train/update_norm": stats.update_norm,
                "train/prompts_with_spread": stats.prompts_with_spread,
                "train/failed_samples": float(stats.failed_samples)}
        out |= {f"time/{part}_seconds": seconds for part, seconds in stats.time_split.items()}
        out |= {f"train/sub_scores/{name}": value for name, value in stats.sub_scores.items()}
    if stats.heldout_reward is not None:
        out["heldout/reward"] = stats.heldout_reward
        if stats.heldout_stderr is not None:
            out["heldout/stderr"] = stats.heldout_stderr
    if stats.drift_kl is not None:
        out["drift/kl"] = stats.drift_kl
        out["drift/probe_loglik"] = stats.probe_loglik
    return {k: float(v) for k, v in out.items() if v is not None and v == v}  # NaN: nothing to plot


def sample_rows(stats: GenerationStats) -> list[list]:
    return [[s[c] for c in SAMPLE_COLUMNS] for s in stats.heldout_samples]


OUTCOMES = ("finished", "failed", "interrupted")  # how a run's process ends; an interrupted run resumes


class Tracker(Protocol):
    def log(self, stats: GenerationStats) -> None: ...

    def close(self, outcome: str) -> None: ...


class _Record:
    """RUN_DIR/tracking.json: the ids of the tracker runs this run writes to."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / RECORD
        self.ids = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def id(self, tracker: str, new: Callable[[], str]) -> str:
        if tracker not in self.ids:
            self.ids[tracker] = new()
            replace_text(self.path, json.dumps(self.ids, indent=2) + "\n")
        return self.ids[tracker]


class TensorBoard:
    def __init__(self, cfg: RunConfig, run_dir: Path, record: _Record):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(cfg.to_dict(), indent=2)}\n```", 0)

    def log(self, stats: GenerationStats) -> None:
        for key, value in scalars(stats).items():
            self.writer.add_scalar(key, value, stats.generation)
        if stats.heldout_samples:
            table = "| " + " | ".join(SAMPLE_COLUMNS) + " |\n|" + "---|" * len(SAMPLE_COLUMNS) + "\n"
            table += "".join("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |\n"
                             for row in sample_rows(stats))
            self.writer.add_text("heldout/samples", table, stats.generation)
        self.writer.flush()

    def close(self, outcome: str) -> None:
        self.writer.close()


class Mlflow:
    def __init__(self, cfg: RunConfig, run_dir: Path, record: _Record):
        from mlflow import MlflowClient

        m = cfg.tracking.mlflow
        if urllib.parse.urlparse(m.tracking_uri).scheme in ("", "file"):
            # MLflow 3 keeps file stores in maintenance and refuses them unless told; the config asked for one
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=m.tracking_uri)
        experiment = self.client.get_experiment_by_name(m.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(m.experiment)

        def new_run() -> str:
            run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"hatchery.run_dir": str(run_dir)})
            self.client.log_dict(run.info.run_id, cfg.to_dict(), "config.json")
            return run.info.run_id

        self.run_id = record.id("mlflow", new_run)
        self.client.update_run(self.run_id, status="RUNNING")  # a resumed run is running again

    def log(self, stats: GenerationStats) -> None:
        from mlflow.entities import Metric

        now = int(1000 * time.time())
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, stats.generation)
                                                    for key, value in scalars(stats).items()])
        if stats.heldout_samples:
            self.client.log_table(self.run_id, data={c: [s[c] for s in stats.heldout_samples] for c in SAMPLE_COLUMNS},
                                  artifact_file=f"heldout/samples-{stats.generation:06d}.json")

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, {"finished": "FINISHED", "failed": "FAILED"}.get(outcome, "KILLED"))


class Wandb:
    def __init__(self, cfg: RunConfig, run_dir: Path, record: _Record):
        import wandb

        w = cfg.tracking.wandb
        run_id = record.id("wandb", lambda: f"{run_dir.name}-{uuid.uuid4().hex[:8]}")
        self.wandb = wandb
        self.run = wandb.init(project=w.project, entity=w.entity or None, mode=w.mode, dir=str(run_dir),
                              id=run_id, name=run_dir.name, resume="allow", config=cfg.to_dict(),
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, stats: GenerationStats) -> None:
        data: dict = scalars(stats)
        if stats.heldout_samples:
            data["heldout/samples"] = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=sample_rows(stats))
        self.run.log(data, step=stats.generation)

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome == "finished" else 1)


TRACKERS: dict[str, Callable[[RunConfig, Path, _Record], Tracker]] = {
    "tensorboard": TensorBoard, "mlflow": Mlflow, "wandb": Wandb}


class TrackerFeed:
    """Hands rows to the run's trackers from a thread of its own."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self._queue: queue.Queue[GenerationStats | None] = queue.Queue()
        record = _Record(run_dir)
        self._trackers: dict[str, Tracker] = {}
        for name in trackers(cfg.tracking):
            try:
                self._trackers[name] = TRACKERS[name](cfg, run_dir, record)
            except Exception as err:  # a tracker that cannot start must not stop the run
                log.warning("tracking: %s is off for this run: %s", name, err)
        self._thread = threading.Thread(target=self._feed, name="trackers", daemon=True)
        self._thread.start()

    def put(self, stats: GenerationStats) -> None:
        self._queue.put(stats)

    def _feed(self) -> None:
        while (stats := self._queue.get()) is not None:
            for name, tracker in list(self._trackers.items()):
                try:
                    tracker.log(stats)
                except Exception as err:
                    log.warning("tracking: %s failed (%s) and is off for the rest of the run", name, err)
                    del self._trackers[name]

    def close(self, outcome: str) -> None:
        """Logs what is queued, then ends each tracker's run with `outcome` (one of OUTCOMES)."""
        self._queue.put(None)
        self._thread.join(timeout=120)
        for name, tracker in self._trackers.items():
            try:
                tracker.close(outcome)
            except Exception as err:
                log.warning("tracking: closing %s failed: %s", name, err)

