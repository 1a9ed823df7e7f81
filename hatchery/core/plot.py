"""Reward curves: a run's from its metrics file, and held-out reward of runs against time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hatchery.core.run_metrics import metrics_rows, training_rows  # noqa: E402


def _save_reward_axes(fig, ax, out: Path, xlabel: str, ylabel: str, title: str) -> None:
    """The labels, 0-1 reward range, grid and legend both reward plots share; writes and closes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _label_drift_axes(ax, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("KL(current || start) per token")
    ax.set_title("drift from the start model, on general text")
    ax.grid(alpha=0.3)


def plot_rewards(metrics_path: Path, out: Path, title: str = "") -> None:
    """Training and held-out reward (with standard errors) by generation and, where the run
    measured it, the drift from the start model beside it."""
    rows = metrics_rows(metrics_path)
    train = [(r["generation"], r["reward_mean"]) for r in training_rows(rows)]
    heldout = [(r["generation"], r["heldout_reward"], r.get("heldout_stderr") or 0.0)
               for r in rows if r["heldout_reward"] is not None]
    drift = [(r["generation"], r["drift_kl"]) for r in rows if r.get("drift_kl") is not None]
    fig, axes = plt.subplots(1, 2 if drift else 1, figsize=(11 if drift else 7, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="train reward (population mean)", alpha=0.7)
    if heldout:
        xs, ys, errors = zip(*heldout)
        ax.errorbar(xs, ys, yerr=errors, fmt="o-", capsize=2, markersize=3, label="held-out reward (unperturbed)")
    if drift:
        axes[0][1].plot(*zip(*drift), "o-", color="tab:red", markersize=3)
        _label_drift_axes(axes[0][1], "generation")
    _save_reward_axes(fig, ax, out, "generation", "reward", title)


def plot_heldout_against_time(curves: dict[str, list[tuple]], out: Path, title: str = "",
                              drift: dict[str, list[tuple]] | None = None) -> None:
    """One line per run; a third value in a point, when given, is a standard error bar. With
    `drift` ((seconds, KL) per run, by the same labels), a panel of it beside, in the same colours,
    on a log scale: runs that compare can differ by orders of magnitude (the start's 0 left out)."""
    shown = {label: [p for p in points if p[1] > 0] for label, points in (drift or {}).items()}
    shown = {label: points for label, points in shown.items() if points}
    fig, axes = plt.subplots(1, 2 if shown else 1, figsize=(12 if shown else 7, 4), squeeze=False)
    ax = axes[0][0]
    for i, (label, points) in enumerate(curves.items()):
        xs = [p[0] / 60 for p in points]
        ys = [p[1] for p in points]
        errors = [p[2] for p in points] if points and len(points[0]) > 2 else None
        ax.errorbar(xs, ys, yerr=errors, fmt="o-", capsize=2, markersize=3, label=label, color=f"C{i}")
        if label in shown:
            axes[0][1].plot([p[0] / 60 for p in shown[label]], [p[1] for p in shown[label]], "o-", markersize=3,
                            color=f"C{i}")
    if shown:
        _label_drift_axes(axes[0][1], "training wall time (minutes)")
        axes[0][1].set_yscale("log")
    _save_reward_axes(fig, ax, out, "training wall time (minutes)", "held-out reward", title)
