"""A run's metrics.jsonl, read back: one JSON row per generation, as the optimizer wrote it.

A row whose reward_mean is None trained nothing (the held-out evaluation that ends a run).
"""

from __future__ import annotations

import json
from pathlib import Path


def metrics_rows(path: str | Path) -> list[dict]:
    """The rows of a run dir's metrics.jsonl, or of a metrics file named directly."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["reward_mean"] is not None]


def heldout_curve(rows: list[dict]) -> list[tuple[float, float, float]]:
    """(training seconds, held-out reward, its standard error) of a run: each evaluation
    is taken before its generation trains, so it sits at the time the earlier generations
    took (evaluations are off that clock)."""
    curve, elapsed = [], 0.0
    for r in rows:
        if r["heldout_reward"] is not None:
            curve.append((elapsed, r["heldout_reward"], r.get("heldout_stderr") or 0.0))
        if r["reward_mean"] is not None:
            elapsed += r["seconds"]
    return curve
