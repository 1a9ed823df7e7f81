"""The run configuration: one YAML file, validated before anything starts.

Unknown keys and bad values are refused with an error that names the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hatchery.core.drift import read_probe_texts
from hatchery.core.grader_specs import BUILTIN_NAMES, parse_specs
from hatchery.core.model import DTYPES, EMBEDDED, check_temperature, is_hub_snapshot, resolve_model
from hatchery.core.prompt_schedule import SELECTIONS
from hatchery.core.schema import ConfigError, check, from_dict
from hatchery.core.tasks import TASKS
from hatchery.es.lora import SPACES
from hatchery.es.shaping import FailedSamples, Shaping
from hatchery.es.update import LR_SCHEDULES, OPTIMIZERS, StepRule


@dataclass(frozen=True)
class ModelConfig:
    source: str = EMBEDDED  # "embedded:smollm2-135m-instruct", a local Hugging Face folder, or a hub id (org/name)
    revision: str = ""  # a hub id's branch, tag or commit; empty: main
    dtype: str = "float32"  # "float32" or "bfloat16"
    adapter: str = ""  # a local PEFT adapter folder: merged into the source, or in lora space trained on; empty: none


@dataclass(frozen=True)
class TaskConfig:
    name: str = "arith"
    seed: int = 0  # fixes the train/held-out split and generated problems
    heldout_size: int = 128  # arith has 200 problems: 72 left to train on
    max_new_tokens: int = 0  # 0: the task's own default
    chat_template: bool = True
    early_stop: bool = True  # end a row once the task's grader can read nothing more (arith: the first integer)
    # name "dataset": prompts from files (hatchery.core.prompt_data)
    train: Any = ""  # a .jsonl .json .parquet .csv .arrow file, a save_to_disk folder, a glob, or a list of these
    heldout: Any = ""  # the same; empty: heldout_size (or heldout_fraction) rows split off train with task.seed
    heldout_fraction: float = 0.0  # > 0: this share of train is held out instead of heldout_size rows
    prompt_key: str = "prompt"  # the column of prompts: text, or conversations (lists of {role, content})
    reference_key: str = ""  # the column of reference answers; empty: none
    metadata_keys: Any = "all"  # "all" (every other column) or a list: the columns handed to graders
    allow_heldout_in_train: bool = False  # a held-out prompt that is also a training prompt is refused otherwise
    system_prompt: str = ""  # any task: given as a system message before each plain-text prompt
    max_prompt_tokens: int = 0  # a dataset's prompts after the chat template; 0: model's context - max_new_tokens
    long_prompts: str = "refuse"  # or "skip": leave out the prompts longer than max_prompt_tokens


@dataclass(frozen=True)
class EsConfig(StepRule):
    """The `es` section: the step rule's settings (optimizer, adam_*, weight_decay, momentum,
    declared once, in hatchery.es.StepRule) and the rest of the method's."""

    seed: int = 0
    population: int = 16
    rank: int = 1  # weights space: rank r of each member's perturbation A B^T
    # "weights": members perturb the target matrices; "lora": the trainable state is a LoRA
    # adapter over them (hatchery.es.lora), which members perturb and the step moves
    space: str = "weights"
    lora_rank: int = 8  # lora space: the adapter's rank
    lora_alpha: float = 16.0  # lora space: the adapter adds (lora_alpha / lora_rank) B A
    sigma: float = 1.2e-2  # in lora space 0.05 unless given (LORA_SPACE_DEFAULTS)
    lr: float = 1.2e-2  # absorbs 1/sigma, as in the ES papers; in lora space 0.05 unless given
    lr_schedule: str = "constant"  # or "linear": decays to 0 at the end of the training budget
    noise_reuse: int = 1
    shaping: str = Shaping.CENTERED_ZSCORE.value
    failed_samples: str = FailedSamples.DROP_PAIR.value
    target_modules: list[str] = field(default_factory=lambda: [".*"])
    exclude_modules: list[str] = field(default_factory=lambda: ["lm_head"])


