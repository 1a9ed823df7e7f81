"""The ES core: noise, per-row perturbation, shaping, update. No gRPC here."""

from hatchery.es.noise import low_rank_factors, noise_seed, sampling_seed
from hatchery.es.perturb import NoiseKey, PopulationNoise, perturbed
from hatchery.es.shaping import FailedSamples, Shaping, shape_fitness
from hatchery.es.targets import Target, find_targets
from hatchery.es.update import (
    LR_SCHEDULES,
    OPTIMIZERS,
    EsUpdater,
    NonFiniteUpdate,
    StepRule,
    check_update,
    es_gradient,
    scheduled_lr,
)

__all__ = [
    "LR_SCHEDULES", "OPTIMIZERS", "EsUpdater", "FailedSamples", "NoiseKey", "NonFiniteUpdate", "PopulationNoise",
    "Shaping", "StepRule", "Target", "check_update", "es_gradient", "find_targets", "low_rank_factors", "noise_seed",
    "perturbed", "sampling_seed", "scheduled_lr", "shape_fitness",
]
