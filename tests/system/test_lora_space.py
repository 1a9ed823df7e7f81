"""A run in LoRA space (es.space: lora) end to end: the optimizer and a worker evolve the same
adapter from seeds and scalars, a resume replays it to the same bytes, and the export is the
adapter itself, which PEFT loads and `hatchery eval` scores as the run did."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hatchery.core.config import parse_config
from hatchery.export import export_peft_lora, weights_at
from reference import run_reference


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora-space") / "run"
    cfg = parse_config({"run_dir": str(run_dir), "model": {"source": str(tiny_llama_dir)}, "grader": "length",
                        "task": {"name": "arith", "heldout_size": 4, "max_new_tokens": 6},
                        "es": {"space": "lora", "lora_rank": 4, "lora_alpha": 8, "population": 6, "sigma": 0.5,
                               "lr": 0.5, "optimizer": "adam"},
                        "train": {"generations": 5, "prompts_per_member": 2, "eval_every": 5,
                                  "checkpoint_every": 2, "overlap_update": True}})
    return run_dir, run_reference(cfg, run_dir)  # checkpoints at 2 and 4, five records


def test_a_resume_replays_the_adapter_to_the_same_bytes(run, tiny_llama_dir):
    run_dir, coordinator = run
    assert any(parts["lora_B"].any() for parts in coordinator.updater.adapter.values()), "the run moved nothing"
    resumed = weights_at(run_dir)  # the checkpoint at 4, then record 5, on a fresh start model
    assert resumed.updater.steps == coordinator.updater.steps == 5
    for name, tensor in coordinator.updater.state_dict().items():
        assert torch.equal(resumed.updater.state_dict()[name], tensor), name
    for name, tensor in coordinator.lm.model.state_dict().items():
        assert torch.equal(resumed.lm.model.state_dict()[name], tensor), name


def test_the_export_is_the_adapter_and_peft_runs_it_as_the_run_did(run, tiny_llama_dir, tmp_path):
    from hatchery.evaluation import heldout_reward

    run_dir, coordinator = run
    report = export_peft_lora(run_dir, tmp_path / "lora")
    assert report["rank"] == 4 and report["energy_kept"] == 1.0
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    saved = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    for name, parts in coordinator.updater.adapter.items():
        module = name.removesuffix(".weight")
        for part, tensor in parts.items():
            assert torch.equal(saved[f"base_model.model.{module}.{part}.weight"], tensor), (module, part)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "lora")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, coordinator.lm.model(ids).logits, atol=1e-5, rtol=1e-5)
    scored = heldout_reward(str(tmp_path / "lora"), task_name="arith", heldout_size=4, grader="length",
                            max_new_tokens=6)
    assert scored["heldout_reward"] == pytest.approx(coordinator.history[-1].heldout_reward)
    with pytest.raises(ValueError, match="as it is"):
        export_peft_lora(run_dir, tmp_path / "cut", rank=2)
