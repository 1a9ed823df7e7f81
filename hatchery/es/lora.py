"""ES in LoRA space: the trainable state is an adapter, not the weights.

Each target matrix W0 (out x in) gets an adapter A (r x in), B (out x r), initialised as
PEFT does (A uniform in +-1/sqrt(in), B zero), so the start model is unchanged. The model
holds W = W0 + s B A (s = alpha / r), recomputed from the start weights after every step,
so generating with the current adapter, held-out evaluation and drift are plain forwards.

ES works in unit coordinates of both factors: A = c Â with c = 1/sqrt(in), A's own scale
(PEFT's bound), so member 2k (sign +1) and 2k+1 (sign -1) run A + sign sigma c eps_A and
B + sign sigma eps_B, and the step moves Â (so A by c times it) and B. Without c the noise
on A is sqrt(in) times A itself, and the term sigma^2 eps_B eps_A, which both members of a
pair share, swamps the antithetic one: SmolLM2's members then agree, or all fail, before
any signal shows. eps_A and eps_B are standard normal noise of pair k drawn from the
counter-based keys weights space uses (low_rank_factors gives eps_B and eps_A^T), so
PopulationNoise and factors built ahead serve both spaces. Row by row inside one batched
forward:

    y = x W^T + s sigma [sign ((x A^T) eps_B^T + c (x eps_A^T) B^T) + sigma c (x eps_A^T) eps_B^T]

which is x (W0 + s B_m A_m)^T exactly (in real arithmetic), without forming any member's
adapter. The step moves Â and B along (1/N) sum_i f_i eps_i under the run's StepRule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from hatchery.es.noise import low_rank_factors, noise_seed, pair_sign
from hatchery.es.perturb import PopulationNoise, pair_groups, plus_layer_output, swapped_forwards
from hatchery.es.targets import Target
from hatchery.es.update import (
    MAX_NOISE,
    OPTIMIZERS,
    StepRule,
    check_step_bound,
    moments_from_state,
    moments_state,
    no_moments,
    rule_step,
)

SPACES = ("weights", "lora")  # what ES evolves: the target matrices, or a LoRA adapter over them
PARTS = ("lora_A", "lora_B")


def initial_lora_a(seed: int, name: str, in_features: int, rank: int) -> torch.Tensor:
    """PEFT's start for A (kaiming-uniform with a = sqrt(5): uniform in +-1/sqrt(in)), drawn
    from a counter key of its own so every process starts from the same adapter."""
    gen = torch.Generator(device="cpu").manual_seed(noise_seed(seed, 0, 0, f"<lora_A init>{name}"))
    bound = a_scale(in_features)
    return torch.rand((rank, in_features), generator=gen, dtype=torch.float32).mul_(2 * bound).sub_(bound)


def a_scale(in_features: int) -> float:
    """c: A in units of its own scale, A = c Â (PEFT starts A uniform in +-c)."""
    return 1.0 / math.sqrt(in_features)


def lora_gradient(target: Target, seed: int, epoch: int, rank: int,
                  fitness: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """((1/N) sum_i f_i eps_A,i, (1/N) sum_i f_i eps_B,i) for one target's adapter, in the
    coordinates of Â and B (float32, CPU); None when every pair's coefficient is 0."""
    f = np.asarray(fitness, dtype=np.float64)
    pair_coeff = f[0::2] - f[1::2]
    live = np.flatnonzero(pair_coeff)
    if len(live) == 0:
        return None
    grad_a = torch.zeros(rank, target.in_features)
    grad_b = torch.zeros(target.out_features, rank)
    for k in live:
        eps_b, eps_a_t = low_rank_factors(seed, epoch, int(k), target.name, target.out_features,
                                          target.in_features, rank)
        c = float(pair_coeff[k]) / len(f)
        grad_a.add_(eps_a_t.t(), alpha=c)
        grad_b.add_(eps_b, alpha=c)
    return grad_a, grad_b


