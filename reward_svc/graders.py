"""Built-in graders: pure functions of one sample, no torch, no network.

A grader returns a `Grade`, raises `NotApplicable`, or raises anything else;
`PerSample` turns the last into a FAILED outcome, never into a score of 0.
Graders that score whole batches (plug-ins, bridges) implement `BatchGrader`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from typing import Protocol

import regex

from hatchery.core.stop_rules import INTEGER  # what first_integer reads; its early stop reads the same


class SampleLike(Protocol):
    """What a grader reads of a sample; hatchery.v1.Sample has these fields."""

    prompt: str
    completion: str
    reference: str
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class Grade:
    score: float
    sub_scores: dict[str, float] = field(default_factory=dict)


class NotApplicable(Exception):
    """The grader does not apply to this sample (for example a missing column)."""


class Status(str, Enum):
    """How scoring one sample ended; mirrors hatchery.v1.ScoreStatus."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class Outcome:
    status: Status
    score: float = 0.0  # meaningful only when status is OK
    sub_scores: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def failed(cls, error: str, status: Status = Status.FAILED) -> Outcome:
        return cls(status, error=error)

    @classmethod
    def of_score(cls, score: float, sub_scores: dict[str, float] | None = None) -> Outcome:
        """OK for a finite number; FAILED (not 0) for NaN, inf or a non-number."""
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return cls.failed(f"grader returned {type(score).__name__} {score!r}, not a number")
        if not math.isfinite(score):
            return cls.failed(f"grader returned {score}")
        return cls(Status.OK, float(score), dict(sub_scores or {}))


class BatchGrader(Protocol):
    """Scores a batch; returns exactly one outcome per sample, in order, and never raises for one bad sample."""

    sub_score_names: tuple[str, ...]

    def score(self, samples: Sequence[SampleLike]) -> list[Outcome]: ...


Grader = Callable[[str, str, str, Mapping[str, str]], Grade]  # (prompt, completion, reference, metadata)


class PerSample:
    """A per-sample grader as a BatchGrader: one sample's error costs that sample only."""

    def __init__(self, grader: Grader, sub_score_names: tuple[str, ...] = ()):
        self.grader, self.sub_score_names = grader, sub_score_names

    def score_one(self, s: SampleLike) -> Outcome:
        try:
            grade = self.grader(s.prompt, s.completion, s.reference, s.metadata)
        except NotApplicable as err:
            return Outcome.failed(str(err), Status.NOT_APPLICABLE)
        except TimeoutError as err:
            return Outcome.failed(str(err), Status.TIMED_OUT)
        except Exception as err:  # a grader bug costs one sample, not the batch
            return Outcome.failed(f"{type(err).__name__}: {err}")
        return Outcome.of_score(grade.score, grade.sub_scores)

    def score(self, samples: Sequence[SampleLike]) -> list[Outcome]:
        return [self.score_one(s) for s in samples]


# Graders are specified, not defined by CPython: ASCII digits only, whitespace is ASCII
# whitespace, integers of any length, and a parser of our own, so that a grader in any
# language (examples/reward-node) can give the same scores.
WHITESPACE = " \t\n\r\f\v"


def _canonical_integer(text: str) -> str | None:
    """The integer `text` spells (surrounding whitespace allowed), without leading zeros; None if none."""
    text = text.strip(WHITESPACE)
    if not INTEGER.fullmatch(text):
        return None
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    digits = digits.lstrip("0") or "0"
    return digits if digits == "0" else sign + digits


