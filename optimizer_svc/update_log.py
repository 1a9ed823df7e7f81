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


class UpdateLog:
    def __init__(self, path: Path):
        self.path = path
        self.records: list[pb.UpdateRecord] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

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
    return [json_format.ParseDict(json.loads(line), pb.UpdateRecord())
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
