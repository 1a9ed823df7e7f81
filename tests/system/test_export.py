"""`hatchery export`: a run's weights as a Hugging Face folder and as a PEFT LoRA adapter."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from hatchery.core.config import parse_config
from hatchery.core.model import generate, load_model
from hatchery.export import export_hf, export_peft_lora, truncated, weights_at
from reference import run_reference

PROMPTS = ["What is 3 + 4?", "What is 9 - 2?", "Say hi"]


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    cfg = parse_config({"run_dir": str(run_dir), "model": {"source": str(tiny_llama_dir)}, "grader": "length",
                        "task": {"name": "arith", "heldout_size": 4, "max_new_tokens": 6},
                        "es": {"population": 6, "rank": 2, "sigma": 0.05, "lr": 0.05},
                        "train": {"generations": 5, "prompts_per_member": 2, "eval_every": 10,
                                  "checkpoint_every": 2}})
    coordinator = run_reference(cfg, run_dir)  # checkpoints at 2 and 4, five records
    return run_dir, coordinator


def test_hf_export_reloads_and_generates_like_the_run(run, tmp_path):
    run_dir, coordinator = run
    report = export_hf(run_dir, tmp_path / "hf")
    assert report["generation"] == 5 and (tmp_path / "hf" / "generation_config.json").exists()
    exported = load_model(tmp_path / "hf")  # AutoModelForCausalLM.from_pretrained and its tokenizer
    ours = generate(coordinator.lm, PROMPTS, 8).texts
    assert generate(exported, PROMPTS, 8).texts == ours
    for name, tensor in exported.model.state_dict().items():
        torch.testing.assert_close(tensor, coordinator.lm.model.state_dict()[name], rtol=0, atol=0)


def test_weights_at_an_earlier_generation_replay_from_the_nearest_checkpoint(run, tiny_llama_dir):
    run_dir, _ = run
    at3, at5, at0 = weights_at(run_dir, 3), weights_at(run_dir, 5), weights_at(run_dir, 0)
    base = load_model(tiny_llama_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(at0.lm.model.state_dict()[name], base.model.state_dict()[name])
    assert not torch.equal(at3.lm.model.state_dict()[name], at5.lm.model.state_dict()[name])
    with pytest.raises(ValueError, match="not logged"):
        weights_at(run_dir, 6)


def test_full_rank_lora_matches_the_merged_model(run, tiny_llama_dir, tmp_path):
    run_dir, coordinator = run
    report = export_peft_lora(run_dir, tmp_path / "lora", rank=10_000)
    assert report["energy_kept"] == pytest.approx(1.0)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["target_modules"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "lora")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, coordinator.lm.model(ids).logits, atol=1e-4, rtol=1e-4)
        merged = adapted.merge_and_unload().state_dict()
    for name, tensor in coordinator.lm.model.state_dict().items():
        torch.testing.assert_close(merged[name], tensor, atol=2e-6, rtol=1e-5)


def test_reduced_rank_reports_the_energy_it_keeps(run, tmp_path):
    run_dir, _ = run
    report = export_peft_lora(run_dir, tmp_path / "lora1", rank=1)
    assert {kept["rank"] for kept in report["matrices"].values()} == {1}
    weights, base = weights_at(run_dir), weights_at(run_dir, 0)
    name = "model.layers.1.mlp.down_proj"
    delta = (weights.lm.model.state_dict()[name + ".weight"] - base.lm.model.state_dict()[name + ".weight"]).double()
    s = torch.linalg.svdvals(delta)
    assert report["matrices"][name]["energy_kept"] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-9)
    by_energy = export_peft_lora(run_dir, tmp_path / "lora99", energy=0.99)
    assert by_energy["energy_kept"] >= 0.99
    assert all(m["energy_kept"] >= 0.99 for m in by_energy["matrices"].values())
    with pytest.raises(ValueError, match="at most one"):
        export_peft_lora(run_dir, tmp_path / "x", rank=2, energy=0.9)


def test_truncated_svd_is_the_best_low_rank_approximation():
    torch.manual_seed(0)
    delta = torch.randn(12, 3) @ torch.randn(3, 20)  # rank 3
    b, a, kept = truncated(delta, rank=3, energy=None)
    torch.testing.assert_close(b @ a, delta, atol=1e-5, rtol=1e-5)
    assert kept["rank"] == 3 and kept["energy_kept"] == pytest.approx(1.0)
    _, _, by_energy = truncated(delta, rank=None, energy=0.999999)
    assert by_energy["rank"] <= 3


def test_export_command(run, tmp_path):
    import subprocess
    import sys

    run_dir, _ = run
    out = subprocess.run([sys.executable, "-m", "hatchery.cli", "export", str(run_dir), str(tmp_path / "a"),
                          "--format", "peft-lora", "--energy", "0.9", "--generation", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["generation"] == 4 and report["energy_kept"] >= 0.9 and report["adapter_bytes"] > 0
    bad = subprocess.run([sys.executable, "-m", "hatchery.cli", "export", str(run_dir), str(tmp_path / "b"),
                          "--generation", "99"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not logged" in bad.stderr


def test_eval_scores_base_full_and_lora_exports_on_the_same_prompts(run, tiny_llama_dir, tmp_path):
    """`hatchery eval` through a real reward service: the full export scores what the run's own
    final held-out evaluation scored, and a full-rank adapter scores the same."""
    from hatchery.evaluation import DataFile, heldout_reward

    run_dir, coordinator = run
    export_hf(run_dir, tmp_path / "hf")
    export_peft_lora(run_dir, tmp_path / "lora", rank=10_000)
    kwargs = {"task_name": "arith", "heldout_size": 4, "grader": "length", "max_new_tokens": 6}  # the run's
    full = heldout_reward(str(tmp_path / "hf"), **kwargs)
    lora = heldout_reward(str(tmp_path / "lora"), **kwargs)
    base = heldout_reward(str(tiny_llama_dir), **kwargs)
    assert full["prompts"] == full["scored"] == 4 and full["statuses"] == {"SCORE_STATUS_OK": 4}
    assert full["heldout_reward"] == pytest.approx(coordinator.history[-1].heldout_reward)
    assert lora["heldout_reward"] == pytest.approx(full["heldout_reward"])
    assert base["heldout_reward"] == pytest.approx(coordinator.history[0].heldout_reward)
    # the run's held-out prompts as a data file: `hatchery eval --data` scores them as the run did
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"question": p.text, "answer": p.reference}) + "\n"
                            for p in coordinator.task.heldout))
    from_file = heldout_reward(str(tmp_path / "hf"), grader="length", max_new_tokens=6,
                               data=DataFile(str(data), prompt_key="question", reference_key="answer"))
    assert (from_file["data"], from_file["prompts"], from_file["scored"]) == (str(data), 4, 4)
    assert from_file["heldout_reward"] == pytest.approx(full["heldout_reward"])
