"""The settings a worker needs (ES, reward services), between the YAML config and the wire.

EsSettings carries the config's `es` fields by name, so a setting is declared once (in
hatchery.es.StepRule or the config's EsConfig) and reaches the wire and every worker's
step rule without a hand-written mapping; tests/unit/test_settings.py fails when a field
exists on one side only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hatchery.core.config import RunConfig
from hatchery.es import StepRule
from hatchery.v1 import optimizer_pb2 as pb

# EsSettings fields that come from elsewhere than the config's `es` section.
_NOT_FROM_ES = {"dtype": lambda cfg: cfg.model.dtype}


def es_settings(cfg: RunConfig) -> pb.EsSettings:
    return pb.EsSettings(**{f.name: _NOT_FROM_ES[f.name](cfg) if f.name in _NOT_FROM_ES else getattr(cfg.es, f.name)
                            for f in pb.EsSettings.DESCRIPTOR.fields})


def reward_settings(cfg: RunConfig) -> pb.RewardSettings:
    rw = cfg.reward
    return pb.RewardSettings(
        services=[pb.RewardEndpoint(addresses=s.addresses, grader=s.grader, weight=s.weight, token_env=s.token_env)
                  for s in rw.services],
        timeout_seconds=rw.timeout_seconds, retries=rw.retries, batch_size=rw.batch_size)


def step_rule(settings: Any) -> StepRule:
    """The step rule of an EsSettings message (a worker) or of the config's es section (the optimizer)."""
    return StepRule(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(StepRule)})
