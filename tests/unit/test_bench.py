"""`hatchery bench` on the smallest settings: every variant runs and the ratios are consistent.

It also loads the embedded SmolLM2 (for its tokenizer), so a fresh machine
proves here that the packaged model converts and loads without a network.
"""

import pytest
import torch

import tiny
from hatchery.bench.ablation import ablation, parse_variants, plot_ablation
from hatchery.bench.breakdown import time_breakdown
from hatchery.bench.reward import run_reward_bench
from hatchery.bench.sync import loopback_run, run_to_end
from hatchery.bench.throughput import QWEN_SHAPES, plot_bench, qwen_shape, run_bench
from hatchery.core.config import parse_config


def test_bench_reports_each_ratio_from_its_own_timings(tmp_path):
    report = run_bench(["tiny"], ["float32"], batches=[4], ranks=[1, 2], naive_populations=[4], new_tokens=2,
                       repeats=3, naive_repeats=1, prompts_per_member=[1, 2], lora_ranks=[8])
    assert [(r["space"], r["batch"], r["prompts_per_member"], r["rank"]) for r in report["throughput"]] == [
        ("weights", 4, 1, 1), ("weights", 4, 1, 2), ("lora", 4, 1, 8),
        ("weights", 4, 2, 1), ("weights", 4, 2, 2), ("lora", 4, 2, 8)]
    for row in report["throughput"]:
        plain, eggroll = row["seconds"]["unperturbed"], row["seconds"]["eggroll"]
        assert len(plain) == len(eggroll) == 3 and row["noise_seconds"] > 0
        ratios = sorted(p / e for p, e in zip(plain, eggroll))
        assert row["eggroll_over_unperturbed_throughput"] == pytest.approx(ratios[1])
        assert row["tokens_per_second"]["eggroll"] == pytest.approx(4 * 2 / sorted(eggroll)[1])
    naive = report["naive"][0]
    assert [(r["population"], r["prompts_per_member"]) for r in report["naive"]] == [(4, 1), (4, 2)]
    assert naive["eggroll_rank"] == 1
    assert naive["eggroll_speedup_over_naive"] == pytest.approx(naive["seconds"]["naive"][0] /
                                                                naive["seconds"]["eggroll"][0])
    assert report["machine"]["torch"] and "(" in report["machine"]["cpu"]  # model name (extensions)
    paths = plot_bench(report, tmp_path)
    assert [p.name for p in paths] == ["bench-throughput.png", "bench-naive.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_bench_refuses_an_unknown_model_and_odd_populations():
    with pytest.raises(ValueError, match="unknown bench model"):
        run_bench(["gpt5"], ["float32"], [4], [1], [], new_tokens=2, repeats=1, naive_repeats=1)
    with pytest.raises(ValueError, match="must be even"):
        run_bench(["tiny"], ["float32"], [6], [1], [], new_tokens=2, repeats=1, naive_repeats=1,
                  prompts_per_member=[2])
    with pytest.raises(ValueError, match="multiple of prompts per member"):
        run_bench(["tiny"], ["float32"], [6], [1], [], new_tokens=2, repeats=1, naive_repeats=1,
                  prompts_per_member=[4])


def test_reward_bench_measures_grpc_against_in_process_side_by_side():
    report = run_reward_bench(samples=64, batch_size=16, repeats=3)
    rates = report["samples_per_second_all"]
    assert {k: len(v) for k, v in rates.items()} == {
        "builtin_in_process": 3, "builtin_grpc": 3, "plugin_in_process": 3, "plugin_grpc": 3}
    assert all(r > 0 for v in rates.values() for r in v)
    ratios = sorted(g / i for g, i in zip(rates["builtin_grpc"], rates["builtin_in_process"]))
    assert report["builtin_grpc_over_in_process"] == pytest.approx(ratios[1], rel=0.01)


def test_breakdown_splits_a_runs_wall_time_into_what_the_services_reported(tiny_llama_dir, tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "grader": "length", "task": {"heldout_size": 4, "max_new_tokens": 4},
                        "es": {"population": 4}, "train": {"generations": 3, "prompts_per_member": 2,
                                                           "overlap_update": True}})
    with loopback_run(cfg) as (coordinator, worker, _):
        run_to_end(coordinator, worker)
    report = time_breakdown(tmp_path / "run")
    assert report["generations"] == 3
    assert report["wall_seconds"] == pytest.approx(sum(s.seconds for s in coordinator.history[:3]))
    seconds = report["seconds"]
    assert all(seconds[part] > 0 for part in ("generate", "reward", "noise", "optimizer_update"))
    assert seconds["rpc_and_waiting"] >= 0  # one worker: its parts fit inside the wall time
    # the optimizer's own update ran beside the next generation: reported, in no generation's wall time
    assert report["overlapped"]["optimizer_update_overlapped"] > 0
    assert sum(report["fraction_of_wall"].values()) == pytest.approx(1.0)


def test_ablation_summarises_each_run_from_its_metrics(tiny_llama_dir, tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)},
                        "grader": "length", "task": {"heldout_size": 4, "max_new_tokens": 4},
                        "es": {"population": 4}, "train": {"generations": 3, "prompts_per_member": 2,
                                                           "eval_every": 2}})
    with loopback_run(cfg) as (coordinator, worker, _):
        run_to_end(coordinator, worker)
    report = ablation(parse_variants([f"plain={tmp_path / 'run'}"]))
    run, history = report["plain"]["runs"][0], coordinator.history
    assert run["seed"] == 0 and run["generations"] == 3
    assert run["training_seconds"] == pytest.approx(sum(s.seconds for s in history[:3]))
    evaluated = [s for s in history if s.heldout_reward is not None]
    assert [p[1:] for p in run["curve"]] == [[s.heldout_reward, s.heldout_stderr] for s in evaluated]
    assert report["plain"]["heldout_end_mean"] == run["heldout_end"] == history[-1].heldout_reward
    # drift beside the reward, from the same evaluations
    assert [p[0] for p in run["drift_curve"]] == [p[0] for p in run["curve"]]
    assert [p[1:] for p in run["drift_curve"]] == [[s.drift_kl, s.probe_loglik] for s in evaluated]
    assert report["plain"]["drift_kl_end_mean"] == run["drift_kl_end"] == history[-1].drift_kl
    assert run["probe_loglik_start"] == evaluated[0].probe_loglik
    plot_ablation(report, tmp_path / "ablation.png")
    assert (tmp_path / "ablation.png").read_bytes().startswith(b"\x89PNG")
    assert run["prompts_with_spread"] == pytest.approx(sum(s.prompts_with_spread for s in history[:3]) / 3)
    with pytest.raises(ValueError, match="is not NAME=RUN"):
        parse_variants(["no-run-dirs"])


def test_the_gpu_models_have_the_shapes_they_are_named_after():
    """Counted on the meta device: the shapes, not the weights, are what the GPU figures rest on."""
    tokenizer = tiny.tokenizer()
    with torch.device("meta"):
        sizes = {name: sum(p.numel() for p in qwen_shape(name, tokenizer).model.parameters()) for name in QWEN_SHAPES}
    assert sizes["qwen2.5-0.5b-shape"] == pytest.approx(494e6, rel=0.01)  # Qwen2.5-0.5B: 0.49B parameters
    assert sizes["qwen2.5-1.5b-shape"] == pytest.approx(1.54e9, rel=0.01)  # Qwen2.5-1.5B: 1.54B parameters
