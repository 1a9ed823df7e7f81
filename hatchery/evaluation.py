"""`hatchery eval`: the held-out reward of a model or a PEFT adapter on a task, scored
by a reward service, so base, full export and LoRA exports compare on the same prompts.

Generation is as in a run's held-out evaluation: greedy, every held-out prompt in
one batch, the task's token limit and the chat template.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from hatchery.core.model import EMBEDDED, LoadedModel, generate, load_model, merge_adapter, resolve_model
from hatchery.core.stop_rules import stop_rule
from hatchery.core.tasks import load_task
from hatchery.launcher import loopback_service
from hatchery.service.reward_client import Endpoint, RewardClient
from hatchery.v1 import reward_pb2 as pb


def load_for_eval(model: str, dtype: str = "float32") -> LoadedModel:
    """A Hugging Face folder, the embedded default, or a PEFT adapter folder (merged into
    the base model its adapter_config.json names)."""
    path = Path(model)
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        return merge_adapter(load_model(json.loads(adapter.read_text())["base_model_name_or_path"], dtype), path)
    return load_model(resolve_model(model) if model == EMBEDDED else path, dtype)


def heldout_reward(model: str, task_name: str = "arith", seed: int = 0, heldout_size: int = 128,
                   reward_address: str = "", grader: str = "", dtype: str = "float32", max_new_tokens: int = 0) -> dict:
    task = load_task(task_name, seed, heldout_size)
    lm = load_for_eval(model, dtype)
    prompts = task.heldout
    completions = generate(lm, [p.text for p in prompts], max_new_tokens or task.max_new_tokens,
                           settled=stop_rule(task.stop_rule_for(grader))).texts
    samples = [pb.Sample(prompt=p.text, completion=c, reference=p.reference, metadata=p.metadata)
               for p, c in zip(prompts, completions)]
    if reward_address:
        rewards, statuses = _score(reward_address, grader or task.grader, samples)
    else:  # a reward service of our own, as `hatchery run` would start it
        with tempfile.TemporaryDirectory(prefix="hatchery-eval-") as tmp:
            with loopback_service(["reward"], Path(tmp), "reward") as address:
                rewards, statuses = _score(address, grader or task.grader, samples)
    return {"model": model, "task": task_name, "seed": seed, "prompts": len(samples), **summary(rewards, statuses)}


def summary(rewards: list[float], statuses: list[int]) -> dict:
    """Mean held-out reward of the samples scored OK, with its standard error."""
    ok = [r for r, s in zip(rewards, statuses) if s == pb.SCORE_STATUS_OK]
    return {"scored": len(ok), "heldout_reward": statistics.fmean(ok) if ok else math.nan,
            "stderr": statistics.stdev(ok) / math.sqrt(len(ok)) if len(ok) > 1 else math.nan,
            "statuses": {pb.ScoreStatus.Name(s): n for s, n in Counter(statuses).items()}}


def _score(address: str, grader: str, samples: list[pb.Sample]) -> tuple[list[float], list[int]]:
    client = RewardClient([Endpoint([address], grader)])
    try:
        return client.score(samples)
    finally:
        client.close()