class LoraUpdater:
    """Applies update records to an adapter over the targets and keeps the model at W0 + s B A;
    replays identically anywhere, like EsUpdater, whose interface it shares."""

    def __init__(self, targets: Sequence[Target], seed: int, rank: int, alpha: float, rule: StepRule | None = None):
        rule = rule or StepRule()
        if rule.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {rule.optimizer!r}")
        if rule.anchor_decay:
            raise ValueError("anchor_decay is a weights-space step; in LoRA space weight_decay pulls the "
                             "adapter toward zero, which is the start model")
        self.targets = list(targets)
        self.seed, self.rank, self.rule = seed, rank, rule
        self.scaling = alpha / rank
        # W0 in the dtype it was loaded in (holds it exactly); W is recomputed from it.
        self.start = {t.name: t.logical_weight().detach().cpu().clone() for t in self.targets}
        self.adapter = {t.name: {"lora_A": initial_lora_a(seed, t.name, t.in_features, rank),
                                 "lora_B": torch.zeros(t.out_features, rank)} for t in self.targets}
        self.moments = no_moments()
        self.steps = 0

    def start_from(self, adapter: dict[str, dict[str, torch.Tensor]]) -> None:
        """Starts from an existing adapter ({module: {"lora_A", "lora_B"}}, modules named without
        ".weight"); targets it does not cover keep PEFT's start, which leaves them unchanged."""
        by_module = {t.name.removesuffix(".weight"): t for t in self.targets}
        outside = sorted(set(adapter) - set(by_module))
        if outside:
            more = f" and {len(outside) - 1} more modules" if len(outside) > 1 else ""
            raise ValueError(f"the start adapter trains {outside[0]}{more}, which es.target_modules and "
                             "es.exclude_modules leave out: include it")
        for module, parts in adapter.items():
            t = by_module[module]
            for part, tensor in parts.items():
                held = self.adapter[t.name][part]
                if tensor.shape != held.shape:
                    raise ValueError(f"the start adapter's {module}.{part} is {tuple(tensor.shape)}, "
                                     f"lora rank {self.rank} over this model needs {tuple(held.shape)}")
                held.copy_(tensor)
            self._store(t, self._product(t.name))

    def check(self, lr: float, fitness: Sequence[float]) -> None:
        """NonFiniteUpdate unless the step stays finite: |step| <= lr sum_k |f_2k - f_2k+1| MAX_NOISE / N."""
        check_step_bound(lr, fitness, MAX_NOISE)

    def apply(self, epoch: int, lr: float, fitness: Sequence[float]) -> float:
        """One step of the adapter; returns the global L2 norm of the change of the weights W."""
        self.check(lr, fitness)
        self.steps += 1
        plain_sgd = self.rule.optimizer == "sgd" and not self.rule.weight_decay
        norm_sq = 0.0
        for t in self.targets:
            grads = lora_gradient(t, self.seed, epoch, self.rank, fitness)
            if grads is None and plain_sgd:
                continue  # nothing moves this adapter
            parts = self.adapter[t.name]
            if grads is None:  # the optimizer's moments still move the adapter
                grads = (torch.zeros_like(parts["lora_A"]), torch.zeros_like(parts["lora_B"]))
            a_before, b_before = parts["lora_A"].clone(), parts["lora_B"].clone()
            for part, grad in zip(PARTS, grads):
                tensor = parts[part]
                step = rule_step(self.rule, self.moments, self.steps, f"{t.name}.{part}", grad, lr)
                if part == "lora_A":  # a step of Â
                    step = step * a_scale(t.in_features)
                if self.rule.weight_decay:
                    step = step - lr * self.rule.weight_decay * tensor
                tensor.add_(step)
            norm_sq += self.scaling ** 2 * _difference_norm_sq(parts["lora_B"], parts["lora_A"], b_before, a_before)
            self._store(t, self._product(t.name))
        return norm_sq ** 0.5

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a replay from here needs: the adapter (float32) and the optimizer's moments."""
        return {**{f"{part}/{n}": parts[part] for n, parts in self.adapter.items() for part in PARTS},
                **moments_state(self.moments)}

    def load_state_dict(self, state: dict[str, torch.Tensor], steps: int) -> None:
        """Restores a state_dict() taken after `steps` updates and the weights it makes."""
        missing = sorted(f"{part}/{t.name}" for t in self.targets for part in PARTS if f"{part}/{t.name}" not in state)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} adapter matrices, e.g. {missing[0]} "
                             "(a checkpoint of a weights-space run cannot resume in LoRA space)")
        for t in self.targets:
            for part in PARTS:
                self.adapter[t.name][part].copy_(state[f"{part}/{t.name}"])
            self._store(t, self._product(t.name))
        self.moments = moments_from_state(state)
        self.steps = steps

    def perturbed(self, noise: PopulationNoise, members: Sequence[int | None],
                  sigma: float) -> contextlib.AbstractContextManager[None]:
        """Row b of every batch runs member members[b]'s adapter while the context is active."""
        return lora_perturbed(self, noise, members, sigma)

    def _product(self, name: str) -> torch.Tensor:
        """s B A, logical (out x in), float32."""
        parts = self.adapter[name]
        return (parts["lora_B"] @ parts["lora_A"]).mul_(self.scaling)

    def _store(self, t: Target, product: torch.Tensor) -> None:
        """W = W0 + s B A into the model's weight, in its layout and dtype."""
        with torch.no_grad():
            t.weight.copy_(t.to_stored(self.start[t.name].float() + product).to(t.weight.dtype))


