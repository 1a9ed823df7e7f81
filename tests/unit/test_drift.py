"""Drift from the start model on general text (hatchery.core.drift), on a tiny model."""

import json

import pytest
import torch

from hatchery.core.config import ConfigError, parse_config
from hatchery.core.drift import PASSAGES, DriftMonitor, measure, reference, text_probe
from hatchery.core.model import load_model


@pytest.fixture()
def lm(tiny_llama_dir):
    return load_model(tiny_llama_dir)


def _explicit(lm, probe, start):
    """KL(current || start) and log-likelihood per scored token, written out in float64."""
    kl, loglik, n = 0.0, 0.0, 0
    for seq, first, ref in zip(probe.sequences, probe.scored_from, start):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([seq])).logits[0].double()
        for pos in range(first, len(seq)):
            p = torch.log_softmax(logits[pos - 1], -1)
            q = ref[pos - first].double()
            kl += float((p.exp() * (p - q)).sum())
            loglik += float(p[seq[pos]])
            n += 1
    return kl / n, loglik / n


def test_the_start_model_has_no_drift_and_a_perturbed_one_drifts_as_the_formula_says(lm):
    probe = text_probe(lm, list(PASSAGES[:2]))
    assert probe.scored_from == [1, 1]  # every token after the first
    start = reference(lm, probe)
    at_start = measure(lm, probe, start)
    assert at_start.kl < 1e-3  # only the float16 rounding of the stored distributions
    assert at_start.loglik == pytest.approx(_explicit(lm, probe, start)[1], abs=1e-4)
    drifts = []
    for scale in (0.02, 0.2):
        moved = load_model(lm.model.name_or_path)
        with torch.no_grad():
            for p in moved.model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
        drifts.append(measure(moved, probe, start))
        kl, loglik = _explicit(moved, probe, start)
        assert drifts[-1].kl == pytest.approx(kl, rel=1e-3, abs=1e-5)
        assert drifts[-1].loglik == pytest.approx(loglik, rel=1e-4)
    assert at_start.kl < drifts[0].kl < drifts[1].kl


def test_the_probe_is_made_once_at_the_start_and_read_back_on_resume(lm, tmp_path):
    made = DriftMonitor.open(tmp_path, lm, "", at_start=True)
    again = DriftMonitor.open(tmp_path, lm, "", at_start=False)
    assert again.probe == made.probe
    assert all(torch.equal(a, b) for a, b in zip(again.start, made.start))
    assert DriftMonitor.open(tmp_path / "older-run", lm, "", at_start=False) is None  # not measured: off


def test_a_probe_file_of_your_own(lm, tmp_path):
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("General text about rivers.", "x")))
    (tmp_path / "run").mkdir()
    monitor = DriftMonitor.open(tmp_path / "run", lm, str(path), at_start=True)
    assert len(monitor.probe.sequences) >= 1 and monitor.probe.scored_from[0] == 1
    assert text_probe(lm, ["a b c d"]).sequences[0] == lm.tokenizer("a b c d", add_special_tokens=False)["input_ids"]
    with pytest.raises(ConfigError, match="train.drift_probe: cannot read"):
        parse_config({"train": {"drift_probe": str(tmp_path / "missing.jsonl")}})
