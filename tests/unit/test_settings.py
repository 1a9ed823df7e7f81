"""One declaration per setting: the config, the step rule and the wire agree field by field."""

import dataclasses

from hatchery.core.config import EsConfig, parse_config
from hatchery.core.run_metrics import WORKER_TIME_SPLIT
from hatchery.es import StepRule
from hatchery.service.settings import es_settings, step_rule
from hatchery.v1 import optimizer_pb2 as pb


def test_every_step_rule_setting_is_a_config_key_and_an_es_settings_field():
    config = {f.name: f for f in dataclasses.fields(EsConfig)}
    wire = pb.EsSettings.DESCRIPTOR.fields_by_name
    for f in dataclasses.fields(StepRule):
        assert config[f.name].default == f.default, f.name
        assert f.name in wire, f"hatchery.v1.EsSettings lacks {f.name}"


def test_every_es_settings_field_comes_from_the_config():
    cfg = parse_config({"es": {"optimizer": "adam", "adam_beta1": 0.8, "adam_beta2": 0.95, "adam_eps": 1e-6,
                               "weight_decay": 0.01, "momentum": 0.5, "anchor_decay": 0.5, "seed": 7, "rank": 3,
                               "population": 6, "noise_reuse": 2, "target_modules": ["q_proj"],
                               "exclude_modules": ["v"]},
                        "model": {"dtype": "bfloat16"}})
    settings = es_settings(cfg)
    for field in pb.EsSettings.DESCRIPTOR.fields:  # every field carried over, none left at its zero value
        assert getattr(settings, field.name), field.name
    assert settings.dtype == "bfloat16" and list(settings.target_modules) == ["q_proj"] and settings.rank == 3
    assert step_rule(settings) == step_rule(cfg.es) == StepRule("adam", 0.8, 0.95, 1e-6, 0.01, 0.5,
                                                                   anchor_decay=0.5)


def test_every_part_of_the_time_split_is_a_report_field():
    """A worker reports each part as ReportResultRequest.<part>_seconds; metrics rows and the breakdown
    name them from WORKER_TIME_SPLIT."""
    fields = set(pb.ReportResultRequest.DESCRIPTOR.fields_by_name)
    assert {f"{part}_seconds" for part in WORKER_TIME_SPLIT} == {f for f in fields if f.endswith("_seconds")}
