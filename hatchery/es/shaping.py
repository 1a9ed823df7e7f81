"""Fitness shaping: a rewards matrix (members x prompts) becomes one number per member.

NaN marks a sample whose reward failed. It is never read as 0: the
`failed_samples` policy either drops the member's antithetic pair from the
update or scores the sample as the population's minimum.

Any finite rewards shape to finite fitness: the rewards are first divided by a
power of two that brings them into [-1, 1], which is exact (every sum, mean and
standard deviation scales exactly with it), so a mean of rewards near 1.7e308
cannot overflow, rewards of 1e306 shape as rewards of 1 do, and ordinary
rewards shape to the same bits as without it.
"""

from __future__ import annotations

from enum import Enum

import numpy as np


class Shaping(str, Enum):
    CENTERED_ZSCORE = "centered_zscore"  # per-prompt centring, then global z-score (EGGROLL)
    CENTERED = "centered"  # per-prompt centring only: a step grows with the reward differences behind it
    CENTERED_RANK = "centered_rank"  # centred ranks in [-0.5, 0.5] (OpenAI ES)
    ZSCORE = "zscore"  # z-score of mean rewards (Qiu et al.)
    ANTITHETIC_SIGN = "antithetic_sign"  # sign of each pair's difference


class FailedSamples(str, Enum):
    DROP_PAIR = "drop_pair"
    POPULATION_MIN = "population_min"


MIN_STD = 1e-12  # rewards that differ less than this (unscaled) give no signal


def _zscore(x: np.ndarray, exponent: int) -> np.ndarray:
    std = x.std()
    return np.zeros_like(x) if np.ldexp(std, exponent) < MIN_STD else (x - x.mean()) / std


def _centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5]; ties share their average rank so equal
    rewards give equal (zero-sum) fitness."""
    n = len(x)
    if n < 2:
        return np.zeros_like(x)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=np.float64)
    for value in np.unique(x):
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks / (n - 1) - 0.5


def shape_fitness(rewards: np.ndarray, shaping: Shaping | str = Shaping.CENTERED_ZSCORE,
                  failed: FailedSamples | str = FailedSamples.DROP_PAIR) -> np.ndarray:
    """Shaped fitness f_i for each member of an (N x P) rewards matrix, N even."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] % 2:
        raise ValueError(f"rewards must be (even population x prompts), got shape {r.shape}")
    shaping, failed = Shaping(shaping), FailedSamples(failed)
    bad = ~np.isfinite(r)
    live = np.ones(r.shape[0], dtype=bool)
    if bad.any():
        if failed is FailedSamples.DROP_PAIR:
            bad_pairs = bad.reshape(-1, 2, r.shape[1]).any(axis=(1, 2))
            live = ~np.repeat(bad_pairs, 2)
        else:
            r = np.where(bad, np.nanmin(r) if (~bad).any() else 0.0, r)
    fitness = np.zeros(r.shape[0])
    if not live.any():
        return fitness
    r = r[live]
    exponent = int(np.frexp(np.abs(r).max())[1])  # r = r' * 2**exponent with |r'| < 1, exactly
    r = np.ldexp(r, -exponent)
    if shaping is Shaping.CENTERED_ZSCORE:
        centred = r - r.mean(axis=0, keepdims=True)
        std = centred.std()
        shaped = np.zeros(len(r)) if np.ldexp(std, exponent) < MIN_STD else (centred / std).mean(axis=1)
    elif shaping is Shaping.CENTERED:  # not scale-invariant: the step keeps the rewards' units
        shaped = np.ldexp((r - r.mean(axis=0, keepdims=True)).mean(axis=1), exponent)
    elif shaping is Shaping.CENTERED_RANK:
        shaped = _centered_ranks(r.mean(axis=1))
    elif shaping is Shaping.ZSCORE:
        shaped = _zscore(r.mean(axis=1), exponent)
    else:
        diff = r.mean(axis=1).reshape(-1, 2)
        sign = np.sign(diff[:, 0] - diff[:, 1])
        shaped = np.stack([sign, -sign], axis=1).reshape(-1)
    fitness[live] = shaped
    return fitness
