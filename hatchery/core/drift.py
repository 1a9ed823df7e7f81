"""How far a run has moved the model away from what it knew: drift on text that is not the task.

A probe set of general text is fixed when a run starts: eight short passages that ship
with Hatchery (PASSAGES), or a file of the user's. The start model's next-token
distributions over it are stored in the run dir once. At every held-out evaluation the
current model is measured against them: the mean KL divergence KL(current || start) per
probe token, and the probe's mean log-likelihood per token under the current model. Both
are exact (whole vocabularies).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hatchery.core.model import LoadedModel
from hatchery.core.run_files import writing

PROBE_FILE = "drift-probe.json"
REFERENCE_FILE = "drift-reference.safetensors"
MAX_PROBE_TOKENS = 256  # of each passage
# General text, far from any task's prompts: what a model should still predict as well after a run.
PASSAGES = (
    "The printing press, developed in Europe in the fifteenth century, made books cheaper and faster to "
    "produce. Within a few decades printed pamphlets, bibles and grammars travelled across the continent.",
    "To bake a simple loaf of bread, mix flour, water, salt and yeast into a dough, knead it until it is "
    "smooth, let it rise for an hour, shape it, and bake it in a hot oven until the crust is brown.",
    "The seasons are caused by the tilt of the Earth's axis. When the northern hemisphere leans toward the "
    "Sun, its days are longer and its sunlight more direct, and it has summer.",
    "In a small village by the sea, an old fisherman mended his nets every morning. The children would sit "
    "on the harbour wall and listen to his stories about storms and distant islands.",
    "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar. "
    "Oxygen is released as a by-product, which is why forests matter for the air we breathe.",
    "In chess, a pawn moves forward one square, or two squares on its first move, and captures diagonally. "
    "A pawn that reaches the far side of the board is promoted, usually to a queen.",
    "A good way to learn a new language is to practise a little every day: read short texts, listen to "
    "native speakers, and try to speak, even when you make mistakes.",
    "The city council met on Tuesday to discuss the new budget. Members argued about road repairs, the "
    "library's opening hours and whether to build another bus line to the hospital.",
)


@dataclass(frozen=True)
class Probe:
    """Token sequences; in each, the tokens from `scored_from` on are the ones measured."""

    sequences: list[list[int]]
    scored_from: list[int]

    def to_json(self) -> str:
        return json.dumps({"sequences": self.sequences, "scored_from": self.scored_from})

    @classmethod
    def from_json(cls, text: str) -> Probe:
        data = json.loads(text)
        return cls(data["sequences"], data["scored_from"])


@dataclass(frozen=True)
class Drift:
    kl: float  # mean KL(current || start) per probe token, in nats
    loglik: float  # mean log-likelihood per probe token under the current model, in nats


def text_probe(lm: LoadedModel, texts: list[str]) -> Probe:
    """Passages, every token after the first scored (at most MAX_PROBE_TOKENS each)."""
    sequences = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_PROBE_TOKENS] for t in texts]
    kept = [s for s in sequences if len(s) >= 2]
    if not kept:
        raise ValueError("the drift probe has no text of two tokens or more")
    return Probe(kept, [1] * len(kept))


def read_probe_texts(path: Path) -> list[str]:
    """A .jsonl file of {"text": ...} rows, or plain text with one passage per line."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in lines]
    return lines


@torch.no_grad()
def _log_probs(lm: LoadedModel, probe: Probe) -> list[torch.Tensor]:
    """Per sequence: log-probabilities of the next token at each scored position (positions x vocab),
    from one forward over the probe, right-padded (padding after a token cannot change it)."""
    longest = max(len(s) for s in probe.sequences)
    ids = torch.zeros(len(probe.sequences), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(probe.sequences):
        ids[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), 1
    logits = lm.model(input_ids=ids.to(lm.model.device), attention_mask=mask.to(lm.model.device)).logits
    return [torch.log_softmax(logits[row, start - 1:len(seq) - 1].float(), dim=-1).cpu()
            for row, (seq, start) in enumerate(zip(probe.sequences, probe.scored_from))]


def reference(lm: LoadedModel, probe: Probe) -> list[torch.Tensor]:
    """The start model's distributions over the probe, kept in float16 (a quarter of the size)."""
    return [lp.half() for lp in _log_probs(lm, probe)]


def measure(lm: LoadedModel, probe: Probe, start: list[torch.Tensor]) -> Drift:
    kl_sum, loglik_sum, tokens = 0.0, 0.0, 0
    for lp, ref, seq, first in zip(_log_probs(lm, probe), start, probe.sequences, probe.scored_from):
        kl_sum += float((lp.exp() * (lp - ref.float())).sum())
        targets = torch.tensor(seq[first:]).unsqueeze(1)
        loglik_sum += float(lp.gather(1, targets).sum())
        tokens += len(targets)
    return Drift(max(0.0, kl_sum / tokens), loglik_sum / tokens)


class DriftMonitor:
    """A run's probe and the start model's distributions over it, from the run dir or made now."""

    def __init__(self, probe: Probe, start: list[torch.Tensor]):
        self.probe, self.start = probe, start

    @classmethod
    def open(cls, run_dir: Path, lm: LoadedModel, probe_file: str, at_start: bool) -> DriftMonitor | None:
        """The run's monitor; made (and written) when `at_start`, the model still the start model;
        None for a run resumed from before drift was measured."""
        probe_path, reference_path = run_dir / PROBE_FILE, run_dir / REFERENCE_FILE
        if probe_path.is_file() and reference_path.is_file():
            tensors = load_file(reference_path)
            return cls(Probe.from_json(probe_path.read_text()), [tensors[str(i)] for i in range(len(tensors))])
        if not at_start:
            return None
        monitor = cls.of_start(lm, read_probe_texts(Path(probe_file)) if probe_file else list(PASSAGES))
        with writing(reference_path):
            save_file({str(i): t.contiguous() for i, t in enumerate(monitor.start)}, str(reference_path))
        with writing(probe_path):
            probe_path.write_text(monitor.probe.to_json())
        return monitor

    @classmethod
    def of_start(cls, lm: LoadedModel, texts: list[str]) -> DriftMonitor:
        """A monitor of `texts` against `lm` as it is now, the start model; kept in memory only."""
        probe = text_probe(lm, texts)
        return cls(probe, reference(lm, probe))

    def measure(self, lm: LoadedModel) -> Drift:
        return measure(lm, self.probe, self.start)
