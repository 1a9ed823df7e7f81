"""The ES update: W <- W + lr * (1/N) sum_i f_i E_i, one matmul per matrix.

With antithetic pairs, sum_i f_i E_i = sum_k (f_2k - f_2k+1) A_k B_k^T / sqrt(r),
computed as (A * c) B^T over all pairs at once: rank <= N r / 2 per step, full
rank over many steps. It accumulates in a float32 master copy of every target
even when the model computes in bf16/fp16, where updates of 1e-5 would vanish.

An anchored step (StepRule.anchor_decay) also moves the weights a fraction lr * anchor_decay
of the way back to the start weights, to bound how far a run drifts from what the model
knew (hatchery.core.drift measures it); like every step it is a function of the update
record and the start model only, so it replays identically on every worker.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hatchery.es.noise import low_rank_factors, rank_scale
from hatchery.es.perturb import PopulationNoise, perturbed
from hatchery.es.targets import Target

LR_SCHEDULES = ("constant", "linear")
OPTIMIZERS = ("sgd", "momentum", "adam")
_MOMENTS = ("adam_m", "adam_v", "momentum")  # per-matrix optimizer state, by state_dict prefix


def scheduled_lr(lr: float, schedule: str, progress: float) -> float:
    """The step size once `progress` (0 to 1) of the training budget is spent: constant, or
    decayed linearly to 0 at the end of the budget (smaller steps, less noise, late in a run)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    return lr if schedule == "constant" else lr * max(0.0, 1.0 - progress)


@dataclass(frozen=True)
class StepRule:
    """How an ES gradient becomes a step."""

    optimizer: str = "sgd"  # one of OPTIMIZERS
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0  # pulls the weights toward zero: - lr * weight_decay * W per step
    momentum: float = 0.9  # "momentum": decay of the running average of ES gradients
    anchor_decay: float = 0.0  # pulls them toward the start weights W0: - lr * anchor_decay * (W - W0)


