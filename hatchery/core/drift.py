"""How far a run has moved the model away from what it knew: drift on text that is not the task.

A probe set of general text is fixed when a run starts: by default the start model's own
greedy continuations of a few generic openings (so the start model finds it likely), or a
file of the user's. The start model's next-token distributions over it are stored in the
run dir once. At every held-out evaluation the current model is measured against them:
the mean KL divergence KL(current || start) per probe token, and the probe's mean
log-likelihood per token under the current model. Both are exact (whole vocabularies).
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
CONTINUATION_TOKENS = 32
MAX_PROBE_TOKENS = 256  # of each sequence of a user's probe file
# Openings of general text, far from any task's prompts; the start model continues each.
OPENINGS = (
    "The history of the printing press begins",
    "To bake a simple loaf of bread, you need",
    "The main causes of the seasons on Earth are",
    "In a small village by the sea, an old fisherman",
    "Photosynthesis is the process by which plants",
    "The rules of chess say that a pawn",
    "A good way to learn a new language is to",
    "The city council met on Tuesday to discuss",
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


@torch.no_grad()
def continuation_probe(lm: LoadedModel, openings: tuple[str, ...] = OPENINGS,
                       new_tokens: int = CONTINUATION_TOKENS) -> Probe:
    """Each opening and the model's greedy continuation of it; the continuation is scored."""
    tok, model = lm.tokenizer, lm.model
    sequences, starts = [], []
    for text in openings:  # one at a time: no padding, nothing to mask
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=model.device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        sequences.append(out[0].tolist())
        starts.append(ids.shape[1])
    return Probe(sequences, starts)


def text_probe(lm: LoadedModel, texts: list[str]) -> Probe:
    """A user's texts, every token after the first scored (at most MAX_PROBE_TOKENS each)."""
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
    """Per sequence: log-probabilities of the next token at each scored position (positions x vocab)."""
    out = []
    for seq, start in zip(probe.sequences, probe.scored_from):
        ids = torch.tensor([seq], device=lm.model.device)
        logits = lm.model(input_ids=ids).logits[0, start - 1:-1].float()
        out.append(torch.log_softmax(logits, dim=-1).cpu())
    return out


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
        probe = text_probe(lm, read_probe_texts(Path(probe_file))) if probe_file else continuation_probe(lm)
        start = reference(lm, probe)
        with writing(reference_path):
            save_file({str(i): t.contiguous() for i, t in enumerate(start)}, str(reference_path))
        with writing(probe_path):
            probe_path.write_text(probe.to_json())
        return cls(probe, start)

    def measure(self, lm: LoadedModel) -> Drift:
        return measure(lm, self.probe, self.start)
