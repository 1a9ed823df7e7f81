"""A worker's replica of the weights and its evaluation of leases (no transport here)."""

from __future__ import annotations

import threading
import time

import torch

from hatchery.core.model import Completions, LoadedModel, RowGroups, fingerprint, generate
from hatchery.core.stop_rules import stop_rule
from hatchery.es import NoiseKey, PopulationNoise, find_targets
from hatchery.service.prompts import model_input
from hatchery.service.settings import make_updater
from hatchery.v1 import optimizer_pb2 as pb
from inference_svc.factors import Factors


class Evaluator:
    """Holds the weights of one generation, replays update records from seeds,
    and evaluates leases as per-row perturbed batches."""

    def __init__(self, lm: LoadedModel, es: pb.EsSettings):
        self.lm, self.es = lm, es
        self.targets = find_targets(lm.model, list(es.target_modules), list(es.exclude_modules))
        self.updater = make_updater(self.targets, es)
        self.applied_generation = 0
        self.noise_seconds = 0.0  # building (or waiting for) the last lease's factors; 0 when reused
        self.factors = Factors(self.targets)

    def apply(self, record: pb.UpdateRecord) -> None:
        if record.generation != self.applied_generation:
            raise ValueError(f"update for generation {record.generation} but weights are at {self.applied_generation}")
        self.updater.apply(record.noise_epoch, record.lr, list(record.fitness))
        self.applied_generation += 1

    def restore(self, generation: int, state: dict[str, torch.Tensor], steps: int) -> None:
        """Jumps to a checkpoint that covers `generation` update records."""
        self.updater.load_state_dict(state, steps)
        self.applied_generation = generation
        self.factors.drop_ahead()

    def fingerprint(self) -> str:
        return fingerprint(self.targets)

    def _key(self, generation: int) -> NoiseKey:
        return NoiseKey(self.es.seed, generation // self.es.noise_reuse, self.updater.rank)

    def _population_noise(self, generation: int, pairs: list[int]) -> PopulationNoise:
        """Noise for the lease's pairs; the next generation's (the same pairs) is built ahead."""
        started = time.perf_counter()
        noise = self.factors.get(self._key(generation), pairs)
        self.noise_seconds = time.perf_counter() - started
        self.factors.build_ahead(self._key(generation + 1), pairs)
        return noise

    def evaluate(self, lease: pb.Lease, interrupt: threading.Event | None = None) -> Completions:
        """Completions in lease order: member-major, then prompt (one row for each); raises
        GenerationInterrupted once `interrupt` is set."""
        if lease.generation != self.applied_generation:
            raise ValueError(f"lease for generation {lease.generation} but weights are at {self.applied_generation}")
        texts = [model_input(p) for p in lease.prompts]
        s = lease.sampling
        decoding = (s.max_new_tokens, s.temperature, s.chat_template)
        settled = stop_rule(s.stop_rule)
        self.noise_seconds = 0.0
        if lease.kind == pb.LEASE_KIND_EVAL:
            return generate(self.lm, texts, *decoding, settled=settled, interrupt=interrupt)
        members = range(lease.member_start, lease.member_end)
        noise = self._population_noise(lease.generation, sorted({m // 2 for m in members}))

        def as_members(rows_per_member: int):  # row b of a batch runs member b // rows_per_member
            return self.updater.perturbed(noise, [m for m in members for _ in range(rows_per_member)], lease.sigma)

        return generate(self.lm, texts * len(members), *decoding, settled=settled,
                        groups=RowGroups(len(texts), as_members),
                        sampling_seed=s.sampling_seed if s.HasField("sampling_seed") else None, interrupt=interrupt)
