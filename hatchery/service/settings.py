"""The settings a worker needs (ES, reward services), between the YAML config and the wire.

EsSettings carries the config's `es` fields by name, so a setting is declared once (in
hatchery.es.StepRule or the config's EsConfig) and reaches the wire and every worker's
step rule without a hand-written mapping; tests/unit/test_settings.py fails when a field
exists on one side only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hatchery.core.config import RunConfig
from hatchery.es import EsUpdater, StepRule, Target
from hatchery.es.lora import SPACES, LoraUpdater
from hatchery.v1 import optimizer_pb2 as pb


def es_settings(cfg: RunConfig) -> pb.EsSettings:
    """Every field from the config's es section, but dtype, which is the model's."""
    return pb.EsSettings(**{f.name: getattr(cfg.es, f.name) for f in pb.EsSettings.DESCRIPTOR.fields
                            if f.name != "dtype"}, dtype=cfg.model.dtype)


def reward_settings(cfg: RunConfig) -> pb.RewardSettings:
    rw = cfg.reward
    return pb.RewardSettings(
        services=[pb.RewardEndpoint(addresses=s.addresses, grader=s.grader, weight=s.weight, token_env=s.token_env)
                  for s in rw.services],
        timeout_seconds=rw.timeout_seconds, retries=rw.retries, batch_size=rw.batch_size)


def step_rule(settings: Any) -> StepRule:
    """The step rule of an EsSettings message (a worker) or of the config's es section (the optimizer)."""
    return StepRule(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(StepRule)})


def make_updater(targets: Sequence[Target], settings: Any) -> EsUpdater | LoraUpdater:
    """The updater of the run's space (es.space), from an EsSettings message or the config's es
    section; an EsSettings without a space (an older optimizer's) is weights space."""
    space = settings.space or "weights"
    if space not in SPACES:  # a newer optimizer's: evolving the wrong thing would go unnoticed
        raise ValueError(f"es.space {space!r} is not one this version knows ({', '.join(SPACES)}): upgrade it")
    if space == "lora":
        return LoraUpdater(targets, settings.seed, settings.lora_rank, settings.lora_alpha, step_rule(settings))
    return EsUpdater(targets, settings.seed, settings.rank, step_rule(settings))
