"""`hatchery run` with the three services as separate processes on loopback,
against the in-process reference run of the same config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hatchery.core.config import parse_config
from hatchery.core.update_log import read_log
from hatchery.launcher import spawn_service, wait_for_port
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


def test_a_run_scored_by_external_replicas_with_a_plugin_and_a_token(tiny_llama_dir, tmp_path):
    """reward.services: two `hatchery reward` replicas serving a Python plug-in behind a
    bearer token; the worker reads the token from its environment and spreads calls."""
    graders = tmp_path / "graders.yaml"
    graders.write_text(yaml.safe_dump({"logged_length": {
        "type": "python", "function": "chaos_graders:logged_length", "path": str(Path(__file__).parents[1] / "plugins"),
        "processes": 1, "confined": False}}))  # it writes $REPLICA_LOG, which confinement would refuse
    replica_log = tmp_path / "replicas.log"
    replicas, addresses = [], []
    try:
        for name in ("a", "b"):
            port_file = tmp_path / f"port-{name}"
            replicas.append(spawn_service(
                ["reward", "--port", "0", "--port-file", str(port_file), "--graders", str(graders)],
                tmp_path / f"reward-{name}.log",
                env={"HATCHERY_REWARD_TOKEN": "s3cret", "REPLICA_LOG": str(replica_log), "REPLICA_NAME": name}))
            addresses.append(f"127.0.0.1:{wait_for_port(port_file, replicas[-1], 'reward')}")
        cfg = _config(tiny_llama_dir, tmp_path / "run")
        del cfg["grader"]
        cfg["reward"] = {"services": [{"addresses": addresses, "grader": "logged_length", "token_env": "RM_TOKEN"}],
                         "batch_size": 4}
        config_path = tmp_path / "run.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        out = subprocess.run([sys.executable, "-m", "hatchery.cli", "run", str(config_path)], capture_output=True,
                             text=True, timeout=600, env={**os.environ, "RM_TOKEN": "s3cret"})
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        for proc in replicas:
            proc.terminate()
            proc.wait(timeout=20)
    # the same fitness as the built-in length grader in the reference run: the plug-in is that reward
    run_reference(parse_config(_config(tiny_llama_dir, tmp_path / "reference")), tmp_path / "reference")
    assert [r.fitness for r in read_log(tmp_path / "run" / "updates.jsonl")] == [
        r.fitness for r in read_log(tmp_path / "reference" / "updates.jsonl")]
    assert set(replica_log.read_text().split()) == {"a", "b"}  # both replicas scored


def test_a_run_on_a_jsonl_dataset_trains_and_hands_every_column_to_the_grader(tiny_llama_dir, tmp_path):
    """Issue 21: `task.name: dataset` over files, the three services as separate processes; the
    held-out set is the held-out file's, and the grader gets the conversations the model was given
    and every other column by name, with its type."""
    rows = [{"prompt": [{"role": "system", "content": "Add."}, {"role": "user", "content": f"Add {i} and {i + 1}."}],
             "answer": str(2 * i + 1), "level": i % 3, "tags": ["sum", str(i)], "source": "made-here"}
            for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:9]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[9:]))
    cfg = {"run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)}, "grader": "seen",
           "task": {"name": "dataset", "train": str(tmp_path / "train.jsonl"), "heldout": str(tmp_path / "test.jsonl"),
                    "reference_key": "answer", "max_new_tokens": 4},
           "es": {"population": 2, "rank": 1, "sigma": 0.05, "lr": 0.05},
           "train": {"generations": 2, "prompts_per_member": 2, "eval_every": 1, "time_budget_seconds": 0},
           "reward": {"graders": {"seen": {"type": "python", "function": "chaos_graders:columns_seen",
                                           "path": str(Path(__file__).parents[1] / "plugins"), "processes": 1,
                                           "confined": False}}}}  # it writes $COLUMNS_LOG
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "columns.jsonl"
    out = subprocess.run([sys.executable, "-m", "hatchery.cli", "run", str(config_path)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "COLUMNS_LOG": str(log)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(read_log(tmp_path / "run" / "updates.jsonl")) == 2
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    scored = {json.dumps(p): r for call in calls for p, r in zip(call["prompts"], call["reference"])}
    given = {json.dumps(r["prompt"]): r for r in rows}
    assert {json.dumps(r["prompt"]) for r in rows[9:]} <= set(scored)  # the held-out file, evaluated
    assert set(scored) <= set(given) and scored[json.dumps(rows[10]["prompt"])] == "21"
    assert all(set(call["columns"]) == {"level", "tags", "source"} for call in calls)
    seen = [dict(zip(call["columns"], values)) for call in calls for values in zip(*call["columns"].values())]
    by_tags = {json.dumps(s["tags"]): s for s in seen}
    assert all(by_tags[json.dumps(r["tags"])] == {k: r[k] for k in ("level", "tags", "source")}
               for r in rows[9:])  # ints as ints, lists as lists


def test_bench_data_measures_a_generation_on_a_generated_file(tiny_llama_dir, tmp_path):
    """One case of `hatchery bench-data` at a small size: a real generation of the three services
    as processes (the figures themselves are the benchmark's, on the docs page)."""
    import re

    import pyarrow.parquet as pq

    from hatchery.bench.data import RUN, measure, write_word_problems

    path = tmp_path / "problems.parquet"
    write_word_problems(path, 300)
    for row in pq.read_table(path).to_pylist()[:50]:  # every answer is the problem's
        have, sold, got = map(int, re.findall(r"\d+", row["prompt"]))
        assert int(row["answer"]) == have - sold + got and 1 <= row["level"] <= 5
    run = {**RUN, "model": {"source": str(tiny_llama_dir)},
           "task": {"name": "dataset", "train": str(path), "reference_key": "answer", "heldout_size": 8,
                    "max_new_tokens": 8}}
    case = measure("dataset", run, tmp_path, {"HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")})
    assert case["first_lease_seconds"] > 0 and case["inference_peak_rss_mib"] > 0
    assert case["optimizer_peak_rss_mib"] >= case["optimizer_rss_at_first_lease_mib"] > 0


def test_bench_size_reports_memory_and_checkpoint_size_for_a_model(tiny_llama_dir):
    """`hatchery bench-size` on the tiny model: one generation of the three services as processes,
    with the checkpoint it wrote measured on disk (the figures are the benchmark's, in the docs)."""
    from hatchery.bench.sizing import run_size_bench

    (row,) = run_size_bench((str(tiny_llama_dir),), ("float32",))["rows"]
    assert (row["model"], row["dtype"]) == (tiny_llama_dir.name, "float32")
    assert row["optimizer_peak_rss_mib"] > 0 and row["inference_peak_rss_mib"] > 0
    assert 0 <= row["checkpoint_mib"] <= row["model_folder_mib"]
