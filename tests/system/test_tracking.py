"""A run written to TensorBoard, MLflow and W&B (offline) at once, read back with each
library's own reader; and a tracker that is not installed refused before anything starts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hatchery.core.config import ConfigError, parse_config

GENERATIONS = 3


def test_a_run_reaches_tensorboard_mlflow_and_wandb(tiny_llama_dir, tmp_path: Path, monkeypatch):
    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    config = {"run_dir": str(run_dir), "model": {"source": str(tiny_llama_dir)},
              # countdown's grader reports sub-scores (format, answer): they must reach the trackers too
              "task": {"name": "countdown", "heldout_size": 4, "max_new_tokens": 6},
              "es": {"population": 4, "rank": 1}, "train": {"generations": GENERATIONS, "prompts_per_member": 1,
                                                             "eval_every": 2},
              "tracking": {"tensorboard": True, "mlflow": {"tracking_uri": store.as_uri(), "experiment": "tiny"},
                           "wandb": {"project": "hatchery-tests", "mode": "offline"}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "hatchery.cli", "run", str(tmp_path / "run.yaml")],
                          capture_output=True, text=True, timeout=600, env={"WANDB_SILENT": "true", **_env()})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["reward_mean"] is not None]
    assert set(trained[0]["sub_scores"]) == {"format", "answer"}

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("train/reward_mean")] == [
        (r["generation"], pytest.approx(r["reward_mean"])) for r in trained]
    assert [s.step for s in events.Scalars("heldout/reward")] == [0, 2, GENERATIONS]
    assert [s.step for s in events.Scalars("train/sub_scores/format")] == list(range(GENERATIONS))
    assert "heldout/samples/text_summary" in events.Tags()["tensors"]  # text, stored as a tensor

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores only when told, as we write
    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    history = client.get_metric_history(run.info.run_id, "heldout/reward")
    assert [(m.step, m.value) for m in history] == [
        (r["generation"], pytest.approx(r["heldout_reward"])) for r in rows if r["heldout_reward"] is not None]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "heldout")}
    assert "heldout/samples-000000.json" in artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "heldout/samples-000000.json",
                                                      str(tmp_path))).read_text())
    assert table["columns"] == ["prompt", "reference", "completion", "reward"] and len(table["data"]) == 4
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"] == run.info.run_id

    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # what `wandb sync` would upload
    logged = wandb_file.read_bytes()
    for key in (b"train/reward_mean", b"heldout/reward", b"train/sub_scores/answer", b"heldout/samples"):
        assert key in logged, key


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}


def test_a_tracker_that_is_not_installed_is_refused_with_the_command_that_installs_it(monkeypatch):
    """The tracker packages are installed here (the dev extra), so the test hides one from the lookup."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tracking.wandb: the wandb package is not installed: "
                                          r"pip install 'hatchery\[wandb\]'"):
        parse_config({"tracking": {"wandb": {"project": "p"}}})
    with pytest.raises(ConfigError, match="tracking.wandb.mode: must be offline or online"):
        parse_config({"tracking": {"wandb": {"project": "p", "mode": "cloud"}}})
