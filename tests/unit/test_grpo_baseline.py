"""The GRPO baseline runs TRL's real GRPOTrainer (a tiny model, two steps) and keeps
held-out evaluation off its training clock; its curve plots next to a run's."""

import json

import pytest
from transformers import AutoModelForCausalLM

from hatchery.bench.ablation import run_summary
from hatchery.bench.grpo import run_grpo
from hatchery.core.drift import PASSAGES, DriftMonitor
from hatchery.core.model import LoadedModel, load_tokenizer
from hatchery.core.plot import plot_heldout_against_time
from hatchery.core.run_metrics import heldout_curve, metrics_rows


def test_grpo_baseline_logs_heldout_reward_against_training_time(tiny_llama_dir, tmp_path):
    rows = run_grpo(tmp_path / "grpo.jsonl", model=str(tiny_llama_dir), heldout_size=4, max_steps=2,
                    completions_per_step=4, generations=2, eval_every=1)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["seconds"] == 0 and rows[0]["seconds"] < rows[1]["seconds"] < rows[2]["seconds"]
    assert all(r["scored"] == 4 and 0 <= r["heldout_reward"] <= 1 for r in rows)
    # Drift as a Hatchery run measures it (the same probe and computation: tests/unit/test_drift.py
    # checks those against the formula). A random tiny model earns the same reward on every
    # completion, so GRPO's advantages are 0, the weights stay, and so does the drift at 0.
    start = LoadedModel(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), load_tokenizer(tiny_llama_dir))
    assert rows[0]["probe_loglik"] == pytest.approx(DriftMonitor.of_start(start, list(PASSAGES)).measure(start).loglik)
    assert all(r["drift_kl"] < 1e-4 and r["probe_loglik"] == pytest.approx(rows[0]["probe_loglik"]) for r in rows)


def test_stopping_on_the_budget_and_plotting_both_curves(tiny_llama_dir, tmp_path):
    rows = run_grpo(tmp_path / "grpo.jsonl", model=str(tiny_llama_dir), heldout_size=4, budget_seconds=0.01,
                    completions_per_step=4, generations=2, eval_every=100)
    assert [r["step"] for r in rows] == [0, 1]  # the first step spends the budget; it is evaluated and training stops
    as_run = run_summary(tmp_path / "grpo.jsonl")  # `hatchery ablation` takes the file as a run
    assert (as_run["seed"], as_run["steps"], as_run["heldout_end"]) == (0, 1, rows[-1]["heldout_reward"])
    assert as_run["drift_kl_end"] == rows[-1]["drift_kl"]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in (
        {"heldout_reward": 0.25, "heldout_stderr": 0.1, "reward_mean": 0.1, "seconds": 7.0},
        {"heldout_reward": None, "reward_mean": 0.2, "seconds": 8.0},
        {"heldout_reward": 0.5, "reward_mean": None, "seconds": 3.0})))  # a run from before stderr was kept
    assert heldout_curve(metrics_rows(metrics)) == [(0.0, 0.25, 0.1), (15.0, 0.5, 0.0)]
    plot_heldout_against_time({"GRPO": [(r["seconds"], r["heldout_reward"], r["stderr"]) for r in rows],
                               "ES": heldout_curve(metrics_rows(tmp_path))}, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
