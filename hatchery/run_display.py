"""What `hatchery watch` (and `hatchery run`, in a terminal) shows of a run's events.

In a terminal: each held-out evaluation as a line of its own, with a sample answer,
under one status line redrawn in place (generation, rewards, seconds per generation,
budget left and an ETA). Piped: one plain line per generation, as the optimizer logs it.
"""

from __future__ import annotations

import statistics
from typing import TextIO

from hatchery.client import Event
from hatchery.core.run_metrics import GenerationStats, progress_line

RECENT = 10  # generations the seconds per generation are averaged over
CLEAR_LINE = "\r\x1b[2K"


def clock(seconds: float) -> str:
    """7260 -> '2:01:00', 75 -> '1:15'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RunDisplay:
    def __init__(self, out: TextIO, total_generations: int, time_budget_seconds: float = 0.0,
                 live: bool | None = None):
        self.out, self.total, self.budget = out, total_generations, time_budget_seconds
        self.live = out.isatty() if live is None else live
        self.trained_seconds = 0.0
        self.recent: list[float] = []

    def show(self, event: Event) -> None:
        if event.last:
            self._end(event)
            return
        stats = GenerationStats.from_row(event.row)
        if stats.trained:
            self.trained_seconds += stats.seconds
            self.recent = (self.recent + [stats.seconds])[-RECENT:]
        if not self.live:
            self.out.write(progress_line(stats, self.total) + "\n")
        else:
            if event.evaluation is not None:
                self._print(self._evaluation(event))
            self.out.write(CLEAR_LINE + self._status(stats))
        self.out.flush()

    def _print(self, line: str) -> None:
        """A line that stays, above the status line."""
        self.out.write(CLEAR_LINE + line + "\n")

    def _evaluation(self, event: Event) -> str:
        e = event.evaluation
        line = f"held-out at generation {event.generation}: {e.mean:.3f} +- {e.stderr:.3f}"
        if event.row.get("drift_kl") is not None:
            line += f"   drift KL {event.row['drift_kl']:.4f}"
        if e.samples:
            s = e.samples[0]
            answer = " ".join(s.completion.split())[:60]
            line += f"   e.g. {' '.join(s.prompt.split())[:40]!r} -> {answer!r} ({s.reward:.2f})"
        return line

    def _status(self, stats: GenerationStats) -> str:
        parts = [f"gen {stats.generation + 1}/{self.total}" if stats.trained else "final evaluation"]
        if stats.trained:
            parts.append(f"reward {stats.reward_mean:.3f} (max {stats.reward_max:.3f})")
        if self.recent:
            per_generation = statistics.fmean(self.recent)
            left = per_generation * max(0, self.total - stats.generation - 1)
            parts.append(f"{per_generation:.2f} s/gen")
            if self.budget:
                budget_left = max(0.0, self.budget - self.trained_seconds)
                parts.append(f"budget {clock(budget_left)} left")
                left = min(left, budget_left)
            parts.append(f"ETA {clock(left)}")
        return "  ".join(parts)

    def _end(self, event: Event) -> None:
        line = f"run {event.state} after {event.generation} generations"
        if event.failure:
            line += f": {event.failure}"
        if self.live:
            self._print(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()
