"""Reward plug-ins for the tests, TRL-style: (prompts, completions, **columns) -> list[float | None].

`chaos` misbehaves on purpose, by completion: "sleep" hangs, "raise" raises,
"nan" returns NaN, "exit" kills its own process, "hog" allocates without bound,
"none" is not applicable, "ok:X" scores X.
"""

import asyncio
import json
import math
import os
import time


def chaos(prompts, completions, **kwargs):
    scores = []
    for text in completions:
        if text == "sleep":
            time.sleep(600)
        elif text == "raise":
            raise RuntimeError("the grader broke on purpose")
        elif text == "exit":
            os._exit(3)
        elif text == "hog":
            hoard = []
            while True:
                hoard.append(bytearray(64 * 2**20))
        scores.append(math.nan if text == "nan" else None if text == "none" else float(text.split(":")[1]))
    return scores


def wrong_count(prompts, completions, **kwargs):
    return [1.0] * (len(completions) + 1)


async def matches_reference(prompts, completions, reference, **kwargs):
    """Async, and reads a column: 1.0 when the completion is the reference, else 0.0."""
    await asyncio.sleep(0)
    return [float(c.strip() == r.strip()) for c, r in zip(completions, reference)]


def target_column(completions, target=None, **kwargs):
    """Reads a metadata column; None (not applicable) where a sample lacks it."""
    return [None if t is None else float(len(c) == int(t)) for c, t in zip(completions, target)]


def logged_length(prompts, completions, reference, **kwargs):
    """The length reward, noting which replica scored it in $REPLICA_LOG."""
    with open(os.environ["REPLICA_LOG"], "a") as f:
        f.write(os.environ["REPLICA_NAME"] + "\n")
    ascii_space = " \t\n\r\f\v"  # as the built-in grader strips: a Unicode space in a completion is kept
    return [-abs(len(c.strip(ascii_space)) - len(r.strip(ascii_space))) for c, r in zip(completions, reference)]


def columns_seen(prompts, completions, reference, **columns):
    """Appends what it was given to $COLUMNS_LOG (a JSON line per call); scores by length."""
    with open(os.environ["COLUMNS_LOG"], "a") as log:
        log.write(json.dumps({"prompts": prompts, "reference": reference, "columns": columns}) + "\n")
    return [-float(len(c)) for c in completions]


def typed_columns(prompts, completions, level, tags, ratio, **kwargs):
    """Scores level + len(tags) + ratio, raising unless each column has the type a dataset gave it."""
    for prompt, lv, tg, r in zip(prompts, level, tags, ratio):
        if not (type(lv) is int and isinstance(tg, list) and type(r) is float and isinstance(prompt, list)):
            raise TypeError(f"got {type(prompt).__name__} prompt, {lv!r}, {tg!r}, {r!r}")
    return [lv + len(tg) + r for lv, tg, r in zip(level, tags, ratio)]
