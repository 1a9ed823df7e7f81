"""Writes train.jsonl and test.jsonl: small grade-school word problems with integer answers.

    python examples/word-problems/make_data.py [--train 320] [--test 64] [--seed 0]

Each row has the prompt, the answer, the number of arithmetic steps and the kind of
problem; the two files share no prompt. Only the standard library: the data is the
same on every machine for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemi", "Leo"]
ASK = " Answer with the number alone."


def problem(rng: random.Random) -> dict:
    """One problem of a random kind; every answer is a positive integer."""
    name = rng.choice(NAMES)
    kind = rng.choice(["shopping", "sharing", "saving", "baking", "travel"])
    if kind == "shopping":
        price, count = rng.randint(2, 5), rng.randint(2, 3)
        paid = price * count + rng.randint(1, 5)
        text = (f"{name} buys {count} notebooks at ${price} each and pays with ${paid}. "
                f"How many dollars of change does {name} get?")
        return {"prompt": text + ASK, "answer": paid - price * count, "steps": 2, "kind": kind}
    if kind == "sharing":
        friends, each, kept = rng.randint(2, 3), rng.randint(2, 4), rng.randint(1, 4)
        text = (f"{name} had {friends * each + kept} stickers, gave {each} to each of {friends} friends "
                "and kept the rest. How many stickers did they keep?")
        return {"prompt": text + ASK, "answer": kept, "steps": 2, "kind": kind}
    if kind == "saving":
        weekly, weeks, spent = rng.randint(2, 5), rng.randint(2, 3), rng.randint(1, 4)
        text = (f"{name} saves ${weekly} a week for {weeks} weeks, then spends ${spent} on a book. "
                "How many dollars are left?")
        return {"prompt": text + ASK, "answer": weekly * weeks - spent, "steps": 2, "kind": kind}
    if kind == "baking":
        trays, per_tray, eaten = rng.randint(2, 3), rng.randint(2, 5), rng.randint(1, 3)
        text = (f"{name} bakes {trays} trays of {per_tray} cookies and the family eats {eaten}. "
                "How many cookies are left?")
        return {"prompt": text + ASK, "answer": trays * per_tray - eaten, "steps": 2, "kind": kind}
    speed, hours = rng.randint(2, 9) * 10, rng.randint(2, 3)
    text = f"A bus drives at {speed} km per hour for {hours} hours. How many kilometres does it travel?"
    return {"prompt": text + ASK, "answer": speed * hours, "steps": 1, "kind": kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args()
    rng, seen, rows = random.Random(args.seed), set(), []
    while len(rows) < args.train + args.test:
        row = problem(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    out = Path(args.out)
    for name, part in (("train.jsonl", rows[:args.train]), ("test.jsonl", rows[args.train:])):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in part))


if __name__ == "__main__":
    main()
