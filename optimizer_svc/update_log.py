"""The update log: one durable JSON line per generation.

The weights at generation g are the base model plus the replay of records
0..g-1; each record is fsynced before its generation is announced as done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from google.protobuf import json_format

from hatchery.v1 import optimizer_pb2 as pb


def _parse(line: str) -> pb.UpdateRecord:
    return json_format.ParseDict(json.loads(line), pb.UpdateRecord())


class UpdateLog:
    """Appends records; reopening an existing log continues it.

    A last line cut short by a crash was never fsynced as a whole, so its
    generation was never announced: it is dropped and that generation reruns.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: list[pb.UpdateRecord] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._recover()
        self._file = open(path, "a", encoding="utf-8")

    def _recover(self) -> None:
        lines = self.path.read_bytes().split(b"\n")
        complete, last = lines[:-1], lines[-1]  # `last` is b"" unless a write was cut short
        for number, raw in enumerate(complete, 1):
            record = _parse(raw.decode("utf-8"))
            if record.generation != len(self.records):
                raise ValueError(f"{self.path}:{number}: record for generation {record.generation}, "
                                 f"expected {len(self.records)}")
            self.records.append(record)
        if last:
            os.truncate(self.path, self.path.stat().st_size - len(last))

    def append(self, record: pb.UpdateRecord) -> None:
        if record.generation != len(self.records):
            raise ValueError(f"record for generation {record.generation}, log holds {len(self.records)}")
        line = json.dumps(json_format.MessageToDict(record, preserving_proto_field_name=True,
                                                     always_print_fields_with_no_presence=True), sort_keys=True)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)

    def since(self, generation: int) -> list[pb.UpdateRecord]:
        return self.records[generation:]

    def close(self) -> None:
        self._file.close()


def read_log(path: Path) -> list[pb.UpdateRecord]:
    return [_parse(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
