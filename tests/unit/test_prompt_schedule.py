"""Prompt selection: seeded, favours prompts that separated the population, and
rebuilds from a run's metrics on resume."""

import random
from collections import Counter

import pytest

from hatchery.core.prompt_schedule import SPREAD_PREFERENCE, PromptSchedule


def test_uniform_is_the_seeded_sample():
    schedule = PromptSchedule(50, 4, seed=3, selection="uniform")
    schedule.observe([0, 1, 2, 3], [0])  # observations do not matter to uniform selection
    assert schedule.pick(7) == random.Random("3:7").sample(range(50), 4)


def test_spread_selection_prefers_prompts_that_separated_the_population():
    schedule = PromptSchedule(40, 4, seed=0, selection="spread")
    schedule.observe(range(40), spread=range(10))  # 10 prompts separated the members, 30 did not
    drawn = Counter(i for g in range(2000) for i in schedule.pick(g))
    per_spread = sum(drawn[i] for i in range(10)) / 10
    per_flat = sum(drawn[i] for i in range(10, 40)) / 30
    assert 0.6 * SPREAD_PREFERENCE < per_spread / per_flat < 1.2 * SPREAD_PREFERENCE
    assert all(len(set(schedule.pick(g))) == 4 for g in range(50))  # without replacement
    assert schedule.pick(5) == schedule.pick(5)  # seeded


def test_never_answered_prompts_count_as_promising():
    schedule = PromptSchedule(20, 2, seed=1, selection="spread")
    schedule.observe(range(10), spread=[])  # the first half answered, no disagreement anywhere
    drawn = Counter(i for g in range(1000) for i in schedule.pick(g))
    assert sum(drawn[i] for i in range(10, 20)) > 2.5 * sum(drawn[i] for i in range(10))


def test_unknown_selection_is_refused():
    with pytest.raises(ValueError, match="prompt selection must be one of"):
        PromptSchedule(10, 2, seed=0, selection="hardest")
