"""`hatchery bench-grpo`: the GRPO baseline that ES runs are compared with.

TRL's GRPOTrainer fine-tunes the same model on the same task's training prompts,
rewarded by the same built-in grader, and is evaluated on the same held-out prompts
the way a Hatchery run evaluates (greedy, one batch, the task's token limit, the
chat template). The clock counts training time only: held-out evaluations are
paused out of it, and training stops once `budget_seconds` of it have passed.
Each evaluation is one JSON line: step, seconds, seed, heldout_reward, stderr, and the drift
from the start model that a Hatchery run measures (drift_kl, probe_loglik, on the same
built-in probe: hatchery.core.drift), so the two compare on both axes (`hatchery ablation`
reads these files as runs).

TRL is an optional dependency: pip install 'hatchery[grpo]'.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from hatchery.core.drift import PASSAGES, DriftMonitor
from hatchery.core.model import EMBEDDED, LoadedModel, generate, load_tokenizer, resolve_model
from hatchery.core.stop_rules import stop_rule
from hatchery.core.tasks import Task, TaskPrompt, load_task
from hatchery.evaluation import summary
from hatchery.v1 import reward_pb2
from reward_svc.graders import BatchGrader, builtin_graders
from reward_svc.server import to_proto


def _scores(grader: BatchGrader, prompts: list[TaskPrompt], completions: list[str]) -> tuple[list[float], list[int]]:
    protos = [to_proto(o) for o in grader.score([
        reward_pb2.Sample(prompt=p.text, completion=c, reference=p.reference, metadata=p.metadata)
        for p, c in zip(prompts, completions)])]
    return [s.score for s in protos], [s.status for s in protos]


class HeldoutClock(TrainerCallback):
    """Evaluates every `every` steps on the held-out prompts, keeping evaluation time
    off the training clock, and stops training when the budget is spent."""

    def __init__(self, task: Task, grader: BatchGrader, tokenizer, out: Path, budget_seconds: float, every: int,
                 seed: int):
        self.task, self.grader, self.tokenizer, self.out, self.seed = task, grader, tokenizer, out, seed
        self.budget_seconds, self.every = budget_seconds, every
        self.train_seconds = 0.0
        self.since = 0.0  # set when the step-0 evaluation ends
        self.drift: DriftMonitor | None = None  # the start model's distributions, taken at step 0

    def evaluate(self, model, step: int) -> dict:
        """Logs the held-out reward; the clock runs from the last evaluation's end to now."""
        if step:
            self.train_seconds += time.perf_counter() - self.since
        was_training = model.training
        model.eval()
        lm = LoadedModel(model, self.tokenizer)
        prompts = self.task.heldout
        texts = generate(lm, [p.text for p in prompts], self.task.max_new_tokens,
                         settled=stop_rule(self.task.stop_rule)).texts
        if self.drift is None:
            self.drift = DriftMonitor.of_start(lm, list(PASSAGES))
        drift = self.drift.measure(lm)
        model.train(was_training)
        row = {"step": step, "seconds": self.train_seconds, "seed": self.seed,
               **summary(*_scores(self.grader, prompts, texts)), "drift_kl": drift.kl, "probe_loglik": drift.loglik}
        with open(self.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"step {step:>4}  {self.train_seconds:7.1f} s  held-out {row['heldout_reward']:.3f}  "
              f"drift {drift.kl:.4f}", flush=True)
        self.since = time.perf_counter()
        return row

    def on_train_begin(self, args, state, control, model=None, **_):
        self.evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **_):
        over = self.train_seconds + time.perf_counter() - self.since >= self.budget_seconds
        if over or state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            self.evaluate(model, state.global_step)
        if over:
            control.should_training_stop = True


def run_grpo(out: Path, model: str = EMBEDDED, task_name: str = "arith", seed: int = 0, heldout_size: int = 128,
             budget_seconds: float = 720.0, max_steps: int = 10_000, lr: float = 1e-5, generations: int = 8,
             completions_per_step: int = 64, temperature: float = 1.0, eval_every: int = 2,
             task_seed: int = 0) -> list[dict]:
    """The defaults are the configuration measured in DESIGN.md (64 completions a step,
    8 per prompt at temperature 1, lr 1e-5, full fine-tuning, float32 on the CPU).
    `seed` seeds the trainer; `task_seed` fixes the train / held-out split, as a run's
    task.seed does, so runs of several seeds are scored on the same held-out prompts."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    task = load_task(task_name, task_seed, heldout_size)
    grader = builtin_graders()[task.grader]
    path = resolve_model(model) if model == EMBEDDED else Path(model)
    tokenizer = load_tokenizer(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    by_text = {p.text: p for p in task.train}
    train = Dataset.from_list([{"prompt": [{"role": "user", "content": p.text}], "text": p.text}
                               for p in task.train])

    def reward(prompts, completions, text, **_) -> list[float]:
        answers = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores, statuses = _scores(grader, [by_text[t] for t in text], answers)
        return [s if st == reward_pb2.SCORE_STATUS_OK else 0.0 for s, st in zip(scores, statuses)]

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    clock = HeldoutClock(task, grader, tokenizer, out, budget_seconds, eval_every, seed)
    with tempfile.TemporaryDirectory(prefix="hatchery-grpo-") as scratch:  # the trainer's output_dir; nothing kept
        config = GRPOConfig(
            output_dir=scratch, use_cpu=True, seed=seed, learning_rate=lr,
            per_device_train_batch_size=completions_per_step, num_generations=generations, temperature=temperature,
            max_completion_length=task.max_new_tokens, max_steps=max_steps, logging_steps=1, save_strategy="no",
            report_to="none", bf16=False, dataloader_num_workers=0,
            # TRL turns gradient checkpointing on by default: a second forward per step, which a
            # 135M model on the CPU does not need (the DESIGN.md measurement ran without it).
            gradient_checkpointing=False)
        GRPOTrainer(model=policy, reward_funcs=reward, args=config, train_dataset=train, processing_class=tokenizer,
                    callbacks=[clock]).train()
    return [json.loads(line) for line in out.read_text().splitlines()]
