"""The settings a worker needs (ES, reward services), between the YAML config and the wire."""

from __future__ import annotations

from hatchery.core.config import RunConfig
from hatchery.es import StepRule
from hatchery.v1 import optimizer_pb2 as pb


def es_settings(cfg: RunConfig) -> pb.EsSettings:
    es = cfg.es
    return pb.EsSettings(seed=es.seed, rank=es.rank, population=es.population, noise_reuse=es.noise_reuse,
                         target_modules=es.target_modules, exclude_modules=es.exclude_modules,
                         optimizer=es.optimizer, adam_beta1=es.adam_beta1, adam_beta2=es.adam_beta2,
                         adam_eps=es.adam_eps, weight_decay=es.weight_decay, momentum=es.momentum,
                         dtype=cfg.model.dtype)


def reward_settings(cfg: RunConfig) -> pb.RewardSettings:
    rw = cfg.reward
    return pb.RewardSettings(
        services=[pb.RewardEndpoint(addresses=s.addresses, grader=s.grader, weight=s.weight, token_env=s.token_env)
                  for s in rw.services],
        timeout_seconds=rw.timeout_seconds, retries=rw.retries, batch_size=rw.batch_size)


def step_rule(es: pb.EsSettings) -> StepRule:
    return StepRule(es.optimizer, es.adam_beta1, es.adam_beta2, es.adam_eps, es.weight_decay, es.momentum)
