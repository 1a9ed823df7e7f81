"""Built-in graders and tasks."""

import random
from dataclasses import dataclass

import pytest

from hatchery.core.stop_rules import first_integer_settled
from hatchery.core.tasks import arith, countdown, countdown_problem
from reward_svc.graders import (
    Combined,
    NotApplicable,
    Outcome,
    PerSample,
    Regex,
    Status,
    builtin_graders,
    evaluate_equation,
    first_integer,
    length,
    numeric,
)
from reward_svc.graders import countdown as countdown_grade

META = {"numbers": "3,5,7", "target": "22"}


def test_first_integer():
    assert first_integer("", "The answer is 7.", "7", {}).score == 1.0
    assert first_integer("", "3 + 4 = 7", "7", {}).score == 0.0
    assert first_integer("", "-4", "-4", {}).score == 1.0
    assert first_integer("", "no digits", "1", {}).score == 0.0
    assert first_integer("", "007", " 7\n", {}).score == 1.0  # integers, not strings
    assert first_integer("", "-0", "0", {}).score == 1.0
    assert first_integer("", "9" * 5000, "9" * 5000, {}).score == 1.0  # any length
    assert first_integer("", "\u0667", "7", {}).score == 0.0  # ASCII digits only (Arabic-Indic 7 is not one)
    for reference in ("", "7.0", "seven"):
        with pytest.raises(NotApplicable):
            first_integer("", "7", reference, {})


def test_first_integer_settles_once_a_character_follows_it():
    """Generation may stop there: no continuation changes what first_integer reads."""
    for text in ("7.", "The answer is 12 ", "-3\n", "3 + 4 = 7", "1,000"):
        assert first_integer_settled(text)
    for text in ("", "The answer is", "The answer is -", "12", "-"):
        assert not first_integer_settled(text)


@pytest.mark.parametrize("response, fmt, answer", [
    ("reasoning</think>\n<answer>3 * 5 + 7</answer>", 1.0, 1.0),
    ("reasoning</think>\n<answer>(7 + 5) * 3</answer>", 1.0, 0.0),  # wrong value
    ("r</think>\n<answer>3 * 5 + 7 + 3</answer>", 1.0, 0.0),  # a number used twice
    ("r</think>\n<answer>3 * 5 + 7 - 0</answer>", 1.0, 0.0),  # an extra number
    ("r</think>\n<answer>__import__('os')</answer>", 1.0, 0.0),  # not an equation
    ("r</think> <answer>3 * 5 + 7</answer>", 0.6, 1.0),  # no newline: partial format
    ("no tags at all", 0.0, 0.0),  # "<think>" prepended, but no </think>
    ("r</think>\n<answer>1</answer> then <answer>7 + 3 * 5</answer>", 1.0, 1.0),  # last answer counts
    ("r</think>\n<answer>7 + 3 * 5</answer> then <answer>1</answer>", 1.0, 0.0),  # ... even when wrong
    ("r</think>\n<answer>3 * 5</answer>", 1.0, 0.0),  # a number missing
    ("r</think>\n<answer>3 * 5 + 7 * 1</answer>", 1.0, 0.0),  # a number not given
    ("r</think>\n<answer>(3 + 5 + 7) / 0</answer>", 1.0, 0.0),  # an extra 0, and division by zero
    ("r</think>\n<answer>7 / (5 - 5) + 3</answer>", 1.0, 0.0),  # 5 reused; division by zero
    ("r</think>\n<answer>3 ** 5 + 7</answer>", 1.0, 0.0),  # exponent: only + - * / are evaluated
    ("r</think>\n<answer>3 ^ 5 + 7</answer>", 1.0, 0.0),  # xor is not arithmetic here
    ("r</think>\n<answer>3 * 5 + 7 = 22</answer>", 1.0, 0.0),  # "=" is not an equation character
    ("r</think>\n<answer>3*5+7.0</answer>", 1.0, 0.0),  # "." is not allowed
    ("r</think>\n<answer>-3 * -5 + 7</answer>", 1.0, 0.0),  # unary minus is not allowed
    ("r</think>\n<answer>3 // 5 + 7</answer>", 1.0, 0.0),  # floor division, as Python's: 0 + 7
    ("r</think>\n<answer>" + "(" * 100 + "3 * 5 + 7" + ")" * 100 + "</answer>", 1.0, 1.0),  # deep but valid
    ("r</think>\n<answer>" + "(" * 5000 + "3 * 5 + 7" + ")" * 5000 + "</answer>", 1.0, 0.0),  # too deep to parse
    ("r</think>\n<answer>" + " + ".join(["3"] * 20000) + "</answer>", 1.0, 0.0),  # huge, numbers reused
    ("r</think>\n<answer></answer>", 1.0, 0.0),  # empty answer
    ("<think>r</think>\n<answer>3 * 5 + 7</answer>", 1.0, 1.0),  # a repeated <think> still matches (as Qiu et al.)
    ("r</think>\n<answer>3 * 5 + 7</answer> done", 0.6, 1.0),  # text after </answer>: partial format
    ("r</think>\n<answer>3 * 5 + 7</answer>\n", 1.0, 1.0),  # one final newline: Python's $ allows it (Qiu et al.)
    ("r</think>\n<answer>3 * 5 + 7</answer>\n\n", 0.6, 1.0),  # two are text after
    ("r</think>\n<answer>07 + 3 * 5</answer>", 1.0, 0.0),  # Python's eval refuses the literal 07 (Qiu et al.)
    ("r</think>\n<answer>00 + 3 * 5 + 7</answer>", 1.0, 0.0),  # 00 it reads, as 0: an extra number here
    ("r</think>\n<answer>3 * 5 + 7\n</answer>", 1.0, 1.0),  # one final newline in the answer, too
    ("r</think>\n<answer>\n3 * 5 + 7</answer>", 1.0, 0.0),  # but not a leading one
    ("r</think>\n<answer>\t3 * 5 + 7</answer>", 1.0, 0.0),  # nor a tab: spaces only
    ("r</think>\n<answer> 22 </answer>", 1.0, 0.0),  # the target alone uses none of the numbers
])
def test_countdown_reward(response, fmt, answer):
    grade = countdown_grade("", response, "", META)
    assert grade.sub_scores == {"format": fmt, "answer": answer}
    assert grade.score == pytest.approx(0.1 * fmt + answer)


