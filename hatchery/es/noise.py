"""Counter-based noise: the same key gives the same numbers in every process.

A member's perturbation is never sent anywhere. Each (run seed, noise epoch,
antithetic pair, parameter name) names a 64-bit seed via BLAKE2b, and the
numbers are drawn from a fresh CPU `torch.Generator` (Mersenne Twister) with
that seed, so CPU and GPU workers agree bit for bit; they move the result to
their device afterwards.
"""

from __future__ import annotations

import hashlib
import math

import torch


def noise_seed(seed: int, epoch: int, pair: int, name: str) -> int:
    """64-bit seed for one (run seed, noise epoch, pair, parameter) counter."""
    key = f"{seed}:{epoch}:{pair}:{name}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def sampling_seed(seed: int, generation: int) -> int:
    """Seed of one generation's shared sampling noise (a key no parameter name can take)."""
    return noise_seed(seed, generation, 0, "<sampling>")


def low_rank_factors(seed: int, epoch: int, pair: int, name: str,
                     out_features: int, in_features: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (out x r) and B (in x r), standard normal, for one pair and matrix."""
    gen = torch.Generator(device="cpu").manual_seed(noise_seed(seed, epoch, pair, name))
    flat = torch.randn((out_features + in_features) * rank, generator=gen, dtype=torch.float32)
    a = flat[: out_features * rank].view(out_features, rank)
    b = flat[out_features * rank:].view(in_features, rank)
    return a, b


def dense_noise(seed: int, epoch: int, pair: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Full-rank standard normal noise (the OpenES baseline) from the same key scheme."""
    gen = torch.Generator(device="cpu").manual_seed(noise_seed(seed, epoch, pair, name))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def pair_sign(member: int) -> float:
    """Members 2k and 2k+1 share pair k's noise with opposite signs."""
    return 1.0 if member % 2 == 0 else -1.0


def rank_scale(rank: int) -> float:
    """E = A B^T / sqrt(r) keeps entries of unit variance for any rank."""
    return 1.0 / math.sqrt(rank)