def _difference_norm_sq(b: torch.Tensor, a: torch.Tensor, b_before: torch.Tensor, a_before: torch.Tensor) -> float:
    """||B A - B' A'||_F^2 from the factors: with U = [B, B'] and V = [A; -A'], the sum of
    (U^T U) * (V V^T), in float64, without forming an (out x in) matrix."""
    u = torch.cat((b, b_before), dim=1).double()
    v = torch.cat((a, -a_before), dim=0).double()
    return float(((u.t() @ u) * (v @ v.t())).sum())


@contextlib.contextmanager
def lora_perturbed(updater: LoraUpdater, noise: PopulationNoise, members: Sequence[int | None],
                   sigma: float) -> Iterator[None]:
    """While active, row b of every batch runs member members[b]'s adapter (None: the current
    adapter, which the weights hold). Rows keep the order of `members`, as in perturbed()."""
    targets = updater.targets
    device, dtype = targets[0].weight.device, noise.dtype
    rows = len(members)
    grouped = pair_groups(members)
    if grouped is None:  # any row order: each row gathers its own pair's noise
        pair_of_group = [0 if m is None else m // 2 for m in members]
    else:
        pair_of_group = grouped[0]
    groups = len(pair_of_group)
    index = torch.tensor([noise.slot(p) for p in pair_of_group], device=device)
    # Per-row coefficients of the correction: s sigma sign and s sigma^2 (both 0 for None rows).
    signs = torch.tensor([0.0 if m is None else pair_sign(m) for m in members], dtype=torch.float64)
    linear = (updater.scaling * sigma * signs).to(device, dtype).view(groups, rows // groups, 1, 1)
    square = (updater.scaling * sigma * sigma * signs.abs()).to(device, dtype).view(groups, rows // groups, 1, 1)

    def make_forward(target: Target) -> Callable[[torch.Tensor], torch.Tensor]:
        parts = updater.adapter[target.name]
        a_t = parts["lora_A"].t().to(device, dtype)  # (in, r)
        b_t = parts["lora_B"].t().to(device, dtype)  # (r, out)
        eps_a_t = noise.b_t[target.name].index_select(0, index).transpose(1, 2)  # (groups, in, r)
        eps_b_t = noise.a_t[target.name].index_select(0, index)  # (groups, r, out)
        module = target.module
        w_t = module.weight if target.transposed else module.weight.t()  # (in, out) views, no copy

        c = a_scale(target.in_features)
        linear_c, square_c = linear * c, square * c  # the terms in eps_A carry c

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != rows:
                raise RuntimeError(f"batch has {x.shape[0]} rows but the member map has {rows}")
            xg = x.reshape(groups, -1, x.shape[-1]).to(dtype)  # (groups, rows-in-group x tokens, in)
            u = (xg @ a_t).view(groups, rows // groups, -1, a_t.shape[1])  # x A^T, the current adapter
            v = torch.bmm(xg, eps_a_t).view_as(u)  # x eps_A^T
            y = torch.bmm((linear * u + square_c * v).flatten(1, 2), eps_b_t)
            y.add_((linear_c * v).flatten(1, 2) @ b_t)
            return plus_layer_output(y, x, module, w_t)

        return forward

    with swapped_forwards(targets, make_forward):
        yield
