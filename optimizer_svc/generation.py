"""The state of the generation in flight: what its leases have brought in so far.

A generation may start with a held-out evaluation (one lease, run alone so its time
is kept off the training clock), then trains: every member answers the same
training prompts, and the rewards fill a population x prompts matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hatchery.core.drift import Drift
from hatchery.core.run_metrics import OPTIMIZER_TIME_SPLIT, OVERLAPPED_TIME_SPLIT, WORKER_TIME_SPLIT, GenerationStats


@dataclass(frozen=True)
class HeldOut:
    """A held-out evaluation of the unperturbed weights."""

    reward: float  # mean over the samples scored OK; NaN when none was
    stderr: float  # its standard error; NaN with fewer than two samples
    seconds: float  # wall time, kept off the training clock
    samples: tuple[dict, ...] = ()  # the first prompts with their completions, for watchers
    drift: Drift | None = None  # from the start model, on general text; None when not measured

    @classmethod
    def of(cls, scored: np.ndarray, seconds: float, samples: tuple[dict, ...] = (),
           drift: Drift | None = None) -> HeldOut:
        n = len(scored)
        return cls(float(scored.mean()) if n else math.nan,
                   float(scored.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan, seconds, samples, drift)


@dataclass
class Generation:
    """One generation's state, from its first lease to its metrics row."""

    number: int
    started: float  # the training clock's start: reset when the held-out evaluation is in
    population: int
    heldout: HeldOut | None = None
    prompt_indices: list[int] = field(default_factory=list)  # the training prompts, once queued
    rewards: np.ndarray = field(init=False)  # population x prompts; NaN until reported, or not scored OK
    tokens: int = 0
    split: dict[str, float] = field(default_factory=lambda: dict.fromkeys(WORKER_TIME_SPLIT, 0.0))
    parts: dict[str, list[float]] = field(default_factory=dict)  # sub-score name -> [sum, count]
    longest_update: float = 0.0  # the most seconds a worker spent applying records before one of its leases

    def __post_init__(self) -> None:
        self.rewards = np.full((self.population, 0), np.nan)

    def train_on(self, prompt_indices: list[int]) -> None:
        self.prompt_indices = prompt_indices
        self.rewards = np.full((self.population, len(prompt_indices)), np.nan)

    def add(self, member_start: int, rewards: np.ndarray, tokens: int, split: dict[str, float],
            sub_scores: dict[str, tuple[float, int]]) -> None:
        """A training lease's rewards (its members x the prompts), what the worker spent on it,
        and its graders' sub-scores (sum, count)."""
        self.rewards[member_start:member_start + len(rewards)] = rewards
        self.tokens += tokens
        for part in WORKER_TIME_SPLIT:
            self.split[part] += split[part]
        self.longest_update = max(self.longest_update, split["update"])
        for name, (total, count) in sub_scores.items():
            acc = self.parts.setdefault(name, [0.0, 0])
            acc[0] += total
            acc[1] += count

    def _differs(self) -> np.ndarray:
        """Per training prompt: do the members' rewards differ?"""
        r = self.rewards
        return np.nanmax(r, axis=0) > np.nanmin(r, axis=0) if np.isfinite(r).any() else np.zeros(r.shape[1], bool)

    def spread_prompts(self) -> list[int]:
        """The training prompts on which the members' rewards differ."""
        return [i for i, d in zip(self.prompt_indices, self._differs()) if d]

    def stats(self, now: float, update_norm: float, optimizer_seconds: float,
              overlapped: float | None = None) -> GenerationStats:
        """The metrics row of a generation that trained; `overlapped`: the seconds of the
        optimizer's own update that ran beside the next generation, off this one's clock."""
        r = self.rewards
        with np.errstate(over="ignore", invalid="ignore"):  # rewards near float's limit: inf, written as null
            mean, std = float(np.nanmean(r)), float(np.nanstd(r))
        split = {**self.split, OPTIMIZER_TIME_SPLIT: optimizer_seconds}
        if overlapped is not None:
            split[OVERLAPPED_TIME_SPLIT] = overlapped
        return self._stats(now, mean, float(np.nanmax(r)), std, update_norm,
                           float(np.mean(self._differs())), int(np.sum(~np.isfinite(r))), self.spread_prompts(),
                           split)

    def final_stats(self, now: float) -> GenerationStats:
        """The metrics row of the run's last generation: its held-out evaluation, no training."""
        return self._stats(now, None, None, None, 0.0, 0.0, 0, [], self.split)

    def _stats(self, now: float, mean: float | None, best: float | None, std: float | None, norm: float,
               spread: float, failed: int, spread_prompts: list[int], split: dict[str, float]) -> GenerationStats:
        h = self.heldout
        return GenerationStats(self.number, mean, best, std, h.reward if h else None, now - self.started, self.tokens,
                               norm, spread, failed, split, h.stderr if h else None, h.seconds if h else 0.0,
                               self.prompt_indices, spread_prompts, list(h.samples) if h else [],
                               {name: total / count for name, (total, count) in sorted(self.parts.items()) if count},
                               h.drift.kl if h and h.drift else None, h.drift.loglik if h and h.drift else None)