def test_countdown_needs_its_columns_and_evaluates_safely():
    for meta in ({}, {"numbers": "3,5,7"}, {"numbers": "3,x", "target": "22"}, {"numbers": "3,5", "target": "2.5"}):
        with pytest.raises(NotApplicable, match="numbers"):
            countdown_grade("", "x", "", meta)
    assert evaluate_equation("(1 + 2) / 3") == 1
    assert evaluate_equation("1 / 3 * 3") == 1  # exact: no rounding on the way
    assert evaluate_equation("10 - 2 - 3") == 5 and evaluate_equation("2 + 3 * 4") == 14  # left to right, precedence
    assert evaluate_equation("7 // 2") == 3 and evaluate_equation("(0 - 7) // 2") == -4  # Python's floor division
    assert evaluate_equation("(1 / 3) // (1 / 7)") == 2 and evaluate_equation("00 + 1") == 1
    for bad in ("2 ** 3", "2 / / 3", "-2 + 3", "2 (3)", "(2 + 3", "2 + 3)", "", "2 +", "(" * 101 + "1" + ")" * 101,
                "07 + 1", "1 2"):
        with pytest.raises(ValueError):
            evaluate_equation(bad)
    with pytest.raises(ZeroDivisionError):
        evaluate_equation("1 / (2 - 2)")


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
    assert length("", "ééé", "abc", {}).score == 0  # characters, not bytes
    assert length("", "\u00a0abc", "abc", {}).score == -1  # only ASCII whitespace is stripped
    assert length("", "", "", {}).score == 0


@pytest.mark.parametrize("completion, reference, score", [
    ("Janet has 3 + 4 = 7 apples.\n#### 7", "7", 1.0),  # GSM8K marker
    ("#### 1,000", "She paid $1000.\n#### 1000", 1.0),  # reference is a GSM8K solution; thousands separator
    ("#### $1,234.50", "1234.5", 1.0),  # currency, trailing zero
    ("The answer is \\boxed{\\frac{3}{4}}", "0.75", 1.0),  # LaTeX fraction
    ("\\boxed{\\dfrac{1}{3}}", "1/3", 1.0),  # exact: 1/3 is not 0.333
    ("\\boxed{0.333}", "1/3", 0.0),
    ("so \\boxed{\\text{about } 42}", "42", 1.0),
    ("\\boxed{{7}}", "7", 1.0),  # nested braces
    ("first 5, then finally 12", "12", 1.0),  # no marker: the last number
    ("first 12, then finally 5", "12", 0.0),
    ("#### 12\nbut maybe 5", "12", 1.0),  # a marker wins over later numbers
    ("\u22125", "-5", 1.0),  # unicode minus
    ("50%", "50", 1.0),
    ("1e3", "1000", 1.0),
    ("no answer at all", "3", 0.0),
    ("#### 2/0", "1", 0.0),  # division by zero is no number
    ("\\boxed{7", "7", 1.0),  # unclosed box: falls back to the last number
])
def test_numeric(completion, reference, score):
    assert numeric("", completion, reference, {}).score == score


def test_numeric_needs_a_numeric_reference():
    with pytest.raises(NotApplicable, match="reference"):
        numeric("", "#### 3", "three", {})


def test_regex_and_combined_graders():
    boxed = Regex(r"\\boxed\{.+\}")
    assert boxed("", "so \\boxed{3}", "", {}).score == 1.0 and boxed("", "3", "", {}).score == 0.0
    whole = Regex(r"\d+", mode="fullmatch", match_score=0.5, miss_score=-1.0)
    assert whole("", "42", "", {}).score == 0.5 and whole("", "42 apples", "", {}).score == -1.0
    with pytest.raises(ValueError, match="mode"):
        Regex("x", mode="match")
    graders = builtin_graders()
    mix = Combined([("numeric", 1.0, graders["numeric"]), ("countdown", 2.0, graders["countdown"])])
    sample = Sample("", "x</think>\n<answer>3 * 5 + 7</answer> #### 22", "22", META)
    (outcome,) = mix.score([sample])
    assert outcome.score == pytest.approx(1.0 + 2.0 * 1.06)  # text after </answer>: format 0.6
    assert outcome.sub_scores == {"numeric": 1.0, "countdown": pytest.approx(1.06), "countdown.format": 0.6,
                                  "countdown.answer": 1.0}
    (missing,) = mix.score([Sample("", "#### 22", "22", {})])  # countdown lacks its columns
    assert missing.status is Status.NOT_APPLICABLE and missing.error.startswith("countdown:")


def test_per_sample_errors_and_non_numbers_are_failures_not_zeros():
    def broken(prompt, completion, reference, metadata):
        raise KeyError("oops")

    assert PerSample(broken).score([Sample("", "", "", {})])[0].status is Status.FAILED
    assert Outcome.of_score(float("inf")).status is Status.FAILED
    assert Outcome.of_score("1.0").status is Status.FAILED
    assert Outcome.of_score(True).status is Status.FAILED
    assert Outcome.of_score(2).score == 2.0


@dataclass
class Sample:
    prompt: str
    completion: str
    reference: str
    metadata: dict
