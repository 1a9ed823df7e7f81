"""`hatchery bench-reward`: samples scored per second over gRPC against in-process.

The same Countdown batch is scored four ways, back to back, `repeats` times:
- builtin in-process: the countdown grader called directly;
- builtin over gRPC: a `hatchery reward` process on loopback, through the
  RewardClient the workers use (batches split and sent concurrently);
- plug-in in-process: a TRL-style function called directly;
- plug-in over gRPC: the same function as a Python plug-in of a `hatchery reward`
  process (worker processes, time limits).
Each ratio is the median of the per-repeat ratios (over gRPC / in-process).
"""

from __future__ import annotations

import importlib
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from hatchery.core.tasks import countdown_problem
from hatchery.launcher import loopback_service
from hatchery.service.reward_client import Endpoint, RewardClient
from hatchery.v1 import reward_pb2 as pb
from reward_svc.graders import builtin_graders

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "plugins"
PLUGIN = "trl_rewards:accuracy_reward"


def countdown_samples(n: int, seed: int = 0) -> list[pb.Sample]:
    """Countdown problems with a mix of right, wrong and malformed completions."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        p = countdown_problem(rng)
        numbers = p.metadata["numbers"].split(",")
        answer = [f"{' + '.join(numbers)}", f"{' * '.join(numbers)}", "1 + 1"][i % 3]
        completion = f"Let me try.</think>\n<answer>{answer}</answer>" if i % 4 else "I don't know"
        samples.append(pb.Sample(prompt=p.text, completion=completion, reference=p.reference, metadata=p.metadata))
    return samples


def _rate(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def run_reward_bench(samples: int, batch_size: int, repeats: int) -> dict:
    batch = countdown_samples(samples)
    builtin = builtin_graders()["countdown"]
    sys.path.insert(0, str(PLUGIN_DIR))
    module, _, name = PLUGIN.partition(":")
    plugin_fn = getattr(importlib.import_module(module), name)
    plugin_kwargs = {"prompts": [s.prompt for s in batch], "completions": [s.completion for s in batch],
                     "reference": [s.reference for s in batch]}
    with tempfile.TemporaryDirectory(prefix="hatchery-bench-reward-") as tmp:
        graders = Path(tmp) / "graders.yaml"
        graders.write_text(yaml.safe_dump({"plugin": {"type": "python", "function": PLUGIN, "path": str(PLUGIN_DIR),
                                                      "processes": 2, "batch_size": batch_size}}))
        with loopback_service(["reward", "--graders", str(graders)], Path(tmp), "reward") as address:
            over_grpc = {grader: RewardClient([Endpoint([address], grader)], batch_size=batch_size)
                         for grader in ("countdown", "plugin")}
            ways: dict[str, Callable[[], object]] = {
                "builtin_in_process": lambda: builtin.score(batch),
                "builtin_grpc": lambda: over_grpc["countdown"].score(batch),
                "plugin_in_process": lambda: plugin_fn(**plugin_kwargs),
                "plugin_grpc": lambda: over_grpc["plugin"].score(batch),
            }
            for way in ways.values():  # warm up: connections, plug-in imports
                way()
            rates: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(repeats):
                for way, fn in ways.items():
                    rates[way].append(_rate(fn, len(batch)))
    result: dict = {"machine": f"{platform.machine()}, {platform.python_version()}", "samples": samples,
                    "batch_size": batch_size, "repeats": repeats,
                    "samples_per_second": {way: round(statistics.median(r)) for way, r in rates.items()},
                    "samples_per_second_all": {way: [round(x) for x in r] for way, r in rates.items()}}
    for kind in ("builtin", "plugin"):
        result[f"{kind}_grpc_over_in_process"] = round(statistics.median(
            g / i for g, i in zip(rates[f"{kind}_grpc"], rates[f"{kind}_in_process"])), 3)
    return result
