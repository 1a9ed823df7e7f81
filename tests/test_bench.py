"""`hatchery bench` on the smallest settings: every variant runs and the ratios are consistent.

It also loads the embedded SmolLM2 (for its tokenizer), so a fresh machine
proves here that the packaged model converts and loads without a network.
"""

import pytest

from hatchery.bench import plot_bench, run_bench
from hatchery.bench_reward import run_reward_bench
from hatchery.bench_sync import loopback_run, run_to_end
from hatchery.breakdown import time_breakdown
from hatchery.config import parse_config


def test_bench_reports_each_ratio_from_its_own_timings(tmp_path):
    report = run_bench(["tiny"], ["float32"], batches=[4], ranks=[1, 2], naive_populations=[4], new_tokens=2,
                       repeats=3, naive_repeats=1)
    assert [(r["batch"], r["rank"], r["model"], r["dtype"]) for r in report["throughput"]] == [
        (4, 1, "tiny", "float32"), (4, 2, "tiny", "float32")]
    for row in report["throughput"]:
        plain, eggroll = row["seconds"]["unperturbed"], row["seconds"]["eggroll"]
        assert len(plain) == len(eggroll) == 3 and row["noise_seconds"] > 0
        ratios = sorted(p / e for p, e in zip(plain, eggroll))
        assert row["eggroll_over_unperturbed_throughput"] == pytest.approx(ratios[1])
        assert row["tokens_per_second"]["eggroll"] == pytest.approx(4 * 2 / sorted(eggroll)[1])
    (naive,) = report["naive"]
    assert naive["population"] == 4 and naive["eggroll_rank"] == 1
    assert naive["eggroll_speedup_over_naive"] == pytest.approx(naive["seconds"]["naive"][0] /
                                                                naive["seconds"]["eggroll"][0])
    assert report["machine"]["torch"]
    paths = plot_bench(report, tmp_path)
    assert [p.name for p in paths] == ["bench-throughput.png", "bench-naive.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_bench_refuses_an_unknown_model_and_odd_populations():
    with pytest.raises(ValueError, match="unknown bench model"):
        run_bench(["gpt5"], ["float32"], [4], [1], [], new_tokens=2, repeats=1, naive_repeats=1)
    with pytest.raises(ValueError, match="must be even"):
        run_bench(["tiny"], ["float32"], [5], [1], [], new_tokens=2, repeats=1, naive_repeats=1)


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
                        "es": {"population": 4}, "train": {"generations": 3, "prompts_per_member": 2}})
    with loopback_run(cfg) as (coordinator, worker, _):
        run_to_end(coordinator, worker)
    report = time_breakdown(tmp_path / "run")
    assert report["generations"] == 3
    assert report["wall_seconds"] == pytest.approx(sum(s.seconds for s in coordinator.history[:3]))
    seconds = report["seconds"]
    assert all(seconds[part] > 0 for part in ("generate", "reward", "noise", "optimizer_update"))
    assert seconds["rpc_and_waiting"] >= 0  # one worker: its parts fit inside the wall time
    assert sum(report["fraction_of_wall"].values()) == pytest.approx(1.0)
