"""Per-row low-rank perturbations inside one batched forward pass (EGGROLL).

Row b of a batch is evaluated as member m(b) without ever materialising
W + sigma E_m: y_b = x_b W^T + sign_m (sigma / sqrt r) ((x_b B_k) A_k^T), where k
is m's antithetic pair. Forward hooks add the correction to the output of each
targeted layer, so it works inside `generate()` with the KV cache for any HF
model, and the model's structure and state dict stay untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from hatchery.es.noise import low_rank_factors, pair_sign, rank_scale
from hatchery.es.targets import Target


@dataclass(frozen=True)
class NoiseKey:
    """Names the noise of one generation: (run seed, noise epoch)."""

    seed: int
    epoch: int
    rank: int


class PopulationNoise:
    """The factors A, B of a set of antithetic pairs for every target, built once
    per generation and reused across prompts and decode steps."""

    def __init__(self, targets: Sequence[Target], key: NoiseKey, pairs: Sequence[int],
                 dtype: torch.dtype | None = None, device: torch.device | None = None):
        self.key = key
        self.pairs = list(pairs)
        self._slot = {p: i for i, p in enumerate(self.pairs)}
        self.a_t: dict[str, torch.Tensor] = {}  # (pairs, r, out)
        self.b_t: dict[str, torch.Tensor] = {}  # (pairs, r, in)
        for t in targets:
            factors = [low_rank_factors(key.seed, key.epoch, p, t.name, t.out_features, t.in_features, key.rank)
                       for p in self.pairs]
            w = t.weight
            self.a_t[t.name] = torch.stack([a.t() for a, _ in factors]).to(device or w.device, dtype or w.dtype)
            self.b_t[t.name] = torch.stack([b.t() for _, b in factors]).to(device or w.device, dtype or w.dtype)

    def slot(self, pair: int) -> int:
        return self._slot[pair]


def row_layout(members: Sequence[int | None], noise: PopulationNoise, sigma: float,
               device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (slot index, scale) for the given row-to-member map; None = unperturbed."""
    slots, scales = [], []
    scale = sigma * rank_scale(noise.key.rank)
    for m in members:
        if m is None:
            slots.append(0)
            scales.append(0.0)
        else:
            slots.append(noise.slot(m // 2))
            scales.append(pair_sign(m) * scale)
    return (torch.tensor(slots, dtype=torch.long, device=device),
            torch.tensor(scales, dtype=dtype, device=device))


def pair_groups(members: Sequence[int | None]) -> tuple[list[int], int] | None:
    """(pairs in row order, rows per pair) when the rows of each pair are contiguous
    and every pair has the same number of rows, else None.

    In that layout one pair's factors are read once for all of its rows (both
    signs, every prompt) instead of being gathered per row: at decode time the
    factor reads rival the weight reads, so this is what keeps EGGROLL close to
    plain inference.
    """
    if not members or any(m is None for m in members):
        return None
    pairs = [m // 2 for m in members]
    order = list(dict.fromkeys(pairs))
    size, rest = divmod(len(pairs), len(order))
    if rest or pairs != [p for p in order for _ in range(size)]:
        return None
    return order, size


@contextlib.contextmanager
def perturbed(targets: Sequence[Target], noise: PopulationNoise, members: Sequence[int | None],
              sigma: float) -> Iterator[None]:
    """While active, row b of every batch is evaluated as member members[b].

    Batches must keep the row order of `members` (true for greedy and sampled
    `generate()`; expand the map yourself for num_return_sequences or beams).
    """
    w = targets[0].weight
    slots, scales = row_layout(members, noise, sigma, w.device, w.dtype)
    rows = len(members)
    grouped = pair_groups(members)
    if grouped is None:  # any row order: each row gathers its own pair's factors
        groups, index = rows, slots
    else:
        groups, index = len(grouped[0]), torch.tensor([noise.slot(p) for p in grouped[0]], device=w.device)
    whole = groups == len(noise.pairs) and torch.equal(index.cpu(), torch.arange(groups))
    row_scales = scales.view(groups, 1, rows // groups, 1)  # broadcasts over (group, r, row in group, token)

    def make_hook(target: Target):
        a_t, b_t = noise.a_t[target.name], noise.b_t[target.name]
        if not whole:  # gathered once here, not at every decode step
            a_t, b_t = a_t.index_select(0, index), b_t.index_select(0, index)

        def hook(module, args, output):
            x = args[0]
            if x.shape[0] != rows:
                raise RuntimeError(f"batch has {x.shape[0]} rows but the member map has {rows}")
            # (B^T x^T) with the skinny factor on the left runs 2-3x faster on CPU BLAS than x B.
            h_t = torch.bmm(b_t, x.reshape(groups, -1, x.shape[-1]).transpose(1, 2))  # (groups, r, rows*tokens)
            h_t = h_t.view(groups, h_t.shape[1], rows // groups, -1).mul_(row_scales).view_as(h_t)
            return output.view(groups, -1, output.shape[-1]).baddbmm_(h_t.transpose(1, 2), a_t).view_as(output)

        return hook

    handles = [t.module.register_forward_hook(make_hook(t)) for t in targets]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
