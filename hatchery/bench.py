"""`hatchery bench`: what per-row perturbation costs, measured side by side.

For each model and rank, one population of members (one prompt each) is
generated three ways:
- unperturbed: one batched generate() of all rows with the plain weights;
- eggroll: the same batch, each row perturbed as its own member;
- naive: each member's W + sigma E_i materialised in place, its row generated
  alone, weights restored (Qiu et al. / OpenES evaluation).
Every row generates exactly `new_tokens` tokens, so times compare like with like.
Unperturbed and eggroll run back to back in alternating order, and their ratio
is the median of the per-repeat ratios: on a shared machine the load drifts
between repeats far more than within one pair.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from hatchery.es import NoiseKey, PopulationNoise, find_targets, materialised_member, perturbed
from hatchery.model import EMBEDDED, LoadedModel, load_model, resolve_model
from hatchery.tasks import arith

SIGMA = 3e-3
BENCH_MODELS = ("tiny", "smollm2")


def tiny_model(tokenizer) -> LoadedModel:
    """A randomly initialised 4-layer Llama with SmolLM2's tokenizer: throughput needs no trained weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LoadedModel(AutoModelForCausalLM.from_config(config).eval().requires_grad_(False), tokenizer)


def _generate(lm: LoadedModel, enc: dict, new_tokens: int) -> None:
    lm.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=lm.tokenizer.pad_token_id)


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.inference_mode()
def bench_model(lm: LoadedModel, population: int, rank: int, new_tokens: int, repeats: int,
                naive_repeats: int) -> dict:
    tok = lm.tokenizer
    prompts = [p.text for p in (arith(0, 64).train * 4)[:population]]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    rows = [tok([t], return_tensors="pt", add_special_tokens=False) for t in texts]
    targets = find_targets(lm.model)
    key = NoiseKey(seed=0, epoch=0, rank=rank)
    noise = PopulationNoise(targets, key, range(population // 2))
    members = list(range(population))

    def unperturbed():
        _generate(lm, batch, new_tokens)

    def eggroll():
        with perturbed(targets, noise, members, SIGMA):
            _generate(lm, batch, new_tokens)

    def naive():
        for m in members:
            with materialised_member(targets, key.seed, key.epoch, m, SIGMA, rank):
                _generate(lm, rows[m], new_tokens)

    unperturbed()  # warm-up
    times: dict[str, list[float]] = {"unperturbed": [], "eggroll": [], "naive": []}
    ratios = []
    for r in range(repeats):  # back to back, order alternating: load drift on a shared machine cancels out
        first, second = ("unperturbed", "eggroll") if r % 2 == 0 else ("eggroll", "unperturbed")
        for name in (first, second):
            times[name].append(_timed(unperturbed if name == "unperturbed" else eggroll))
        ratios.append(times["unperturbed"][-1] / times["eggroll"][-1])
    times["naive"] = [_timed(naive) for _ in range(naive_repeats)]
    med = {name: statistics.median(t) for name, t in times.items()}
    tokens = population * new_tokens
    return {
        "rank": rank, "population": population, "new_tokens_per_row": new_tokens,
        "seconds_median": med, "seconds_all": times,
        "tokens_per_second": {name: tokens / t for name, t in med.items()},
        "eggroll_over_unperturbed_throughput": statistics.median(ratios),
        "naive_over_unperturbed_throughput": med["unperturbed"] / med["naive"],
        "eggroll_speedup_over_naive": med["naive"] / med["eggroll"],
    }


def run_bench(models: list[str], population: int, ranks: list[int], new_tokens: int, repeats: int,
              naive_repeats: int) -> dict:
    unknown = set(models) - set(BENCH_MODELS)
    if unknown:
        raise ValueError(f"unknown bench model(s) {sorted(unknown)}; choose from {list(BENCH_MODELS)}")
    smollm2 = load_model(resolve_model(EMBEDDED))
    loaded = {"smollm2": smollm2, "tiny": tiny_model(smollm2.tokenizer)}
    results = {name: [bench_model(loaded[name], population, r, new_tokens, repeats, naive_repeats) for r in ranks]
               for name in models}
    return {"machine": {"cpu_threads": torch.get_num_threads(), "processor": platform.processor(),
                        "torch": torch.__version__, "dtype": "float32"},
            "date": time.strftime("%Y-%m-%d"), "results": results}
