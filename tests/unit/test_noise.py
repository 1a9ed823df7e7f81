"""Counter-based noise: the same key gives the same numbers in any process."""

import subprocess
import sys

import torch

from hatchery.es import low_rank_factors, noise_seed

SNIPPET = ("from hatchery.es import low_rank_factors; import hashlib;"
           "a, b = low_rank_factors(7, 3, 5, 'model.layers.0.mlp.up_proj.weight', 64, 32, 4);"
           "print(hashlib.sha256(a.numpy().tobytes() + b.numpy().tobytes()).hexdigest())")


def test_noise_regenerated_in_another_process_is_identical():
    import hashlib

    a, b = low_rank_factors(7, 3, 5, "model.layers.0.mlp.up_proj.weight", 64, 32, 4)
    here = hashlib.sha256(a.numpy().tobytes() + b.numpy().tobytes()).hexdigest()
    there = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there


def test_each_key_part_changes_the_noise():
    base = low_rank_factors(1, 2, 3, "w", 8, 4, 2)[0]
    for args in [(2, 2, 3, "w"), (1, 3, 3, "w"), (1, 2, 4, "w"), (1, 2, 3, "v")]:
        assert not torch.equal(base, low_rank_factors(*args, 8, 4, 2)[0])
    assert torch.equal(base, low_rank_factors(1, 2, 3, "w", 8, 4, 2)[0])


def test_noise_is_standard_normal_and_seeds_are_63_bit():
    a, b = low_rank_factors(0, 0, 0, "w", 300, 200, 8)
    assert a.shape == (300, 8) and b.shape == (200, 8)
    flat = torch.cat([a.flatten(), b.flatten()])
    assert abs(flat.mean()) < 0.05 and abs(flat.std() - 1) < 0.05
    assert 0 <= noise_seed(2**40, 10**9, 10**6, "x" * 1000) < 2**63
