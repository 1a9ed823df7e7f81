"""`hatchery run` with the three services as separate processes on loopback,
against the in-process reference run of the same config."""

import json
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hatchery.config import parse_config
from optimizer_svc.update_log import read_log
from reference import run_reference


def _config(model_dir, run_dir):
    return {"run_dir": str(run_dir), "model": {"source": str(model_dir)}, "grader": "length",
            "task": {"name": "arith", "heldout_size": 8, "max_new_tokens": 6},
            "es": {"population": 6, "rank": 2, "sigma": 0.05, "lr": 0.05},
            "train": {"generations": 3, "prompts_per_member": 2, "eval_every": 2, "members_per_lease": 4}}


def test_services_train_and_match_the_in_process_reference(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(_config(tiny_llama_dir, run_dir)))
    out = subprocess.run([sys.executable, "-m", "hatchery.cli", "run", str(config_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "gen    2/3" in out.stdout and "peak resident memory" in out.stdout

    records = read_log(run_dir / "updates.jsonl")
    assert [r.generation for r in records] == [0, 1, 2]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["heldout_reward"] is not None for m in metrics] == [True, False, True, True]
    assert (run_dir / "rewards.png").stat().st_size > 1000

    trained = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    reference = run_reference(parse_config(_config(tiny_llama_dir, tmp_path / "reference")), tmp_path / "reference")
    ref_weights = reference.lm.model.state_dict()
    changed = 0
    for name, tensor in load_file(run_dir / "model" / "model.safetensors").items():
        torch.testing.assert_close(tensor, ref_weights[name], atol=1e-6, rtol=0)
        changed += not torch.equal(tensor, base.state_dict()[name])
    assert changed > 0, "training must change the weights"
    assert [r.fitness for r in records] == [r.fitness for r in read_log(tmp_path / "reference" / "updates.jsonl")]
    assert trained.config.vocab_size == base.config.vocab_size