def first_integer(prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
    """1 if the first integer in the completion equals the reference (an integer), else 0."""
    expected = _canonical_integer(reference)
    if expected is None:
        raise NotApplicable("first_integer needs a reference answer that is an integer")
    found = INTEGER.search(completion)
    return Grade(1.0 if found and _canonical_integer(found.group()) == expected else 0.0)


_THINK_THEN_ANSWER = "</think>\n<answer>"
# The paper's ^[0-9+\-*/() ]+$ as Python reads it: its $ also matches before one final newline.
_EQUATION = re.compile(r"[0-9+\-*/() ]+\n?")
_TOKEN = re.compile(r" *([0-9]+|//|[-+*/()])")
MAX_EQUATION_CHARS = 1000
MAX_NESTING = 100
TOLERANCE = Fraction(1, 100_000)  # the paper's abs(float(result) - float(target)) < 1e-5


def evaluate_equation(expression: str) -> Fraction:
    """The exact value of an answer as Python's eval reads + - * / // over integer
    literals and parentheses (floor division floors the exact quotient).

    Refused as the paper's eval refuses it: an integer literal with a leading zero (07),
    implicit multiplication. Refused unlike it (rewards.md says why): ** and unary
    minus or plus, more than MAX_NESTING levels of parentheses. Raises ValueError for what
    does not parse and ZeroDivisionError for a division by zero.
    """
    tokens = _TOKEN.findall(expression)
    if "".join(tokens) != expression.replace(" ", ""):
        raise ValueError("not an equation")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr(depth: int) -> Fraction:
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth: int) -> Fraction:
        value = factor(depth)
        while peek() in ("*", "/", "//"):
            op, operand = take(), factor(depth)
            value = value * operand if op == "*" else value / operand if op == "/" else Fraction(value // operand)
        return value

    def factor(depth: int) -> Fraction:
        token = take() if peek() is not None else None
        if token == "(":
            if depth >= MAX_NESTING:
                raise ValueError(f"more than {MAX_NESTING} levels of parentheses")
            value = expr(depth + 1)
            if peek() != ")":
                raise ValueError("unbalanced parentheses")
            take()
            return value
        if token is None or not token.isdigit():
            raise ValueError(f"expected a number, got {token!r}")
        if token[0] == "0" and token.strip("0"):
            raise ValueError(f"{token}: Python refuses an integer literal with a leading zero")
        return Fraction(int(token))

    value = expr(0)
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r}")
    return value


def answer_blocks(text: str) -> list[str]:
    """The contents of <answer>...</answer> blocks, scanned left to right without overlap
    (what the regex <answer>(.*?)</answer> finds), in linear time on any input."""
    blocks, pos = [], 0
    while (start := text.find("<answer>", pos)) >= 0:
        end = text.find("</answer>", start + len("<answer>"))
        if end < 0:
            break
        blocks.append(text[start + len("<answer>"):end])
        pos = end + len("</answer>")
    return blocks


def countdown_format(response: str) -> float:
    """1.0 for the layout <think>...</think>\n<answer>...</answer> with nothing after but one
    newline (Python's $), else 0.1 when the think block is closed + 0.5 when an answer
    block exists. The prompt ends with <think>, so the response continues it."""
    body = response.removesuffix("\n")
    split = body.find(_THINK_THEN_ANSWER)
    if split >= 0 and body.endswith("</answer>") and split + len(_THINK_THEN_ANSWER) <= len(body) - len("</answer>"):
        return 1.0
    return (0.1 if "</think>" in response else 0.0) + (0.5 if answer_blocks(response) else 0.0)


def countdown_answer(response: str, numbers: list[int], target: int) -> float:
    """1.0 if the last <answer> holds only digits, + - * / ( ) and spaces (and one final
    newline), uses exactly the given numbers and comes within 1e-5 of the target."""
    answers = answer_blocks(response)
    if not answers:
        return 0.0
    content = answers[-1]
    if len(content) > MAX_EQUATION_CHARS or not _EQUATION.fullmatch(content):
        return 0.0
    equation = content.removesuffix("\n")
    if Counter(int(n) for n in re.findall(r"[0-9]+", equation)) != Counter(numbers):
        return 0.0
    try:
        return 1.0 if abs(evaluate_equation(equation) - target) < TOLERANCE else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0


def _listed(text: str) -> list[str]:
    """'3,5,7', or a dataset's list column as JSON text ('[3, 5, 7]'); a non-integer item is ''."""
    if not text.lstrip().startswith("["):
        return text.split(",")
    try:
        items = json.loads(text)
    except ValueError:  # not JSON, or an integer too long for Python to read
        return [""]
    return [str(n) if type(n) is int else "" for n in items] if isinstance(items, list) and items else [""]


