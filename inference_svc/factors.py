"""A worker's perturbation factors: this generation's, and the next one's built ahead.

Noise comes from counter-based keys, so the next generation's factors are known before
its lease arrives: they are built on a background thread while this generation's forward
passes run, one generation ahead at most, and used only when the next lease asks for
exactly those (the same key and pairs); anything else (a resume, other members) is built
in line as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from hatchery.es import NoiseKey, PopulationNoise
from hatchery.es.targets import Target


class Factors:
    def __init__(self, targets: Sequence[Target]):
        self.targets = list(targets)
        self.current: PopulationNoise | None = None
        self.built_in_line = 0  # builds a lease waited for: the ones not made ahead
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="factors-ahead")
        self._ahead: tuple[NoiseKey, list[int], Future[PopulationNoise]] | None = None

    def get(self, key: NoiseKey, pairs: list[int]) -> PopulationNoise:
        """The factors of `pairs` under `key`: kept, taken from the build ahead, or built now."""
        if self.current is None or self.current.key != key or self.current.pairs != pairs:
            self.current = None  # free the old factors before holding new ones
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[:2] == (key, pairs):
                self.current = ahead[2].result()
            else:
                self.built_in_line += 1
                self.current = PopulationNoise(self.targets, key, pairs)
        return self.current

    def build_ahead(self, key: NoiseKey, pairs: list[int]) -> None:
        """Starts building the factors a later get() will likely ask for (replacing any other)."""
        if self.current is not None and (self.current.key, self.current.pairs) == (key, pairs):
            return  # noise reused across generations: these are the current ones
        if self._ahead is None or self._ahead[:2] != (key, pairs):
            self._ahead = (key, list(pairs), self._builder.submit(PopulationNoise, self.targets, key, pairs))

    def drop_ahead(self) -> None:
        self._ahead = None
