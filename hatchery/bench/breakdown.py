"""`hatchery breakdown RUN_DIR`: where a run's training time went.

Each training generation's wall time (first training lease out to update done,
on the optimizer's clock; held-out evaluations run apart and are not in it) is
split into what the workers reported (generate: the inference forward passes;
reward: waiting for scores; update: applying update records; noise: building
perturbation factors), the optimizer's part (shaping and the log append; its own
update and checkpoints too when they are not overlapped), and the rest: RPCs and
waiting. With one worker the parts add up to the wall time; with several, worker
seconds overlap and the rest can go negative. The optimizer's own update, when it ran
beside the next generation (train.overlap_update), is reported apart: `overlapped`,
seconds that are in no generation's wall time.
"""

from __future__ import annotations

from pathlib import Path

from hatchery.core.run_metrics import (
    OPTIMIZER_TIME_SPLIT,
    OVERLAPPED_TIME_SPLIT,
    WORKER_TIME_SPLIT,
    metrics_rows,
    training_rows,
)

PARTS = (*WORKER_TIME_SPLIT, OPTIMIZER_TIME_SPLIT)


def time_breakdown(run_dir: str | Path) -> dict:
    train = [r for r in training_rows(metrics_rows(run_dir)) if r.get("time_split")]
    if not train:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'} holds no training generation with a time split")
    wall = sum(r["seconds"] for r in train)
    seconds = {part: sum(r["time_split"].get(part, 0.0) for r in train) for part in PARTS}
    seconds["rpc_and_waiting"] = wall - sum(seconds.values())
    return {"run_dir": str(run_dir), "generations": len(train), "wall_seconds": wall, "seconds": seconds,
            "fraction_of_wall": {part: s / wall for part, s in seconds.items()},
            "overlapped": {OVERLAPPED_TIME_SPLIT: sum(r["time_split"].get(OVERLAPPED_TIME_SPLIT, 0.0) for r in train)}}
