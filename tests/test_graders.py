"""Built-in graders and tasks."""

import random

import pytest

from hatchery.tasks import arith, countdown, countdown_problem
from reward_svc.graders import NotApplicable, _safe_eval, first_integer, length
from reward_svc.graders import countdown as countdown_grade

META = {"numbers": "3,5,7", "target": "22"}


def test_first_integer():
    assert first_integer("", "The answer is 7.", "7", {}).score == 1.0
    assert first_integer("", "3 + 4 = 7", "7", {}).score == 0.0
    assert first_integer("", "-4", "-4", {}).score == 1.0
    assert first_integer("", "no digits", "1", {}).score == 0.0
    with pytest.raises(NotApplicable):
        first_integer("", "7", "", {})


@pytest.mark.parametrize("response, fmt, answer", [
    ("reasoning</think>\n<answer>3 * 5 + 7</answer>", 1.0, 1.0),
    ("reasoning</think>\n<answer>(7 + 5) * 3</answer>", 1.0, 0.0),  # wrong value
    ("r</think>\n<answer>3 * 5 + 7 + 3</answer>", 1.0, 0.0),  # a number used twice
    ("r</think>\n<answer>3 * 5 + 7 - 0</answer>", 1.0, 0.0),  # an extra number
    ("r</think>\n<answer>__import__('os')</answer>", 1.0, 0.0),  # not an equation
    ("r</think> <answer>3 * 5 + 7</answer>", 0.6, 1.0),  # no newline: partial format
    ("no tags at all", 0.0, 0.0),  # "<think>" prepended, but no </think>
    ("r</think>\n<answer>1</answer> then <answer>7 + 3 * 5</answer>", 1.0, 1.0),  # last answer counts
])
def test_countdown_reward(response, fmt, answer):
    grade = countdown_grade("", response, "", META)
    assert grade.sub_scores == {"format": fmt, "answer": answer}
    assert grade.score == pytest.approx(0.1 * fmt + answer)


def test_countdown_needs_its_columns_and_evaluates_safely():
    with pytest.raises(NotApplicable, match="numbers"):
        countdown_grade("", "x", "", {})
    assert _safe_eval("(1 + 2) / 3") == 1.0
    with pytest.raises(ValueError):
        _safe_eval("2 ** 3")


def test_generated_countdown_problems_are_solvable():
    rng = random.Random(0)
    for _ in range(50):
        p = countdown_problem(rng)
        assert len(p.metadata["numbers"].split(",")) in (3, 4)
        assert int(p.metadata["target"]) > 0 and p.reference == p.metadata["target"]
    task = countdown(1, 10)
    assert len(task.heldout) == 10 and task.grader == "countdown"


def test_arith_heldout_is_never_trained_on():
    task = arith(0, 64)
    assert len(task.heldout) == 64 and len(task.train) == 136
    assert not {p.text for p in task.heldout} & {p.text for p in task.train}
    assert arith(0, 64).heldout == task.heldout
    with pytest.raises(ValueError, match="heldout_size"):
        arith(0, 500)


def test_length():
    assert length("", " abc ", "abcde", {}).score == -2
