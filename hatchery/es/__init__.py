"""The ES core: noise, per-row perturbation, shaping, update. No gRPC here."""

from hatchery.es.noise import dense_noise, low_rank_factors, noise_seed, sampling_seed
from hatchery.es.openes import materialised_member, member_noise, openes_update
from hatchery.es.perturb import NoiseKey, PopulationNoise, perturbed
from hatchery.es.shaping import FailedSamples, Shaping, shape_fitness
from hatchery.es.targets import Target, find_targets
from hatchery.es.update import LR_SCHEDULES, OPTIMIZERS, EsUpdater, StepRule, es_gradient, scheduled_lr

__all__ = [
    "LR_SCHEDULES", "OPTIMIZERS", "EsUpdater", "FailedSamples", "NoiseKey", "PopulationNoise", "Shaping", "StepRule",
    "Target", "dense_noise", "es_gradient", "find_targets", "low_rank_factors", "materialised_member",
    "member_noise", "noise_seed", "openes_update", "perturbed", "sampling_seed", "scheduled_lr", "shape_fitness",
]