@dataclass(frozen=True)
class TrainConfig:
    generations: int = 200
    time_budget_seconds: float = 720.0  # no generation starts after this much training (evals excluded); 0: none
    prompts_per_member: int = 4
    prompt_selection: str = "spread"  # or "uniform"; spread favours prompts that separated the population
    temperature: float = 0.0  # training leases: 0 greedy, > 0 sampled with noise the members share; eval is greedy
    eval_every: int = 10  # held-out evaluation every this many generations (and at the end)
    members_per_lease: int = 0  # 0: the whole population in one lease
    lease_timeout_seconds: float = 600.0
    checkpoint_every: int = 10  # a checkpoint every this many generations; 0: none (resume replays the whole log)
    checkpoints_kept: int = 2
    # the optimizer hands out the next generation's leases once a record is durable and applies
    # its own update (and checkpoint) beside that generation; false: before it (the same bytes)
    overlap_update: bool = True
    drift: bool = True  # at each held-out evaluation, KL from the start model on general text (hatchery.core.drift)
    drift_probe: str = ""  # that text: a .jsonl of {"text"} rows or one passage per line; empty: built in


@dataclass(frozen=True)
class RewardServiceConfig:
    addresses: list[str]  # host:port of each replica of one reward service
    grader: str = ""  # empty: that service's default grader
    weight: float = 1.0
    token_env: str = ""  # environment variable on each worker holding the bearer token; empty: none


@dataclass(frozen=True)
class RewardConfig:
    graders: dict[str, Any] = field(default_factory=dict)  # extra graders of the local reward service, by name
    services: list[RewardServiceConfig] = field(default_factory=list)  # empty: the local reward service
    timeout_seconds: float = 60.0  # deadline of one Score call
    retries: int = 5  # of a call that found a service unavailable, with backoff, on the next replica
    batch_size: int = 256  # samples per Score call


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = ""  # a file store (file:/path/mlruns, or a path) or a server (http://mlflow:5000); empty: off
    experiment: str = "hatchery"


@dataclass(frozen=True)
class WandbConfig:
    project: str = ""  # empty: off
    entity: str = ""  # empty: your default entity
    mode: str = "offline"  # offline: files in RUN_DIR/wandb, uploaded later with `wandb sync`; or online


@dataclass(frozen=True)
class TrackingConfig:
    """Trackers the optimizer writes each generation to, besides metrics.jsonl; each is optional."""

    tensorboard: bool = False  # event files in RUN_DIR/tensorboard: `tensorboard --logdir RUN_DIR`
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # tracker -> module


