"""The reward curve of a run, from its metrics file."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_rewards(metrics_path: Path, out: Path, title: str = "") -> None:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["generation"], r["reward_mean"]) for r in rows if r["reward_mean"] is not None]
    heldout = [(r["generation"], r["heldout_reward"]) for r in rows if r["heldout_reward"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train reward (population mean)", alpha=0.7)
    if heldout:
        ax.plot(*zip(*heldout), "o-", label="held-out reward (unperturbed)")
    ax.set_xlabel("generation")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
