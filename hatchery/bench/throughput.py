"""`hatchery bench`: what per-row perturbation costs, measured side by side.

Two measurements, each on one model in one process, every row generating exactly
`new_tokens` tokens so that times compare like with like:

- throughput: one batch of `batch` rows (members x prompts per member, laid out
  as a worker lays out a lease) generated unperturbed and as an EGGROLL
  population, back to back in alternating order; the ratio is the median of the
  per-pair ratios, since on a shared machine the load drifts between pairs far
  more than within one; the same for a population of LoRA adapters (es.space:
  lora) at each of `lora_ranks`;
- naive: a population evaluated as Qiu et al. and OpenES do it (each member's
  full-rank W + sigma E written into the weights in place, its prompts generated
  as one batch, the weights restored) against EGGROLL evaluating the same
  population in one batch, noise generation included on both sides:
  generations per second.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from hatchery.bench.openes import materialised_member
from hatchery.core.model import DTYPES, EMBEDDED, LoadedModel, load_model, load_tokenizer, resolve_model
from hatchery.core.tasks import arith
from hatchery.es import NoiseKey, PopulationNoise, find_targets, perturbed
from hatchery.es.lora import LoraUpdater

SIGMA = 3e-3
# Random weights in the shapes of Qwen2.5-0.5B and -1.5B (throughput needs no trained weights), for GPU runs.
QWEN_SHAPES = {
    "qwen2.5-0.5b-shape": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
    "qwen2.5-1.5b-shape": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
}
BENCH_MODELS = ("tiny", "smollm2", *QWEN_SHAPES)


def tiny_model(tokenizer, dtype: torch.dtype = torch.float32, hidden: int = 256) -> LoadedModel:
    """A randomly initialised 4-layer Llama with SmolLM2's tokenizer: throughput needs no trained weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return LoadedModel(model.eval().requires_grad_(False), tokenizer)


