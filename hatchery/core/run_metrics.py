"""A run's metrics.jsonl: one JSON row per generation, written and read here only.

The optimizer appends a row as each generation closes (MetricsLog); the plot, the
breakdown, ablations and a resumed optimizer read the rows back (metrics_rows). A
row whose reward_mean is None trained nothing: the held-out evaluation that ends a run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hatchery.core.failpoints import failpoint
from hatchery.core.run_files import writing

# Where a worker's time went, as it reports it (ReportResultRequest.<part>_seconds); the
# optimizer adds "optimizer_update" for what it did on the generation's critical path (shaping
# and the log append; with train.overlap_update off, also its own update and checkpoint) and,
# when its own update ran beside the next generation, "optimizer_update_overlapped": seconds
# that are not part of the generation's wall time.
WORKER_TIME_SPLIT = ("generate", "reward", "update", "noise")
OPTIMIZER_TIME_SPLIT = "optimizer_update"
OVERLAPPED_TIME_SPLIT = "optimizer_update_overlapped"


@dataclass
class GenerationStats:
    """One row of metrics.jsonl."""

    generation: int
    reward_mean: float | None  # None: no training in this generation (the run's final evaluation)
    reward_max: float | None
    reward_std: float | None
    heldout_reward: float | None  # None: no held-out evaluation before this generation
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
    # The first held-out prompts with the completions the evaluation got: prompt, reference,
    # completion, reward (None when not scored OK).
    heldout_samples: list[dict] = field(default_factory=list)
    sub_scores: dict[str, float] = field(default_factory=dict)  # the graders' sub-scores, mean over samples scored OK
    drift_kl: float | None = None  # at a held-out evaluation: KL(current || start) per token of general text
    probe_loglik: float | None = None  # and that text's mean log-likelihood per token (hatchery.core.drift)

    @property
    def trained(self) -> bool:
        return self.reward_mean is not None

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> str:
        """The row; NaN (nothing scored) and infinity (past float range) are written as null, as
        JSON has neither. `final` marks the run's last row, its final evaluation."""
        row = {**asdict(self), "tokens_per_second": self.tokens_per_second, "final": not self.trained}
        return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})

    @classmethod
    def from_row(cls, row: dict) -> GenerationStats:
        """A row read back; keys this version does not know (a newer writer's) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})


def metrics_rows(path: str | Path) -> list[dict]:
    """The rows of a run dir's metrics.jsonl, or of a metrics file named directly. A last line
    cut short (a crash or a full disk mid-write) is left out; a bad line before it is refused."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path}:{number}: not a metrics row: {err}") from None
    return rows


class MetricsLog:
    """The optimizer's writer of metrics.jsonl, one row per generation as it closes.

    A generation's row is written last, after its update record, the optimizer's own update
    and checkpoint, so a record without a row belongs to a generation that did not finish
    (with train.overlap_update its record may have gone out with the next leases; the
    optimizer reruns that generation and tells a worker that applied it to join again).
    Opening the log keeps the rows of the `logged` generations (dropping any of one that did
    not finish) and the final evaluation's, and says in `history` which generations closed.
    """

    def __init__(self, path: Path, logged: int):
        self.path = path
        rows = [GenerationStats.from_row(r) for r in metrics_rows(path)] if path.exists() else []
        # the final evaluation's row (no training, generation == logged) says the run is over
        self.history = [r for r in rows if r.generation < logged or (r.generation == logged and not r.trained)]
        tmp = path.with_suffix(".tmp")
        with writing(tmp):
            tmp.write_text("".join(r.to_json() + "\n" for r in self.history), encoding="utf-8")
            os.replace(tmp, path)
            self._file = open(path, "a", encoding="utf-8")

    def append(self, stats: GenerationStats) -> None:
        with writing(self.path):
            failpoint("metrics_append", stats.generation)
            self._file.write(stats.to_json() + "\n")
            self._file.flush()
        self.history.append(stats)

    def close(self) -> None:
        self._file.close()


def training_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["reward_mean"] is not None]


def _evaluations(rows: list[dict]) -> list[tuple[float, dict]]:
    """(training seconds, row) of each held-out evaluation: taken before its generation
    trains, so it sits at the time the earlier generations took (evaluations are off that clock)."""
    found, elapsed = [], 0.0
    for r in rows:
        if r["heldout_reward"] is not None:
            found.append((elapsed, r))
        if r["reward_mean"] is not None:
            elapsed += r["seconds"]
    return found


def heldout_curve(rows: list[dict]) -> list[tuple[float, float, float]]:
    """(training seconds, held-out reward, its standard error) of a run."""
    return [(t, r["heldout_reward"], r.get("heldout_stderr") or 0.0) for t, r in _evaluations(rows)]


def drift_curve(rows: list[dict]) -> list[tuple[float, float, float]]:
    """(training seconds, KL from the start model, probe log-likelihood) at each evaluation
    that measured drift (hatchery.core.drift)."""
    return [(t, r["drift_kl"], r["probe_loglik"]) for t, r in _evaluations(rows) if r.get("drift_kl") is not None]


def progress_line(stats: GenerationStats, total: int) -> str:
    """One generation as the optimizer and `hatchery watch` print it."""
    parts = [f"gen {stats.generation:>4}/{total}"]
    parts.append(f"reward mean {stats.reward_mean:.3f} max {stats.reward_max:.3f}" if stats.trained
                 else "final evaluation      ")
    if stats.heldout_reward is None:
        parts.append("held-out   -          ")
    else:
        parts.append(f"held-out {stats.heldout_reward:.3f}+-{stats.heldout_stderr or 0.0:.3f}")
    if stats.trained:
        parts.append(f"{stats.tokens_per_second:6.1f} tok/s  {stats.seconds:5.2f} s/gen")
    if stats.heldout_seconds:
        parts.append(f"(evaluation {stats.heldout_seconds:.2f} s)")
    if stats.failed_samples:
        parts.append(f"{stats.failed_samples} samples not scored")
    return "  ".join(parts)
