"""What PauseRun and StopRun asked for, kept in the run dir (control.json) so that an
optimizer restarted mid-run (a rescheduled pod) still honours it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hatchery.core.run_files import writing

CONTROL_FILE = "control.json"


@dataclass
class RunControl:
    paused: bool = False
    stop_requested: bool = False

    @classmethod
    def load(cls, run_dir: Path) -> RunControl:
        path = run_dir / CONTROL_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, run_dir: Path) -> None:
        """Written whole or not at all: a crash leaves the previous request in force."""
        path, tmp = run_dir / CONTROL_FILE, run_dir / f".{CONTROL_FILE}.tmp"
        with writing(path):
            tmp.write_text(json.dumps(asdict(self)) + "\n")
            os.replace(tmp, path)
