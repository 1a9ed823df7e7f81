"""Built-in graders: pure functions of one sample, no torch, no network.

A grader returns a `Grade` or raises; the server turns an exception into a
FAILED status, never into a score of 0.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Grade:
    score: float
    sub_scores: dict[str, float] = field(default_factory=dict)


class NotApplicable(Exception):
    """The grader does not apply to this sample (for example a missing column)."""


Grader = Callable[[str, str, str, Mapping[str, str]], Grade]  # (prompt, completion, reference, metadata)

_INTEGER = re.compile(r"-?\d+")


def first_integer(prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
    """1 if the first integer in the completion equals the reference, else 0."""
    if not reference.strip():
        raise NotApplicable("first_integer needs a reference answer")
    found = _INTEGER.search(completion)
    return Grade(1.0 if found and int(found.group()) == int(reference) else 0.0)


_FORMAT = re.compile(r"^<think>.*?</think>\n<answer>.*?</answer>$", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_EQUATION_CHARS = re.compile(r"^[\d+\-*/() ]+$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _safe_eval(expression: str) -> float:
    """Evaluates + - * / over integer literals and parentheses, nothing else."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"disallowed expression element {type(node).__name__}")

    return walk(ast.parse(expression, mode="eval"))


def countdown_format(response: str) -> float:
    """1.0 for a full think/answer layout, else 0.1 per think block + 0.5 per answer block."""
    text = "<think>" + response
    if _FORMAT.match(text):
        return 1.0
    score = 0.0
    if "<think>" in text and "</think>" in text:
        score += 0.1
    if _ANSWER.search(text):
        score += 0.5
    return score


def countdown_answer(response: str, numbers: list[int], target: float) -> float:
    """1.0 if the last <answer> uses exactly the given numbers and hits the target."""
    answers = _ANSWER.findall(response)
    if not answers:
        return 0.0
    equation = answers[-1].strip()
    if not _EQUATION_CHARS.match(equation):
        return 0.0
    used = [int(n) for n in re.findall(r"\d+", equation)]
    if Counter(used) != Counter(numbers):
        return 0.0
    try:
        value = _safe_eval(equation)
    except (ValueError, SyntaxError, ZeroDivisionError, RecursionError):
        return 0.0
    return 1.0 if abs(value - target) < 1e-5 else 0.0


def countdown(prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
    """Qiu et al. 2025: 0.1 x format + answer."""
    try:
        numbers = [int(n) for n in metadata["numbers"].split(",")]
        target = float(metadata["target"])
    except (KeyError, ValueError) as err:
        raise NotApplicable(f"countdown needs metadata 'numbers' (comma-separated) and 'target': {err}") from None
    fmt = countdown_format(completion)
    ans = countdown_answer(completion, numbers, target)
    return Grade(0.1 * fmt + ans, {"format": fmt, "answer": ans})


def length(prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
    """Conciseness (Qiu et al.): minus the absolute length difference to the reference, in characters."""
    return Grade(-abs(len(completion.strip()) - len(reference.strip())))


GRADERS: dict[str, Grader] = {"first_integer": first_integer, "countdown": countdown, "length": length}
SUB_SCORES = ("format", "answer")
