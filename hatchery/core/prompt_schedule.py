"""Which training prompts each generation answers.

With greedy decoding a prompt carries signal only when the population disagrees on
it: the model sits near its decision boundary there, and every member scoring the
same gives that prompt no weight in the update. "spread" selection draws prompts that
separated the population when last answered, or were never answered, SPREAD_PREFERENCE
times as often as prompts on which every member scored the same; those are drawn
again now and then, since the boundary moves as the weights do. "uniform" is a plain
seeded sample. Both depend only on the seed, the generation and what was observed,
so a resumed run picks the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SELECTIONS = ("uniform", "spread")
SPREAD_PREFERENCE = 4.0


class PromptSchedule:
    def __init__(self, n_prompts: int, per_generation: int, seed: int, selection: str):
        if selection not in SELECTIONS:
            raise ValueError(f"prompt selection must be one of {SELECTIONS}, got {selection!r}")
        self.n_prompts, self.per_generation = n_prompts, min(per_generation, n_prompts)
        self.seed, self.selection = seed, selection
        self.had_spread: dict[int, bool] = {}  # prompt index -> did the population disagree when last answered

    def pick(self, generation: int) -> list[int]:
        """Indices into the training prompts for `generation`."""
        rng = random.Random(f"{self.seed}:{generation}")
        if self.selection == "uniform":
            return rng.sample(range(self.n_prompts), self.per_generation)
        # Weighted sampling without replacement (Efraimidis and Spirakis): largest u ** (1 / weight) wins.
        weights = [SPREAD_PREFERENCE if self.had_spread.get(i, True) else 1.0 for i in range(self.n_prompts)]
        keys = [rng.random() ** (1.0 / w) for w in weights]
        return sorted(range(self.n_prompts), key=keys.__getitem__, reverse=True)[:self.per_generation]

    def observe(self, prompts: Sequence[int], spread: Sequence[int]) -> None:
        """Records which of a generation's prompts separated the population."""
        for i in prompts:
            self.had_spread[i] = i in spread
