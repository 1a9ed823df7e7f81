"""The baseline EGGROLL is measured against: perturb the weights in place,
evaluate one member at a time, restore (OpenES / Qiu et al. 2025).

`materialised_member` serves both full-rank Gaussian noise (OpenES) and the
same low-rank noise EGGROLL uses, so benchmarks compare like with like.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hatchery.es.noise import dense_noise, low_rank_factors, pair_sign, rank_scale
from hatchery.es.targets import Target


def member_noise(target: Target, seed: int, epoch: int, member: int, rank: int | None) -> torch.Tensor:
    """E_i (logical out x in) of one member: low-rank when rank is set, dense otherwise."""
    pair = member // 2
    if rank is None:
        e = dense_noise(seed, epoch, pair, target.name, (target.out_features, target.in_features))
    else:
        a, b = low_rank_factors(seed, epoch, pair, target.name, target.out_features, target.in_features, rank)
        e = (a @ b.t()) * rank_scale(rank)
    return e * pair_sign(member)


@contextlib.contextmanager
def materialised_member(targets: Sequence[Target], seed: int, epoch: int, member: int, sigma: float,
                        rank: int | None = None) -> Iterator[None]:
    """Weights are W + sigma E_member while active, restored exactly afterwards."""
    saved = [t.weight.detach().clone() for t in targets]
    try:
        with torch.no_grad():
            for t in targets:
                e = member_noise(t, seed, epoch, member, rank)
                t.weight.add_(t.to_stored(sigma * e).to(t.weight.device, t.weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for t, w in zip(targets, saved):
                t.weight.copy_(w)


def openes_update(targets: Sequence[Target], seed: int, epoch: int, fitness: Sequence[float], lr: float) -> None:
    """W <- W + lr (1/N) sum_i f_i E_i with dense noise, accumulated in float32."""
    f = np.asarray(fitness, dtype=np.float64)
    n = len(f)
    with torch.no_grad():
        for t in targets:
            total = torch.zeros(t.out_features, t.in_features)
            for k, coeff in enumerate(f[0::2] - f[1::2]):
                if coeff:
                    total += float(coeff) * member_noise(t, seed, epoch, 2 * k, None)
            w = t.logical_weight().float() + (lr / n) * total
            t.weight.copy_(t.to_stored(w).to(t.weight.dtype))