def countdown(prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
    """Qiu et al. 2025: 0.1 x format + answer."""
    numbers = [_canonical_integer(n) for n in _listed(metadata.get("numbers", ""))]
    target = _canonical_integer(metadata.get("target", ""))
    if target is None or None in numbers:
        raise NotApplicable("countdown needs metadata 'numbers' (integers, comma-separated or a JSON list) and "
                            "'target' (an integer)")
    fmt = countdown_format(completion)
    # A number longer than an equation may be can never be written, nor a value that long reached.
    reachable = max(len(n) for n in [target, *numbers]) <= MAX_EQUATION_CHARS
    ans = countdown_answer(completion, [int(n) for n in numbers], int(target)) if reachable else 0.0
    return Grade(0.1 * fmt + ans, {"format": fmt, "answer": ans})


def length(prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
    """Conciseness (Qiu et al.): minus the absolute length difference to the reference, in
    characters (code points), ASCII whitespace stripped from both ends."""
    return Grade(-abs(len(completion.strip(WHITESPACE)) - len(reference.strip(WHITESPACE))))


_FINAL_GSM8K = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:/\d+)?", re.ASCII)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))", re.ASCII)
_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}", re.ASCII)
# \text{...} stops at the next backslash as well as at its brace: with [^}]* alone, a million
# unclosed "\text{" made each match scan to the end of the text (quadratic: minutes).
_LATEX_NOISE = re.compile(r"\\[!,; ]|\\text\{[^}\\]*\}|\\left|\\right|\\%|\\\$|[$%]")


def _last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def final_answer(text: str) -> str:
    """Where a solution states its answer: the last `#### N` line (GSM8K), else the last
    \\boxed{} (LaTeX), else the whole text (its last number is taken)."""
    marked = _FINAL_GSM8K.findall(text)
    if marked:
        return marked[-1]
    boxed = _last_boxed(text)
    return boxed if boxed is not None else text


# Digits of a mantissa or denominator that exact arithmetic will take (Python's int() refuses
# more than 4,300 by default): beyond it, numbers still compare exactly when neither is a fraction.
MAX_ARITHMETIC_DIGITS = 4000


@dataclass(frozen=True)
class Number:
    """A number as written, exactly: sign, significant digits x 10**exponent, over a denominator.

    Never forms 10**exponent or a value from its digits: a completion may write 1e999999999, or
    an integer of a million digits, and comparing it must still cost microseconds. Integers and
    decimals of any length compare by their canonical digits; a fraction (3/4, \\frac{3}{4})
    compares by exact arithmetic within MAX_ARITHMETIC_DIGITS.
    """

    negative: bool
    digits: str  # no leading or trailing zeros; "" is zero
    exponent: int
    denominator: str = "1"  # no leading zeros, never "0"

    @classmethod
    def parse(cls, text: str) -> Number | None:
        """What _NUMBER matched; None for a zero denominator or an exponent of absurd length."""
        text, _, denominator = text.partition("/")
        denominator = denominator.lstrip("0") if denominator else "1"
        mantissa, _, exponent = text.lower().partition("e")
        if not denominator or len(exponent) > 20:
            return None
        negative = mantissa.startswith("-")
        whole, _, fraction = mantissa.lstrip("-").partition(".")
        digits = (whole + fraction).lstrip("0")
        shift = int(exponent or 0) - len(fraction)
        stripped = digits.rstrip("0")
        shift += len(digits) - len(stripped)
        if not stripped:
            return cls(False, "", 0)
        return cls(negative, stripped, shift, denominator)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Number):
            return NotImplemented
        if self.denominator == other.denominator == "1" or not (self.digits and other.digits):
            return (self.negative, self.digits, self.exponent, self.denominator) == (
                other.negative, other.digits, other.exponent, other.denominator)
        if self.negative != other.negative or max(map(len, (self.digits, self.denominator, other.digits,
                                                           other.denominator))) > MAX_ARITHMETIC_DIGITS:
            return False
        a, b = int(self.digits) * int(other.denominator), int(other.digits) * int(self.denominator)
        shift = self.exponent - other.exponent  # a * 10**shift == b?
        if abs(shift) > max(a, b).bit_length():  # a, b >= 1: equal only if 10**|shift| <= max(a, b)
            return False
        return a * 10**shift == b if shift >= 0 else a == b * 10**-shift

    __hash__ = None  # equality is by value across forms; nothing hashes these


