"""`hatchery bench` on the smallest settings: every variant runs and the ratios are consistent.

It also loads the embedded SmolLM2 (for its tokenizer), so a fresh machine
proves here that the packaged model converts and loads without a network.
"""

import pytest

from hatchery.bench import run_bench
from hatchery.bench_reward import run_reward_bench


def test_bench_reports_each_ratio_from_its_own_timings():
    report = run_bench(["tiny"], population=4, ranks=[2], new_tokens=2, repeats=2, naive_repeats=1)
    (row,) = report["results"]["tiny"]
    assert row["rank"] == 2 and row["population"] == 4
    assert {k: len(v) for k, v in row["seconds_all"].items()} == {"unperturbed": 2, "eggroll": 2, "naive": 1}
    med = row["seconds_median"]
    assert row["eggroll_speedup_over_naive"] == pytest.approx(med["naive"] / med["eggroll"])
    assert row["naive_over_unperturbed_throughput"] == pytest.approx(med["unperturbed"] / med["naive"])
    ratios = [u / e for u, e in zip(row["seconds_all"]["unperturbed"], row["seconds_all"]["eggroll"])]
    assert row["eggroll_over_unperturbed_throughput"] == pytest.approx(sum(ratios) / 2)
    assert report["machine"]["torch"]


def test_bench_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="unknown bench model"):
        run_bench(["gpt5"], population=4, ranks=[1], new_tokens=2, repeats=1, naive_repeats=1)


def test_reward_bench_measures_grpc_against_in_process_side_by_side():
    report = run_reward_bench(samples=64, batch_size=16, repeats=3)
    rates = report["samples_per_second_all"]
    assert {k: len(v) for k, v in rates.items()} == {
        "builtin_in_process": 3, "builtin_grpc": 3, "plugin_in_process": 3, "plugin_grpc": 3}
    assert all(r > 0 for v in rates.values() for r in v)
    ratios = sorted(g / i for g, i in zip(rates["builtin_grpc"], rates["builtin_in_process"]))
    assert report["builtin_grpc_over_in_process"] == pytest.approx(ratios[1], rel=0.01)
