"""A worker's factors for the next generation, built ahead beside this one's forward passes."""

import torch

import tiny
from hatchery.es import NoiseKey, PopulationNoise, find_targets
from inference_svc.factors import Factors


def _same(a: PopulationNoise, b: PopulationNoise) -> bool:
    return all(torch.equal(a.a_t[n], b.a_t[n]) and torch.equal(a.b_t[n], b.b_t[n]) for n in a.a_t)


def test_factors_built_ahead_are_the_ones_a_lease_would_build_and_nothing_else_is_used():
    targets = find_targets(tiny.model("llama", len(tiny.tokenizer())))
    factors = Factors(targets)
    g0, g1, g2 = (NoiseKey(7, epoch, 2) for epoch in range(3))
    first = factors.get(g0, [0, 1])
    assert factors.built_in_line == 1 and factors.get(g0, [0, 1]) is first  # kept while the key holds
    factors.build_ahead(g1, [0, 1])
    ahead = factors.get(g1, [0, 1])
    assert factors.built_in_line == 1, "the next generation's factors came from the build ahead"
    assert _same(ahead, PopulationNoise(targets, g1, [0, 1]))  # bit for bit what a build in line makes
    factors.build_ahead(g2, [0, 1])
    other = factors.get(g2, [1])  # another worker took pair 0: the build ahead is not these
    assert factors.built_in_line == 2 and _same(other, PopulationNoise(targets, g2, [1]))
    g3 = NoiseKey(7, 3, 2)
    factors.build_ahead(g3, [1])
    factors.drop_ahead()  # a resume: the schedule may have changed
    last = factors.get(g3, [1])
    assert factors.built_in_line == 3
    factors.build_ahead(g3, [1])  # noise reused across generations: these are the current ones
    assert factors.get(g3, [1]) is last and factors.built_in_line == 3
