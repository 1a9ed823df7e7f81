"""Stop rules: when a completion is settled, so generation may end its row early.

A task declares one when its grader can read nothing more from a completion past
some point; the optimizer names the rule in each lease and the worker's decoding
loop applies it. The rule is a decoding concern, so it lives here, beside the
model's generate(), and the graders that make it safe import what they read from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# An integer as the first_integer grader reads it: ASCII digits only, any length.
INTEGER = re.compile(r"-?[0-9]+")


def first_integer_settled(completion: str) -> bool:
    """True once more text cannot change what first_integer reads: its first integer is
    followed by another character. Generation may stop there (the task's early stop)."""
    found = INTEGER.search(completion)
    return found is not None and found.end() < len(completion)


# A task's early stop, by name: a completion is settled once its grader can read nothing more from it.
STOP_RULES: dict[str, Callable[[str], bool]] = {"first_integer": first_integer_settled}


def stop_rule(name: str) -> Callable[[str], bool] | None:
    """The settled test `name` stands for; None for "" (no early stop)."""
    if name and name not in STOP_RULES:
        raise ValueError(f"unknown stop rule {name!r}; known: {sorted(STOP_RULES)}")
    return STOP_RULES[name] if name else None