@dataclass(frozen=True)
class RunConfig:
    run_dir: str = ""  # empty: runs/<date>-<time> under the current directory
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    es: EsConfig = field(default_factory=EsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grader: str = ""  # the local reward service's grader; empty: the task's
    reward: RewardConfig = field(default_factory=RewardConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validate_start_adapter(folder: Path, es: EsConfig) -> None:
    """A lora-space run trains model.adapter on as its own adapter: a plain LoRA of the run's
    rank and alpha (with es.space: weights any PEFT adapter is merged into the start model)."""
    shape = json.loads((folder / "adapter_config.json").read_text())
    where = f"{folder} has {shape.get('peft_type')} r {shape.get('r')} lora_alpha {shape.get('lora_alpha')}"
    check(shape.get("peft_type") == "LORA", "model.adapter", "must be a LoRA adapter to train it in lora space",
          where)
    check((shape.get("r"), shape.get("lora_alpha")) == (es.lora_rank, es.lora_alpha), "model.adapter",
          f"must match es.lora_rank {es.lora_rank} and es.lora_alpha {es.lora_alpha} in lora space "
          "(set those to the adapter's)", where)
    for flag, plain in (("use_rslora", False), ("use_dora", False), ("bias", "none"), ("modules_to_save", None),
                        ("rank_pattern", {}), ("alpha_pattern", {})):
        check(shape.get(flag, plain) in (plain, None), "model.adapter",
              f"{flag} {shape.get(flag)!r} is not trained in lora space, which evolves a plain LoRA "
              "(with es.space: weights the adapter is merged into the start model)", str(folder))
    check((folder / "adapter_model.safetensors").is_file(), "model.adapter",
          "must hold adapter_model.safetensors to train it in lora space", str(folder))


def validate(cfg: RunConfig) -> RunConfig:
    """Range and choice checks that types alone do not express."""
    check(cfg.model.dtype in DTYPES, "model.dtype", f"must be one of {sorted(DTYPES)}", cfg.model.dtype)
    _validate_source(cfg.model)
    check(not cfg.model.adapter or (Path(cfg.model.adapter) / "adapter_config.json").is_file(), "model.adapter",
          "must be a PEFT adapter folder (with adapter_config.json)", cfg.model.adapter)
    check(cfg.task.name in TASKS or cfg.task.name == "dataset", "task.name",
          f"must be one of {sorted(TASKS)} or dataset", cfg.task.name)
    check(cfg.task.max_prompt_tokens >= 0, "task.max_prompt_tokens", "must be >= 0", cfg.task.max_prompt_tokens)
    check(cfg.task.long_prompts in ("refuse", "skip"), "task.long_prompts", "must be refuse or skip",
          cfg.task.long_prompts)
    check(not cfg.task.system_prompt or cfg.task.chat_template, "task.system_prompt",
          "needs task.chat_template: true (a system message is part of the chat template)", cfg.task.system_prompt)
    _validate_data(cfg)
    check(cfg.task.heldout_size >= 1, "task.heldout_size", "must be >= 1", cfg.task.heldout_size)
    check(cfg.task.max_new_tokens >= 0, "task.max_new_tokens", "must be >= 0", cfg.task.max_new_tokens)
    es = cfg.es
    check(es.population >= 2 and es.population % 2 == 0, "es.population",
           "must be an even number >= 2 (antithetic pairs)", es.population)
    check(1 <= es.rank <= 64, "es.rank", "must be between 1 and 64", es.rank)
    check(es.space in SPACES, "es.space", f"must be one of {', '.join(SPACES)}", es.space)
    check(1 <= es.lora_rank <= 256, "es.lora_rank", "must be between 1 and 256", es.lora_rank)
    check(es.lora_alpha > 0, "es.lora_alpha", "must be > 0", es.lora_alpha)
    if es.space == "lora" and cfg.model.adapter:
        _validate_start_adapter(Path(cfg.model.adapter), es)
    check(es.space == "weights" or not es.anchor_decay, "es.anchor_decay",
          "is a weights-space step; in lora space es.weight_decay pulls the adapter toward zero, the start model",
          es.anchor_decay)
    check(es.sigma > 0, "es.sigma", "must be > 0", es.sigma)
    check(es.lr > 0, "es.lr", "must be > 0", es.lr)
    check(es.lr_schedule in LR_SCHEDULES, "es.lr_schedule", f"must be one of {list(LR_SCHEDULES)}", es.lr_schedule)
    check(es.noise_reuse >= 1, "es.noise_reuse", "must be >= 1", es.noise_reuse)
    check(es.seed >= 0, "es.seed", "must be >= 0", es.seed)
    check(es.shaping in {s.value for s in Shaping}, "es.shaping",
           f"must be one of {[s.value for s in Shaping]}", es.shaping)
    check(es.failed_samples in {s.value for s in FailedSamples}, "es.failed_samples",
           f"must be one of {[s.value for s in FailedSamples]}", es.failed_samples)
    check(es.optimizer in OPTIMIZERS, "es.optimizer", f"must be one of {', '.join(OPTIMIZERS)}", es.optimizer)
    check(0 <= es.momentum < 1, "es.momentum", "must be in [0, 1)", es.momentum)
    check(0 <= es.adam_beta1 < 1, "es.adam_beta1", "must be in [0, 1)", es.adam_beta1)
    check(0 <= es.adam_beta2 < 1, "es.adam_beta2", "must be in [0, 1)", es.adam_beta2)
    check(es.adam_eps > 0, "es.adam_eps", "must be > 0", es.adam_eps)
    check(es.weight_decay >= 0, "es.weight_decay", "must be >= 0", es.weight_decay)
    check(0 <= es.anchor_decay * es.lr <= 1, "es.anchor_decay",
          f"must be >= 0 and at most 1 / lr = {1 / es.lr:g}: each step moves the weights lr * anchor_decay of "
          "the way back to the start weights", es.anchor_decay)
    for key in ("target_modules", "exclude_modules"):
        for pattern in getattr(es, key):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"es.{key}: bad regular expression {pattern!r}: {err}") from None
    tr = cfg.train
    check(tr.generations >= 1, "train.generations", "must be >= 1", tr.generations)
    check(tr.time_budget_seconds >= 0, "train.time_budget_seconds", "must be >= 0", tr.time_budget_seconds)
    check(tr.prompts_per_member >= 1, "train.prompts_per_member", "must be >= 1", tr.prompts_per_member)
    check(tr.prompt_selection in SELECTIONS, "train.prompt_selection", f"must be one of {list(SELECTIONS)}",
          tr.prompt_selection)
    try:
        check_temperature(tr.temperature)
    except ValueError as err:
        raise ConfigError(f"train.{err}") from None
    check(tr.eval_every >= 1, "train.eval_every", "must be >= 1", tr.eval_every)
    check(tr.members_per_lease >= 0, "train.members_per_lease", "must be >= 0", tr.members_per_lease)
    check(tr.lease_timeout_seconds > 0, "train.lease_timeout_seconds", "must be > 0", tr.lease_timeout_seconds)
    check(tr.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0", tr.checkpoint_every)
    check(tr.checkpoints_kept >= 1, "train.checkpoints_kept", "must be >= 1", tr.checkpoints_kept)
    if tr.drift_probe:
        try:
            texts = read_probe_texts(Path(tr.drift_probe))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"train.drift_probe: cannot read {tr.drift_probe}: {err}") from None
        check(bool(texts), "train.drift_probe", "holds no text", tr.drift_probe)
    _validate_reward(cfg)
    _validate_tracking(cfg.tracking)
    return cfg


def trackers(tracking: TrackingConfig) -> list[str]:
    """The trackers a run writes to, by name."""
    return [name for name, on in (("tensorboard", tracking.tensorboard), ("mlflow", tracking.mlflow.tracking_uri),
                                  ("wandb", tracking.wandb.project)) if on]


def _validate_tracking(tracking: TrackingConfig) -> None:
    """A tracker whose library is not installed is refused here, with what installs it."""
    check(tracking.wandb.mode in ("offline", "online"), "tracking.wandb.mode", "must be offline or online",
          tracking.wandb.mode)
    check(bool(tracking.mlflow.experiment), "tracking.mlflow.experiment", "must not be empty",
          tracking.mlflow.experiment)
    for name in trackers(tracking):
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise ConfigError(f"tracking.{name}: the {TRACKER_PACKAGES[name]} package is not installed: "
                              f"pip install 'hatchery[{name}]'")


def _validate_source(model: ModelConfig) -> None:
    """A folder must hold a model and a hub id must resolve (in the cache, or by download),
    before anything starts; the embedded default is converted when a run starts."""
    if model.source == EMBEDDED:
        check(not model.revision, "model.revision", "is for a hub id, not the embedded default", model.revision)
        return
    try:
        path = resolve_model(model.source, model.revision)
    except FileNotFoundError as err:
        raise ConfigError(f"model.source: {err}") from None
    check(not model.revision or is_hub_snapshot(path), "model.revision", "is for a hub id, not a local folder",
          model.revision)


def _validate_data(cfg: RunConfig) -> None:
    """A dataset task's files are read and checked here, before anything starts."""
    task = cfg.task
    if task.name != "dataset":
        check(not task.train and not task.heldout, "task.train", "is read only with task.name: dataset",
              task.train or task.heldout)
        return
    check(bool(cfg.grader or cfg.reward.services), "grader", "a dataset has no grader of its own: name one "
          "(numeric, length, a grader from reward.graders) or give reward.services", cfg.grader)
    check(0 <= task.heldout_fraction < 1, "task.heldout_fraction", "must be in [0, 1)", task.heldout_fraction)
    check(task.metadata_keys == "all" or (isinstance(task.metadata_keys, list)
                                           and all(isinstance(k, str) for k in task.metadata_keys)),
          "task.metadata_keys", "must be 'all' or a list of column names", task.metadata_keys)
    from hatchery.core.prompt_data import dataset_task  # reads the files: only for dataset runs

    dataset_task(cfg)


def _validate_reward(cfg: RunConfig) -> None:
    rw = cfg.reward
    specs = parse_specs(rw.graders, "reward.graders.")
    check(not (cfg.grader and rw.services), "grader", "names the local reward service's grader; with "
          "reward.services set, give each service its own grader", cfg.grader)
    if cfg.grader:
        check(cfg.grader in BUILTIN_NAMES or cfg.grader in specs, "grader",
              f"must be a built-in grader {list(BUILTIN_NAMES)} or one defined in reward.graders", cfg.grader)
    check(rw.timeout_seconds > 0, "reward.timeout_seconds", "must be > 0", rw.timeout_seconds)
    check(rw.retries >= 0, "reward.retries", "must be >= 0", rw.retries)
    check(rw.batch_size >= 1, "reward.batch_size", "must be >= 1", rw.batch_size)
    for i, service in enumerate(rw.services):
        key = f"reward.services[{i}]"
        check(bool(service.addresses), f"{key}.addresses", "needs at least one host:port", service.addresses)
        for address in service.addresses:
            check(re.fullmatch(r"\S+:\d{1,5}", address) is not None, f"{key}.addresses", "must be host:port",
                  address)
        check(service.weight != 0, f"{key}.weight", "must not be 0", service.weight)
        check(service.token_env == "" or re.fullmatch(r"[A-Za-z_]\w*", service.token_env) is not None,
              f"{key}.token_env", "must be an environment variable name", service.token_env)


# In lora space a member's change to a layer's output is about 0.14 sigma (rank 8) where a
# weights-space member's is sigma: measured on the default task, 0.05 learns there
# (docs/experiments.md, ES in LoRA space); 0.012 is weights space's.
LORA_SPACE_DEFAULTS = {"sigma": 0.05, "lr": 0.05}


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping at the top level, got {type(data).__name__}")
    cfg = from_dict(RunConfig, data)
    if cfg.es.space == "lora":  # the space's own defaults for what the config leaves out
        given = data.get("es") or {}
        cfg = dataclasses.replace(cfg, es=dataclasses.replace(
            cfg.es, **{key: value for key, value in LORA_SPACE_DEFAULTS.items() if key not in given}))
    return validate(cfg)


def with_fresh_run_dir(cfg: RunConfig) -> RunConfig:
    """Names the run dir when the config leaves it empty, and refuses one that already
    holds a run: its update log is never appended to or overwritten by another run."""
    run_dir = Path(cfg.run_dir or time.strftime("runs/%Y%m%d-%H%M%S"))
    if (run_dir / "updates.jsonl").exists():
        raise ConfigError(f"run_dir: {run_dir} already holds a run (updates.jsonl); choose another run_dir")
    return dataclasses.replace(cfg, run_dir=str(run_dir))


def start_or_resume(cfg: RunConfig) -> RunConfig:
    """cfg when its run_dir holds no run yet; the same config when it holds this run
    (an optimizer restarted by Kubernetes); refused when it holds a run of another config."""
    if not cfg.run_dir:
        raise ConfigError("run_dir: must be set to resume a run when it exists")
    if not (Path(cfg.run_dir) / "config.yaml").exists():
        return with_fresh_run_dir(cfg)
    started = resumed_config(cfg.run_dir)
    if started != cfg:
        raise ConfigError(f"run_dir: {cfg.run_dir} holds a run started with another config; "
                          "choose another run_dir or restore that config")
    return started


def resumed_config(run_dir: str | Path) -> RunConfig:
    """The config a run was started with, read back from its run dir."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {run_dir} holds no run ({path.name} is missing)")
    return dataclasses.replace(load_config(path), run_dir=str(run_dir))


def load_config(path: str | Path | None) -> RunConfig:
    """The embedded default when path is None."""
    if path is None:
        return parse_config({})
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data)
