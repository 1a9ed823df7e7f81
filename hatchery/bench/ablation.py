"""`hatchery ablation`: runs of several variants, side by side, from their metrics.

Each variant is a list of runs (one per seed): Hatchery run dirs, or the JSON lines of
`hatchery bench-grpo`, so a GRPO baseline sits in the same table and plot. Per run: its
seed, the held-out curve against training time (evaluations off the clock), the last
held-out reward with its standard error, and where the run measured it the drift from the
start model beside it (KL per probe token and the probe's log-likelihood, hatchery.core.drift);
for ES runs also generations, seconds per generation and how many generations carried
signal (some prompt's rewards differed across members). Per variant: the means of the
last held-out reward and the last drift over its seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from hatchery.core.plot import plot_heldout_against_time
from hatchery.core.run_metrics import drift_curve, heldout_curve, metrics_rows, training_rows


def run_summary(run: Path) -> dict:
    return grpo_summary(run) if run.is_file() else es_summary(run)


def grpo_summary(path: Path) -> dict:
    rows = metrics_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no held-out evaluation")
    curve = [(r["seconds"], r["heldout_reward"], r["stderr"]) for r in rows]
    drift = [(r["seconds"], r["drift_kl"], r["probe_loglik"]) for r in rows if r.get("drift_kl") is not None]
    return {"run_dir": str(path), "seed": rows[0].get("seed"), "steps": rows[-1]["step"],
            "training_seconds": curve[-1][0], "heldout_start": curve[0][1], "heldout_end": curve[-1][1],
            "heldout_end_stderr": curve[-1][2], "curve": [list(p) for p in curve], **_drift_summary(drift)}


def es_summary(run_dir: Path) -> dict:
    rows = metrics_rows(run_dir)
    train, curve = training_rows(rows), heldout_curve(rows)
    if not train or not curve:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no finished training generation or no held-out "
                         "evaluation")
    seconds = sum(r["seconds"] for r in train)
    seed = yaml.safe_load((run_dir / "config.yaml").read_text())["es"]["seed"]
    return {"run_dir": str(run_dir), "seed": seed, "generations": len(train), "training_seconds": seconds,
            "seconds_per_generation": seconds / len(train),
            "generations_with_signal": sum(r["prompts_with_spread"] > 0 for r in train),
            "prompts_with_spread": statistics.fmean(r["prompts_with_spread"] for r in train),
            "heldout_start": curve[0][1], "heldout_end": curve[-1][1], "heldout_end_stderr": curve[-1][2],
            "curve": [list(p) for p in curve], **_drift_summary(drift_curve(rows))}


def _drift_summary(curve: list[tuple[float, float, float]]) -> dict:
    """The last drift and the probe's log-likelihood at the start and the end; {} for a run
    that did not measure drift."""
    if not curve:
        return {}
    return {"drift_kl_end": curve[-1][1], "probe_loglik_start": curve[0][2], "probe_loglik_end": curve[-1][2],
            "drift_curve": [list(p) for p in curve]}


def parse_variants(specs: list[str]) -> dict[str, list[Path]]:
    """NAME=RUN[,RUN...] arguments, in order; a RUN is a run dir or a bench-grpo file."""
    variants = {}
    for spec in specs:
        name, sep, dirs = spec.partition("=")
        if not sep or not name or not dirs:
            raise ValueError(f"{spec!r} is not NAME=RUN[,RUN...]")
        variants[name] = [Path(d) for d in dirs.split(",")]
    return variants


def ablation(variants: dict[str, list[Path]]) -> dict:
    report = {}
    for name, run_dirs in variants.items():
        runs = [run_summary(d) for d in run_dirs]
        report[name] = {"heldout_end_mean": statistics.fmean(r["heldout_end"] for r in runs), "runs": runs}
        if all("drift_kl_end" in r for r in runs):
            report[name]["drift_kl_end_mean"] = statistics.fmean(r["drift_kl_end"] for r in runs)
    return report


def plot_ablation(report: dict, out: Path, title: str = "") -> None:
    runs = {f"{name}, seed {r['seed']}": r for name, variant in report.items() for r in variant["runs"]}
    plot_heldout_against_time({label: [tuple(p) for p in r["curve"]] for label, r in runs.items()}, out, title,
                              drift={label: [tuple(p[:2]) for p in r.get("drift_curve", [])]
                                     for label, r in runs.items()})
