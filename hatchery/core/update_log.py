"""The update log: one durable JSON line per generation.

The weights at generation g are the base model plus the replay of records
0..g-1; each record is fsynced before its generation is announced as done.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hatchery.core.failpoints import failpoint
from hatchery.core.run_files import writing


@dataclass(frozen=True)
class UpdateRecord:
    """One generation's update: all a replica needs to apply it (hatchery.v1.UpdateRecord on the wire)."""

    generation: int
    noise_epoch: int  # the noise key's generation part: generation // noise_reuse
    lr: float
    sigma: float
    fitness: tuple[float, ...]  # the N shaped fitness values, one per member

    def to_json(self) -> str:
        """The line as protobuf's JSON mapping writes it (64-bit integers as strings), so logs
        written before and after this class read the same."""
        return json.dumps({"fitness": list(self.fitness), "generation": str(self.generation), "lr": self.lr,
                           "noise_epoch": str(self.noise_epoch), "sigma": self.sigma}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> UpdateRecord:
        row = json.loads(line)
        return cls(int(row.get("generation", 0)), int(row.get("noise_epoch", 0)), float(row.get("lr", 0.0)),
                   float(row.get("sigma", 0.0)), tuple(float(f) for f in row.get("fitness", ())))


class UpdateLog:
    """Appends records; reopening an existing log continues it.

    A last line cut short by a crash was never fsynced as a whole, so its
    generation was never announced: it is dropped and that generation reruns.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: list[UpdateRecord] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._recover()
        self._file = open(path, "a", encoding="utf-8")

    def _recover(self) -> None:
        lines = self.path.read_bytes().split(b"\n")
        complete, last = lines[:-1], lines[-1]  # `last` is b"" unless a write was cut short
        for number, raw in enumerate(complete, 1):
            record = UpdateRecord.from_json(raw.decode("utf-8"))
            if record.generation != len(self.records):
                raise ValueError(f"{self.path}:{number}: record for generation {record.generation}, "
                                 f"expected {len(self.records)}")
            self.records.append(record)
        if last:
            os.truncate(self.path, self.path.stat().st_size - len(last))

    def append(self, record: UpdateRecord) -> None:
        if record.generation != len(self.records):
            raise ValueError(f"record for generation {record.generation}, log holds {len(self.records)}")
        with writing(self.path):
            failpoint("log_append", record.generation)
            self._file.write(record.to_json() + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        self.records.append(record)

    def drop_last(self) -> None:
        """Removes the newest record (one that was never announced: see MetricsLog)."""
        lines = self.path.read_bytes().splitlines(keepends=True)
        os.truncate(self.path, self.path.stat().st_size - len(lines[-1]))
        self.records.pop()

    def since(self, generation: int) -> list[UpdateRecord]:
        return self.records[generation:]

    def close(self) -> None:
        self._file.close()


def read_log(path: Path) -> list[UpdateRecord]:
    return [UpdateRecord.from_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
