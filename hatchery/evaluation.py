"""`hatchery eval`: the held-out reward of a model or a PEFT adapter on a task or on
every row of a data file, scored by a reward service, so base, full export and LoRA
exports compare on the same prompts.

Generation is as in a run's held-out evaluation: greedy, every held-out prompt in
one batch, the task's token limit and the chat template.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from hatchery.core.config import ModelConfig, RunConfig, TaskConfig
from hatchery.core.model import LoadedModel, generate, load_model, merge_adapter, resolve_model
from hatchery.core.prompt_data import file_task
from hatchery.core.stop_rules import stop_rule
from hatchery.core.tasks import Task, load_task
from hatchery.launcher import loopback_service
from hatchery.service.prompts import lease_prompt, model_input, reward_sample
from hatchery.service.reward_client import Endpoint, RewardClient
from hatchery.v1 import reward_pb2 as pb


def _source(model: str) -> str:
    """The model folder (or embedded default) a model or adapter argument loads from."""
    adapter = Path(model) / "adapter_config.json"
    return json.loads(adapter.read_text())["base_model_name_or_path"] if adapter.is_file() else model


def load_for_eval(model: str, dtype: str = "float32") -> LoadedModel:
    """A Hugging Face folder, a hub id, the embedded default, or a PEFT adapter folder
    (merged into the base model its adapter_config.json names)."""
    base = _source(model)
    lm = load_model(resolve_model(base), dtype)
    return merge_adapter(lm, model) if base != model else lm


@dataclass(frozen=True)
class DataFile:
    """`hatchery eval --data`: a file whose every row is scored, read as a run reads task.heldout."""

    path: str
    prompt_key: str = "prompt"
    reference_key: str = ""
    system_prompt: str = ""


def eval_task(model: str, task_name: str, seed: int, heldout_size: int, max_new_tokens: int,
              data: DataFile | None) -> Task:
    if data is None:
        task = load_task(task_name, seed, heldout_size)
        return replace(task, max_new_tokens=max_new_tokens or task.max_new_tokens)
    settings = TaskConfig(name="dataset", prompt_key=data.prompt_key, reference_key=data.reference_key,
                          system_prompt=data.system_prompt, max_new_tokens=max_new_tokens)
    return file_task(RunConfig(model=ModelConfig(source=_source(model)), task=settings), data.path)


def heldout_reward(model: str, task_name: str = "arith", seed: int = 0, heldout_size: int = 128,
                   reward_address: str = "", grader: str = "", dtype: str = "float32", max_new_tokens: int = 0,
                   data: DataFile | None = None) -> dict:
    if data is not None and not grader:
        raise ValueError("--grader: a data file has no grader of its own: name one")
    task = eval_task(model, task_name, seed, heldout_size, max_new_tokens, data)
    lm = load_for_eval(model, dtype)
    prompts = [lease_prompt(i, p) for i, p in enumerate(task.heldout)]
    completions = generate(lm, [model_input(p) for p in prompts], task.max_new_tokens,
                           settled=stop_rule(task.stop_rule_for(grader))).texts
    samples = [reward_sample(p, c) for p, c in zip(prompts, completions)]
    if reward_address:
        rewards, statuses = _score(reward_address, grader or task.grader, samples)
    else:  # a reward service of our own, as `hatchery run` would start it
        with tempfile.TemporaryDirectory(prefix="hatchery-eval-") as tmp:
            with loopback_service(["reward"], Path(tmp), "reward") as address:
                rewards, statuses = _score(address, grader or task.grader, samples)
    where = {"data": data.path} if data else {"task": task_name, "seed": seed}
    return {"model": model, **where, "prompts": len(samples), **summary(rewards, statuses)}


def summary(rewards: list[float], statuses: list[int]) -> dict:
    """Mean held-out reward of the samples scored OK, with its standard error."""
    ok = [r for r, s in zip(rewards, statuses) if s == pb.SCORE_STATUS_OK]
    return {"scored": len(ok), "heldout_reward": statistics.fmean(ok) if ok else math.nan,
            "stderr": statistics.stdev(ok) / math.sqrt(len(ok)) if len(ok) > 1 else math.nan,
            "statuses": {pb.ScoreStatus.Name(s): n for s, n in Counter(statuses).items()}}


def _score(address: str, grader: str, samples: list[pb.Sample]) -> tuple[list[float], list[int]]:
    client = RewardClient([Endpoint([address], grader)])
    try:
        return client.score(samples)[:2]
    finally:
        client.close()