def qwen_shape(name: str, tokenizer, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Random weights in one of QWEN_SHAPES."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151_936, num_key_value_heads=2, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **QWEN_SHAPES[name])
    return LoadedModel(AutoModelForCausalLM.from_config(config, dtype=dtype).eval().requires_grad_(False), tokenizer)


def _load(name: str, dtype: str, device: str, tokenizer: str | None) -> LoadedModel:
    """The model on `device`. The random ones take `tokenizer` (a folder; default SmolLM2's,
    whose ids fit every vocabulary here), so a GPU machine needs no model package."""
    if name == "smollm2":
        lm = load_model(resolve_model(EMBEDDED), dtype)
    else:
        tok = load_tokenizer(tokenizer or resolve_model(EMBEDDED))
        lm = tiny_model(tok, DTYPES[dtype]) if name == "tiny" else qwen_shape(name, tok, DTYPES[dtype])
    lm.model.to(device)
    return lm


class _Workload:
    """`members` x `prompts` chat-formatted arithmetic rows, member-major as a worker
    lays out a lease: every member answers the same prompts."""

    def __init__(self, lm: LoadedModel, members: int, prompts: int, new_tokens: int):
        self.lm, self.members, self.new_tokens = lm, members, new_tokens
        tok = lm.tokenizer
        texts = [tok.apply_chat_template([{"role": "user", "content": p.text}], tokenize=False,
                                         add_generation_prompt=True) for p in arith(0, 64).train[:prompts]]
        device = lm.model.device
        self.batch = tok(texts * members, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        self.one_member = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        self.rows = [m for m in range(members) for _ in texts]
        self.targets = find_targets(lm.model)

    def generate(self, enc: dict) -> None:
        self.lm.model.generate(**enc, max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens,
                               do_sample=False, pad_token_id=self.lm.tokenizer.pad_token_id)

    def noise(self, rank: int) -> PopulationNoise:
        return PopulationNoise(self.targets, NoiseKey(seed=0, epoch=0, rank=rank), range(self.members // 2))

    def eggroll(self, noise: PopulationNoise, adapter: LoraUpdater | None = None) -> None:
        """The batch as a population: of perturbed weights, or of `adapter` perturbed."""
        population = adapter.perturbed if adapter else partial(perturbed, self.targets)
        with population(noise, self.rows, SIGMA):
            self.generate(self.batch)

    def naive(self) -> None:
        for member in range(self.members):
            with materialised_member(self.targets, 0, 0, member, SIGMA, rank=None):
                self.generate(self.one_member)


def cpu_description() -> str:
    """The CPU's model name and the vector extensions that decide float32 and bf16 speed
    (two CPUs of one machine kind here generate 1.8x apart)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('model name', platform.machine())} ({', '.join(extensions) or 'no AVX2'})"


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # kernels are asynchronous: wait for them to finish
    return time.perf_counter() - start


def _alternating(first: Callable[[], object], second: Callable[[], object], repeats: int) -> list[tuple[float, float]]:
    """(first, second) seconds per repeat, the order swapped every other repeat."""
    pairs = []
    for r in range(repeats):
        if r % 2 == 0:
            a = _timed(first)
            b = _timed(second)
        else:
            b = _timed(second)
            a = _timed(first)
        pairs.append((a, b))
    return pairs


@torch.inference_mode()
def throughput_row(lm: LoadedModel, batch: int, prompts: int, rank: int, new_tokens: int, repeats: int,
                   space: str = "weights") -> dict:
    """`rank`: of each member's perturbation (weights space) or of the adapter (lora space, a
    fresh one: its cost does not depend on its values)."""
    work = _Workload(lm, batch // prompts, prompts, new_tokens)
    adapter = LoraUpdater(work.targets, 0, rank, 2.0 * rank) if space == "lora" else None
    noise_seconds = _timed(lambda: work.noise(rank))
    noise = work.noise(rank)
    work.generate(work.batch)  # warm-up
    pairs = _alternating(lambda: work.generate(work.batch), lambda: work.eggroll(noise, adapter), repeats)
    plain, eggroll = [p for p, _ in pairs], [e for _, e in pairs]
    tokens = batch * new_tokens
    return {
        "space": space, "batch": batch, "prompts_per_member": prompts, "rank": rank, "new_tokens_per_row": new_tokens,
        "seconds": {"unperturbed": plain, "eggroll": eggroll},
        "tokens_per_second": {"unperturbed": tokens / statistics.median(plain),
                              "eggroll": tokens / statistics.median(eggroll)},
        "eggroll_over_unperturbed_throughput": statistics.median(p / e for p, e in pairs),
        "noise_seconds": noise_seconds,  # once per generation per worker, reused over prompts and decode steps
    }


@torch.inference_mode()
def naive_row(lm: LoadedModel, population: int, prompts: int, rank: int, new_tokens: int, repeats: int) -> dict:
    work = _Workload(lm, population, prompts, new_tokens)
    work.generate(work.batch)  # warm-up
    pairs = _alternating(work.naive, lambda: work.eggroll(work.noise(rank)), repeats)
    naive, eggroll = [n for n, _ in pairs], [e for _, e in pairs]
    return {
        "population": population, "prompts_per_member": prompts, "eggroll_rank": rank,
        "new_tokens_per_row": new_tokens,
        "seconds": {"naive": naive, "eggroll": eggroll},
        "generations_per_second": {"naive": 1 / statistics.median(naive), "eggroll": 1 / statistics.median(eggroll)},
        "eggroll_speedup_over_naive": statistics.median(n / e for n, e in pairs),
    }


def run_bench(models: Sequence[str], dtypes: Sequence[str], batches: Sequence[int], ranks: Sequence[int],
              naive_populations: Sequence[int], new_tokens: int, repeats: int, naive_repeats: int,
              prompts_per_member: Sequence[int] = (1,), device: str = "cpu", tokenizer: str | None = None,
              lora_ranks: Sequence[int] = ()) -> dict:
    """Every combination of model, dtype, prompts per member, batch and rank (and lora rank);
    batch = members x prompts."""
    for name in models:
        if name not in BENCH_MODELS:
            raise ValueError(f"unknown bench model {name!r}; choose from {list(BENCH_MODELS)}")
    for prompts in prompts_per_member:
        if any(b % prompts for b in batches):
            raise ValueError(f"every batch must be a multiple of prompts per member ({prompts}), got {list(batches)}")
        for n in (*(b // prompts for b in batches), *naive_populations):
            if n < 2 or n % 2:
                raise ValueError(f"populations must be even and >= 2 (antithetic pairs), got {n}")
    throughput, naive = [], []
    for name in models:
        for dtype in dtypes:
            lm = _load(name, dtype, device, tokenizer)
            case = {"model": name, "dtype": dtype}
            for prompts in prompts_per_member:
                throughput += [{**case, **throughput_row(lm, b, prompts, r, new_tokens, repeats, space)}
                               for space, space_ranks in (("weights", ranks), ("lora", lora_ranks))
                               for b in batches for r in space_ranks]
                naive += [{**case, **naive_row(lm, n, prompts, min(ranks), new_tokens, naive_repeats)}
                          for n in naive_populations]
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {"machine": {"cpu_threads": torch.get_num_threads(), "cpu": cpu_description(),
                        "machine": platform.machine(), "torch": torch.__version__, "device": device, "gpu": gpu},
            "date": time.strftime("%Y-%m-%d"), "sigma": SIGMA, "throughput": throughput, "naive": naive}


def plot_bench(report: dict, out_dir: Path) -> list[Path]:
    """bench-throughput.png (ratio against batch, one line per rank) and bench-naive.png."""
    from hatchery.core.plot import plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def case(row: dict) -> tuple:
        return row["model"], row["dtype"], row["prompts_per_member"]

    cases = sorted({case(r) for r in report["throughput"]})
    if cases:
        cols = min(4, len(cases))
        grid_rows = -(-len(cases) // cols)
        fig, axes = plt.subplots(grid_rows, cols, figsize=(4.5 * cols, 3.6 * grid_rows), squeeze=False)
        for ax in axes.flat[len(cases):]:
            ax.set_visible(False)
        for ax, (model, dtype, prompts) in zip(axes.flat, cases):
            rows = [r for r in report["throughput"] if case(r) == (model, dtype, prompts)]
            for space, rank in sorted({(r.get("space", "weights"), r["rank"]) for r in rows}, reverse=True):
                line = sorted((r["batch"], r["eggroll_over_unperturbed_throughput"]) for r in rows
                              if (r.get("space", "weights"), r["rank"]) == (space, rank))
                ax.plot(*zip(*line), "o-" if space == "weights" else "s--",
                        label=f"rank {rank}" if space == "weights" else f"LoRA rank {rank}")
            ax.axhline(0.95, color="grey", linestyle="--", linewidth=1)
            ax.set_xscale("log", base=2)
            ax.set_ylim(0.6, 1.15)
            ax.set_title(f"{model} {dtype}, {prompts} prompt(s) per member", fontsize=9)
            ax.set_xlabel("batch (rows)")
            ax.set_ylabel("perturbed / unperturbed throughput")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "bench-throughput.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if report["naive"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for model, dtype, prompts in sorted({case(r) for r in report["naive"]}):
            rows = sorted((r for r in report["naive"] if case(r) == (model, dtype, prompts)),
                          key=lambda r: r["population"])
            for kind, style in (("eggroll", "o-"), ("naive", "s--")):
                ax.plot([r["population"] for r in rows], [r["generations_per_second"][kind] for r in rows], style,
                        label=f"{kind} ({model} {dtype}, P={prompts})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("population")
        ax.set_ylabel("generations per second")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "bench-naive.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
