"""What PauseRun and StopRun asked for, kept in the run dir (control.json) so that an
optimizer restarted mid-run (a rescheduled pod) still honours it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hatchery.core.run_files import replace_text

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
        replace_text(run_dir / CONTROL_FILE, json.dumps(asdict(self)) + "\n")
