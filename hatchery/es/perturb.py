"""Per-row low-rank perturbations inside one batched forward pass (EGGROLL).

Row b of a batch is evaluated as member m(b) without ever materialising
W + sigma E_m: y_b = x_b W^T + sign_m (sigma / sqrt r) ((x_b B_k) A_k^T), where k
is m's antithetic pair. Each targeted layer's forward is swapped, for the
duration of a context, for one that computes the correction first and adds
x W^T onto it inside the layer's own matmul, so it works inside `generate()`
with the KV cache for any HF model, and the model's structure and state dict
stay untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hatchery.es.noise import low_rank_factors, pair_sign, rank_scale
from hatchery.es.targets import Target


@dataclass(frozen=True)
class NoiseKey:
    """Names the noise of one generation: (run seed, noise epoch)."""

    seed: int
    epoch: int
    rank: int


def factor_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32 on a CPU whatever the weights' dtype (a small batched matmul runs 2-5x slower
    there in bf16 than in float32, and the correction is added in the weights' dtype anyway);
    the weights' own on an accelerator."""
    return torch.float32 if weight.device.type == "cpu" else weight.dtype


class PopulationNoise:
    """The factors A, B of a set of antithetic pairs for every target, built once
    per generation and reused across prompts and decode steps."""

    def __init__(self, targets: Sequence[Target], key: NoiseKey, pairs: Sequence[int],
                 dtype: torch.dtype | None = None, device: torch.device | None = None):
        self.key = key
        self.pairs = list(pairs)
        self._slot = {p: i for i, p in enumerate(self.pairs)}
        w = targets[0].weight
        device, self.dtype = device or w.device, dtype or factor_dtype(w)
        self.a_t: dict[str, torch.Tensor] = {}  # (pairs, r, out)
        self.b_t: dict[str, torch.Tensor] = {}  # (pairs, r, in)
        for t in targets:
            factors = [low_rank_factors(key.seed, key.epoch, p, t.name, t.out_features, t.in_features, key.rank)
                       for p in self.pairs]
            self.a_t[t.name] = torch.stack([a.t() for a, _ in factors]).to(device, self.dtype)
            self.b_t[t.name] = torch.stack([b.t() for _, b in factors]).to(device, self.dtype)

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
    slots, scales = row_layout(members, noise, sigma, w.device, noise.dtype)
    rows = len(members)
    grouped = pair_groups(members)
    if grouped is None:  # any row order: each row gathers its own pair's factors
        groups, index = rows, slots
    else:
        groups, index = len(grouped[0]), torch.tensor([noise.slot(p) for p in grouped[0]], device=w.device)
    whole = groups == len(noise.pairs) and torch.equal(index.cpu(), torch.arange(groups))

    def gathered(factors: torch.Tensor) -> torch.Tensor:  # once here, not at every decode step
        return factors if whole else factors.index_select(0, index)

    projections = _SharedProjections(targets, {t.name: gathered(noise.b_t[t.name]) for t in targets},
                                     scales.view(groups, 1, rows // groups, 1), noise.key.rank)

    def make_forward(target: Target) -> Callable[[torch.Tensor], torch.Tensor]:
        a_t, name, module = gathered(noise.a_t[target.name]), target.name, target.module
        w_t = module.weight if target.transposed else module.weight.t()  # (in, out) views, no copy

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != rows:
                raise RuntimeError(f"batch has {x.shape[0]} rows but the member map has {rows}")
            y = torch.bmm(projections.of(name, x), a_t)  # (groups, rows-in-group x tokens, out)
            return plus_layer_output(y, x, module, w_t)

        return forward

    with swapped_forwards(targets, make_forward):
        yield


def plus_layer_output(correction: torch.Tensor, x: torch.Tensor, module: nn.Module,
                      w_t: torch.Tensor) -> torch.Tensor:
    """The layer's own output, x W^T (+ bias), accumulated onto a per-row correction by the
    matmul itself, in the weights' dtype: an in-place add after the layer would stream its
    whole output through memory again."""
    flat = correction.to(w_t.dtype).reshape(-1, correction.shape[-1])
    if module.bias is not None:
        flat.add_(module.bias)
    flat.addmm_(x.reshape(-1, x.shape[-1]), w_t)
    return flat.view(*x.shape[:-1], flat.shape[-1])


@contextlib.contextmanager
def swapped_forwards(targets: Sequence[Target],
                     make_forward: Callable[[Target], Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """While active, each target's layer runs make_forward(target) instead of its own forward."""
    replaced = [t.name.removesuffix(".weight") for t in targets if "forward" in t.module.__dict__]
    if replaced:  # perturbing would bypass it, and it would be lost on exit
        raise RuntimeError(f"{replaced[0]}: its forward is already replaced (accelerate's offloading hooks, "
                           "or an enclosing perturbation); a perturbation swaps in its own")
    forwards = {t.name: make_forward(t) for t in targets}
    for t in targets:  # an instance attribute shadows the class's forward until deleted
        t.module.forward = forwards[t.name]
    try:
        yield
    finally:
        for t in targets:
            del t.module.forward


def sibling_runs(targets: Sequence[Target]) -> list[tuple[str, ...]]:
    """Consecutive targets of one parent module with one input width: the candidates for
    one shared input (q, k, v of an attention; gate and up of an MLP)."""
    runs: list[tuple[str, ...]] = []
    last = None
    for t in targets:
        key = (t.name.rsplit(".", 2)[0], t.in_features)
        if runs and key == last:
            runs[-1] += (t.name,)
        else:
            runs.append((t.name,))
        last = key
    return runs


class _SharedProjections:
    """Each target's scaled B^T x, one batched matmul per input tensor: targets fed the same
    input (q, k and v; gate and up) share it, which saves 3 of the 7 projections of a
    Llama block.

    Siblings are guessed from the structure (sibling_runs) and confirmed as the model runs:
    a target that does not see the very tensor its elder sibling saw (o_proj after q, k, v)
    is split off, with those after it, for the rest of the context.
    """

    def __init__(self, targets: Sequence[Target], b_t: dict[str, torch.Tensor], row_scales: torch.Tensor,
                 rank: int):
        self.row_scales, self.rank = row_scales, rank  # row_scales: (groups, 1, rows per group, 1)
        runs = sibling_runs(targets)
        self.place = {name: (run, i) for run in runs for i, name in enumerate(run)}
        self.factors = {run: torch.cat([b_t[n] for n in run], dim=1) for run in runs}
        self.latest: dict[tuple[str, ...], tuple[torch.Tensor, Sequence[torch.Tensor]]] = {}  # run -> (input, hs)

    def of(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(groups, rows-in-group x tokens, r): the scaled x B of target `name` fed x."""
        run, i = self.place[name]
        if i and (run not in self.latest or self.latest[run][0] is not x):
            run, i = self._split(run, i), 0
        if i:
            hs = self.latest[run][1]
            if i == len(run) - 1:  # the last sibling: release the input
                del self.latest[run]
            return hs[i]
        # (B^T x^T) with the skinny factor on the left runs 2-3x faster on CPU BLAS than x B.
        groups, rows_per_group = self.row_scales.shape[0], self.row_scales.shape[2]
        factors = self.factors[run]
        h_t = torch.bmm(factors, x.reshape(groups, -1, x.shape[-1]).to(factors.dtype).transpose(1, 2))
        h_t.view(groups, h_t.shape[1], rows_per_group, -1).mul_(self.row_scales)
        hs = h_t.transpose(1, 2).split(self.rank, dim=2)
        if len(run) > 1:
            self.latest[run] = (x, hs)
        return hs[0]

    def _split(self, run: tuple[str, ...], i: int) -> tuple[str, ...]:
        """Splits `run` before its i-th target; returns the part from it on."""
        head, tail = run[:i], run[i:]
        factors = self.factors.pop(run)
        self.factors[head], self.factors[tail] = factors[:, :i * self.rank], factors[:, i * self.rank:]
        self.place.update({n: (part, j) for part in (head, tail) for j, n in enumerate(part)})
        self.latest.pop(run, None)  # every target of head has run
        return tail