def gradient_factors(target: Target, seed: int, epoch: int, rank: int,
                     fitness: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(G, B) with G @ B^T = (1/N) sum_i f_i E_i for one matrix (float32, CPU), the
    coefficients folded into G; None when every pair's coefficient is 0."""
    f = np.asarray(fitness, dtype=np.float64)
    pair_coeff = f[0::2] - f[1::2]
    live = np.flatnonzero(pair_coeff)
    if len(live) == 0:
        return None
    factors = [low_rank_factors(seed, epoch, int(k), target.name, target.out_features, target.in_features, rank)
               for k in live]
    a = torch.cat([a for a, _ in factors], dim=1)  # (out, K r)
    b = torch.cat([b for _, b in factors], dim=1)  # (in, K r)
    c = torch.tensor(np.repeat(pair_coeff[live], rank) * rank_scale(rank) / len(f), dtype=torch.float32)
    return a * c, b


def es_gradient(target: Target, seed: int, epoch: int, rank: int, fitness: Sequence[float]) -> torch.Tensor:
    """(1/N) sum_i f_i E_i for one matrix, logical (out x in), float32 on CPU."""
    factors = gradient_factors(target, seed, epoch, rank, fitness)
    if factors is None:
        return torch.zeros(target.out_features, target.in_features)
    g, b = factors
    return g @ b.t()


def low_rank_norm_sq(g: torch.Tensor, b: torch.Tensor) -> float:
    """||G B^T||_F^2 from the two small Gram matrices, without forming G B^T."""
    return float(((g.double().t() @ g.double()) * (b.double().t() @ b.double())).sum())


# No entry of a step may exceed this: float32 weights overflow at 3.4e38, and no real update
# comes within 30 orders of magnitude of it.
MAX_STEP_ENTRY = 1e30
# |A|, |B| entries never exceed this: torch.randn draws by Box-Muller, |z| <= sqrt(-2 ln u) for
# its smallest uniform u, which is no smaller than 2^-53: 8.6.
MAX_NOISE = 9.0


class NonFiniteUpdate(ValueError):
    """An update that would make the weights NaN or infinite; nothing was changed."""


def check_update(lr: float, rank: int, fitness: Sequence[float]) -> None:
    """NonFiniteUpdate unless every entry of a weights-space step is finite and at most
    MAX_STEP_ENTRY: a pair's noise A B^T / sqrt(r) has entries of at most r MAX_NOISE^2 / sqrt(r)."""
    check_step_bound(lr, fitness, rank * MAX_NOISE**2 * rank_scale(rank))


def check_step_bound(lr: float, fitness: Sequence[float], noise_bound: float) -> None:
    """NonFiniteUpdate unless every entry of the step is finite and at most MAX_STEP_ENTRY, from a
    bound that needs no noise: |step| <= lr sum_k |f_2k - f_2k+1| noise_bound / N, where
    noise_bound bounds the entries of one pair's noise."""
    f = np.asarray(fitness, dtype=np.float64)
    if not np.isfinite(f).all() or not math.isfinite(lr):
        bad = next((float(x) for x in f if not math.isfinite(x)), lr)
        raise NonFiniteUpdate(f"refusing an update that would not leave the weights finite: it holds {bad}")
    with np.errstate(over="ignore"):
        bound = abs(lr) * float(np.abs(f[0::2] - f[1::2]).sum()) * noise_bound / len(f)
    if not bound <= MAX_STEP_ENTRY:
        raise NonFiniteUpdate(f"refusing an update whose entries could reach {bound:.3g} (lr {lr:g}): "
                              "the weights would not stay finite")


def rule_step(rule: StepRule, moments: dict[str, dict[str, torch.Tensor]], steps: int, name: str,
              grad: torch.Tensor, lr: float) -> torch.Tensor:
    """The step `rule` takes along the ES gradient `grad` of tensor `name` at step number `steps`
    (from 1), updating that tensor's moments (kind -> name -> tensor) in place."""
    if rule.optimizer == "sgd":
        return lr * grad
    if rule.optimizer == "momentum":  # a bias-corrected average: the first step is SGD's
        m = moments["momentum"].setdefault(name, torch.zeros_like(grad))
        m.mul_(rule.momentum).add_(grad, alpha=1 - rule.momentum)
        return lr * m / (1 - rule.momentum ** steps)
    m = moments["adam_m"].setdefault(name, torch.zeros_like(grad))
    v = moments["adam_v"].setdefault(name, torch.zeros_like(grad))
    m.mul_(rule.adam_beta1).add_(grad, alpha=1 - rule.adam_beta1)
    v.mul_(rule.adam_beta2).addcmul_(grad, grad, value=1 - rule.adam_beta2)
    m_hat = m / (1 - rule.adam_beta1 ** steps)
    v_hat = v / (1 - rule.adam_beta2 ** steps)
    return lr * m_hat / (v_hat.sqrt() + rule.adam_eps)


def no_moments() -> dict[str, dict[str, torch.Tensor]]:
    return {kind: {} for kind in _MOMENTS}


def moments_state(moments: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The moments as state_dict entries, "<kind>/<tensor name>"."""
    return {f"{kind}/{n}": m for kind, of_kind in moments.items() for n, m in of_kind.items()}


def moments_from_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The moments a moments_state() put in a state_dict (copies: the state stays the caller's)."""
    return {kind: {k.removeprefix(f"{kind}/"): v.clone() for k, v in state.items() if k.startswith(f"{kind}/")}
            for kind in _MOMENTS}


class EsUpdater:
    """Applies update records to a model's targets; replays identically anywhere."""

    def __init__(self, targets: Sequence[Target], seed: int, rank: int, rule: StepRule = StepRule()):
        if rule.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {rule.optimizer!r}")
        self.targets = list(targets)
        self.seed, self.rank, self.rule = seed, rank, rule
        # float32 CPU weights are their own master copy; others get a float32 clone.
        self.master = {t.name: self._master_of(t) for t in self.targets}
        # The start weights, kept only for an anchored step: in the dtype they were loaded in,
        # which holds them exactly (the float32 master began as their float32 copy), so a
        # bf16 model's anchor costs 2 bytes per perturbed weight, a float32 model's 4.
        self.anchor = {t.name: t.logical_weight().detach().cpu().clone() for t in self.targets} \
            if rule.anchor_decay else {}
        self.moments = no_moments()
        self.steps = 0

    def check(self, lr: float, fitness: Sequence[float]) -> None:
        """NonFiniteUpdate for a step that would not leave the weights finite."""
        check_update(lr, self.rank, fitness)

    def perturbed(self, noise: PopulationNoise, members: Sequence[int | None],
                  sigma: float) -> contextlib.AbstractContextManager[None]:
        """Row b of every batch runs as member members[b] while the context is active."""
        return perturbed(self.targets, noise, members, sigma)

    def apply(self, epoch: int, lr: float, fitness: Sequence[float]) -> float:
        """One step; returns the update's global L2 norm. NonFiniteUpdate (and nothing changed)
        for a step that would not leave the weights finite."""
        self.check(lr, fitness)
        self.steps += 1
        norm_sq = 0.0
        plain_sgd = self.rule.optimizer == "sgd" and not self.rule.weight_decay
        for t in self.targets:
            w = self.master[t.name]
            if plain_sgd:  # the step is low rank (and the anchor's pull): added in place, never formed
                factors = gradient_factors(t, self.seed, epoch, self.rank, fitness)
                if factors is None and not self.rule.anchor_decay:
                    continue  # nothing moves this matrix
                if self.rule.anchor_decay:
                    norm_sq += self._pull_to_start(t.name, lr, factors)
                if factors is not None:
                    g, b = factors
                    w.addmm_(g, b.t(), alpha=lr)
                    norm_sq += lr * lr * low_rank_norm_sq(g, b)
            else:
                step = rule_step(self.rule, self.moments, self.steps, t.name,
                                 es_gradient(t, self.seed, epoch, self.rank, fitness), lr)
                if self.rule.weight_decay:
                    step = step - lr * self.rule.weight_decay * w
                if self.rule.anchor_decay:
                    step = step - lr * self.rule.anchor_decay * (w - self.anchor[t.name].float())
                w.add_(step)
                norm_sq += float(step.double().pow(2).sum())
            self._store(t)
        return norm_sq ** 0.5

    def _pull_to_start(self, name: str, lr: float, factors: tuple[torch.Tensor, torch.Tensor] | None) -> float:
        """W -= c (W - W0) in place, c = lr * anchor_decay, before the low-rank step lr G B^T is
        added; returns what the pull adds to the step's squared norm,
        c^2 ||W - W0||^2 - 2 lr c <G B^T, W - W0>, without forming G B^T."""
        c = lr * self.rule.anchor_decay
        w = self.master[name]
        d = w - self.anchor[name]  # float32 whatever the anchor's dtype
        flat = d.view(-1)
        added = c * c * float(torch.dot(flat, flat))
        if factors is not None:
            g, b = factors
            added -= 2 * lr * c * float(((d @ b) * g).sum())
        w.sub_(d, alpha=c)
        return added

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a replay from here needs: float32 master weights and the optimizer's moments."""
        return {**{f"master/{n}": w.contiguous() for n, w in self.master.items()}, **moments_state(self.moments)}

    def load_state_dict(self, state: dict[str, torch.Tensor], steps: int) -> None:
        """Restores a state_dict() taken after `steps` updates, weights included."""
        missing = sorted(f"master/{t.name}" for t in self.targets if f"master/{t.name}" not in state)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} target(s), e.g. {missing[0]}")
        for t in self.targets:
            w = self.master[t.name]
            w.copy_(state[f"master/{t.name}"])
            self._store(t)
        self.moments = moments_from_state(state)
        self.steps = steps

    @staticmethod
    def _aliased(t: Target) -> bool:
        return t.weight.dtype == torch.float32 and t.weight.device.type == "cpu"

    def _store(self, t: Target) -> None:
        """Copies the master into the model's weight unless they are one tensor."""
        if not self._aliased(t):
            with torch.no_grad():
                t.weight.copy_(t.to_stored(self.master[t.name]).to(t.weight.dtype))

    def _master_of(self, t: Target) -> torch.Tensor:
        w = t.logical_weight()
        return w if self._aliased(t) else w.float().cpu().clone()
