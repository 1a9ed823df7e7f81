"""The run config is validated before anything starts."""

import subprocess
import sys

import pytest
import yaml

from hatchery.core.config import ConfigError, RunConfig, load_config, parse_config, with_fresh_run_dir


def test_default_config_is_valid():
    cfg = load_config(None)
    assert cfg == RunConfig() and cfg.es.population % 2 == 0


@pytest.mark.parametrize("data, key", [
    ({"es": {"rnak": 2}}, "es.rnak"),
    ({"extra": 1}, "extra"),
    ({"es": {"population": 7}}, "es.population"),
    ({"es": {"sigma": -1.0}}, "es.sigma"),
    ({"es": {"sigma": "big"}}, "es.sigma"),
    ({"es": {"lr": float("nan")}}, "es.lr"),
    ({"es": {"shaping": "magic"}}, "es.shaping"),
    ({"es": {"lr_schedule": "cosine"}}, "es.lr_schedule"),
    ({"es": {"optimizer": "lion"}}, "es.optimizer"),
    ({"es": {"momentum": 1.0}}, "es.momentum"),
    ({"es": {"target_modules": ["("]}}, "es.target_modules"),
    ({"train": {"generations": 0}}, "train.generations"),
    ({"train": {"prompts_per_member": True}}, "train.prompts_per_member"),
    ({"train": {"temperature": 1e-300}}, "train.temperature"),  # logits / T would not stay finite
    ({"model": {"dtype": "float8"}}, "model.dtype"),
    ({"task": {"name": "chess"}}, "task.name"),
    ({"model": "smol"}, "model"),
])
def test_bad_values_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        parse_config(data)


def test_cli_refuses_a_bad_config_before_starting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run_dir: {tmp_path / 'run'}\nes:\n  population: 5\n")
    out = subprocess.run([sys.executable, "-m", "hatchery.cli", "run", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "es.population" in out.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_dir_is_never_reused(tmp_path):
    assert with_fresh_run_dir(RunConfig()).run_dir.startswith("runs/")
    (tmp_path / "updates.jsonl").write_text("")
    with pytest.raises(ConfigError, match="already holds a run"):
        with_fresh_run_dir(parse_config({"run_dir": str(tmp_path)}))


def test_start_or_resume_takes_its_own_run_and_refuses_another(tmp_path):
    from hatchery.core.config import start_or_resume

    cfg = parse_config({"run_dir": str(tmp_path / "run")})
    assert start_or_resume(cfg) == cfg  # nothing there yet: a fresh start
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert start_or_resume(cfg) == cfg  # its own run: resumed (a restarted pod)
    with pytest.raises(ConfigError, match="another config"):
        start_or_resume(parse_config({"run_dir": str(tmp_path / "run"), "es": {"population": 8}}))
