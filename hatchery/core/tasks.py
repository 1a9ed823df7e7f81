"""Tasks: seeded prompt sets with references, and the grader that scores them."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

EXACT_INTEGERS = 2**53  # a typed column is a JSON number (a double): whole numbers up to this are exact


@dataclass(frozen=True)
class TaskPrompt:
    text: str  # the user message; for a conversation, the content of its last user message
    reference: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # columns as text, for graders that read strings
    columns: dict[str, Any] = field(default_factory=dict)  # the same with their types (a dataset's)
    messages: tuple[dict[str, str], ...] = ()  # the conversation the model is given, when the prompt is one

    @property
    def model_input(self) -> str | list[dict[str, str]]:
        """What the chat template is applied to: the conversation, or the text alone."""
        return list(self.messages) or self.text

    def with_system_prompt(self, system_prompt: str) -> TaskPrompt:
        return replace(self, messages=({"role": "system", "content": system_prompt},
                                       {"role": "user", "content": self.text}))


@dataclass(frozen=True)
class Task:
    name: str
    grader: str
    train: Sequence[TaskPrompt]  # sampled from during training
    heldout: Sequence[TaskPrompt]  # never used for training or selection
    max_new_tokens: int
    stop_rule: str = ""  # one of hatchery.core.stop_rules.STOP_RULES: its grader reads nothing after that point

    def stop_rule_for(self, grader: str) -> str:
        """The early stop when `grader` ("": the task's own) scores the completions; none
        for another grader, which may read more of a completion."""
        return self.stop_rule if grader in ("", self.grader) else ""


ARITH_TEMPLATE = "What is {a} {op} {b}? Reply with just the final number, nothing else."


def arith(seed: int, heldout_size: int) -> Task:
    """One-digit a + b or a - b; exact integer answer. The 200 problems are
    split once by a fixed shuffle, so held-out prompts are never trained on."""
    problems = [TaskPrompt(ARITH_TEMPLATE.format(a=a, op=op, b=b), str(a + b if op == "+" else a - b))
                for a in range(10) for b in range(10) for op in "+-"]
    random.Random(seed).shuffle(problems)
    if not 0 < heldout_size < len(problems):
        raise ValueError(f"arith has {len(problems)} problems; heldout_size must be between 1 and {len(problems) - 1}")
    return Task("arith", "first_integer", problems[heldout_size:], problems[:heldout_size], max_new_tokens=8,
                stop_rule="first_integer")


COUNTDOWN_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
    "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)


def countdown_problem(rng: random.Random) -> TaskPrompt:
    """A solvable problem: 3 or 4 numbers in 1..99 combined by a random expression
    with a positive integer value (the target)."""
    while True:
        numbers = [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))]
        values = [(float(n), str(n)) for n in numbers]
        rng.shuffle(values)
        while len(values) > 1:
            (x, xs), (y, ys) = values.pop(), values.pop()
            op = rng.choice("+-*/")
            if op == "/" and (y == 0 or x % y):
                op = "+"
            value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else 0.0}[op]
            values.append((value, f"({xs} {op} {ys})"))
        target, _ = values[0]
        if target > 0 and target == int(target) and target < 1000:
            listed = ", ".join(map(str, numbers))
            return TaskPrompt(COUNTDOWN_TEMPLATE.format(numbers=f"[{listed}]", target=int(target)),
                              str(int(target)), {"numbers": ",".join(map(str, numbers)), "target": str(int(target))})


def countdown(seed: int, heldout_size: int, train_size: int = 2000) -> Task:
    """Qiu et al. 2025's Countdown, generated from a seed."""
    rng = random.Random(seed)
    problems = [countdown_problem(rng) for _ in range(train_size + heldout_size)]
    return Task("countdown", "countdown", problems[heldout_size:], problems[:heldout_size], max_new_tokens=256)


TASKS: dict[str, Callable[[int, int], Task]] = {"arith": arith, "countdown": countdown}


def load_task(name: str, seed: int, heldout_size: int) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name](seed, heldout_size)