def parse_number(text: str, last: bool = False) -> Number | None:
    """The first (or last) number in text, exactly: thousands separators, currency and
    percent signs and LaTeX spacing are ignored; 3/4, \\frac{3}{4}, 0.75 and 7.50 are numbers."""
    cleaned = _THOUSANDS.sub("", _LATEX_NOISE.sub("", text.replace("\u2212", "-")))
    cleaned = _FRAC.sub(r"\1/\2", cleaned)
    found = _NUMBER.findall(cleaned)
    return Number.parse(found[-1] if last else found[0]) if found else None


def numeric(prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
    """1 if the completion's final answer (#### N, \\boxed{N} or its last number) equals the
    reference's as a number (72 = 72.00 = $72 = 144/2), else 0."""
    expected = parse_number(final_answer(reference), last=True)
    if expected is None:
        raise NotApplicable("numeric needs a reference that holds a number")
    marked = final_answer(completion)
    got = parse_number(marked, last=marked is completion)
    return Grade(1.0 if got is not None and got == expected else 0.0)


class Regex:
    """A format reward: match_score when the pattern is found (mode "search") or covers the
    whole completion (mode "fullmatch"), else miss_score.

    Patterns come from users' configs, and one that backtracks catastrophically on some
    completion would hold a server thread for good: matching runs under a time limit
    (the `regex` package's, which `re` lacks), past which the sample fails instead.
    """

    def __init__(self, pattern: str, mode: str = "search", match_score: float = 1.0, miss_score: float = 0.0,
                 timeout_seconds: float = 1.0):
        if mode not in ("search", "fullmatch"):
            raise ValueError(f"mode must be 'search' or 'fullmatch', got {mode!r}")
        self.pattern = regex.compile(pattern, regex.DOTALL)
        self.match = self.pattern.search if mode == "search" else self.pattern.fullmatch
        self.match_score, self.miss_score, self.timeout_seconds = match_score, miss_score, timeout_seconds

    def __call__(self, prompt: str, completion: str, reference: str, metadata: Mapping[str, str]) -> Grade:
        try:
            found = self.match(completion, timeout=self.timeout_seconds)
        except TimeoutError:
            raise TimeoutError(f"pattern {self.pattern.pattern!r} ran past {self.timeout_seconds:g} s") from None
        return Grade(self.match_score if found else self.miss_score)


class Combined:
    """A weighted sum of other graders. A sample that any part cannot score gets that
    part's status (never a partial sum); sub-scores name each part."""

    def __init__(self, parts: Sequence[tuple[str, float, BatchGrader]]):
        if not parts:
            raise ValueError("a combined grader needs at least one part")
        self.parts = list(parts)
        self.sub_score_names = tuple(name for name, _, _ in parts) + tuple(
            f"{name}.{sub}" for name, _, grader in parts for sub in grader.sub_score_names)

    def score(self, samples: Sequence[SampleLike]) -> list[Outcome]:
        per_part = [grader.score(samples) for _, _, grader in self.parts]
        combined = []
        for i in range(len(samples)):
            outcomes = [(name, weight, results[i]) for (name, weight, _), results in zip(self.parts, per_part)]
            bad = next(((name, o) for name, _, o in outcomes if o.status is not Status.OK), None)
            if bad:
                name, o = bad
                combined.append(Outcome.failed(f"{name}: {o.error}", o.status))
                continue
            subs = {name: o.score for name, _, o in outcomes}
            subs.update({f"{name}.{k}": v for name, _, o in outcomes for k, v in o.sub_scores.items()})
            combined.append(Outcome.of_score(sum(w * o.score for _, w, o in outcomes), subs))
        return combined


def builtin_graders() -> dict[str, BatchGrader]:
    """The graders every Hatchery reward service offers by name, with no configuration."""
    return {
        "first_integer": PerSample(first_integer),
        "countdown": PerSample(countdown, ("format", "answer")),
        "numeric": PerSample(numeric),
        "length": PerSample(length),
    }
