from google.protobuf import struct_pb2 as _struct_pb2
from hatchery.v1 import reward_pb2 as _reward_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_PAUSED: _ClassVar[RunState]
    RUN_STATE_FINISHING: _ClassVar[RunState]
    RUN_STATE_FINISHED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]

class LeaseKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEASE_KIND_UNSPECIFIED: _ClassVar[LeaseKind]
    LEASE_KIND_TRAIN: _ClassVar[LeaseKind]
    LEASE_KIND_EVAL: _ClassVar[LeaseKind]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_PAUSED: RunState
RUN_STATE_FINISHING: RunState
RUN_STATE_FINISHED: RunState
RUN_STATE_FAILED: RunState
LEASE_KIND_UNSPECIFIED: LeaseKind
LEASE_KIND_TRAIN: LeaseKind
LEASE_KIND_EVAL: LeaseKind

class WatchRunRequest(_message.Message):
    __slots__ = ("from_generation",)
    FROM_GENERATION_FIELD_NUMBER: _ClassVar[int]
    from_generation: int
    def __init__(self, from_generation: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("generation", "row", "evaluation", "state", "failure")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    generation: int
    row: _struct_pb2.Struct
    evaluation: HeldOutEvaluation
    state: RunState
    failure: str
    def __init__(self, generation: _Optional[int] = ..., row: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., evaluation: _Optional[_Union[HeldOutEvaluation, _Mapping]] = ..., state: _Optional[_Union[RunState, str]] = ..., failure: _Optional[str] = ...) -> None: ...

class HeldOutEvaluation(_message.Message):
    __slots__ = ("mean", "stderr", "samples")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    mean: float
    stderr: float
    samples: _containers.RepeatedCompositeFieldContainer[EvaluatedSample]
    def __init__(self, mean: _Optional[float] = ..., stderr: _Optional[float] = ..., samples: _Optional[_Iterable[_Union[EvaluatedSample, _Mapping]]] = ...) -> None: ...

class EvaluatedSample(_message.Message):
    __slots__ = ("prompt", "reference", "completion", "reward")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    reference: str
    completion: str
    reward: float
    def __init__(self, prompt: _Optional[str] = ..., reference: _Optional[str] = ..., completion: _Optional[str] = ..., reward: _Optional[float] = ...) -> None: ...

class PauseRunRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunControlResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    def __init__(self, state: _Optional[_Union[RunState, str]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("worker_id", "device")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    device: str
    def __init__(self, worker_id: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("run_id", "base_model_path", "es", "grader", "checkpoint", "reward", "base_model_files")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    ES_FIELD_NUMBER: _ClassVar[int]
    GRADER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FILES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    base_model_path: str
    es: EsSettings
    grader: str
    checkpoint: CheckpointInfo
    reward: RewardSettings
    base_model_files: _containers.RepeatedCompositeFieldContainer[ModelFile]
    def __init__(self, run_id: _Optional[str] = ..., base_model_path: _Optional[str] = ..., es: _Optional[_Union[EsSettings, _Mapping]] = ..., grader: _Optional[str] = ..., checkpoint: _Optional[_Union[CheckpointInfo, _Mapping]] = ..., reward: _Optional[_Union[RewardSettings, _Mapping]] = ..., base_model_files: _Optional[_Iterable[_Union[ModelFile, _Mapping]]] = ...) -> None: ...

class ModelFile(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class FetchModelFileRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RewardSettings(_message.Message):
    __slots__ = ("services", "timeout_seconds", "retries", "batch_size")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[RewardEndpoint]
    timeout_seconds: float
    retries: int
    batch_size: int
    def __init__(self, services: _Optional[_Iterable[_Union[RewardEndpoint, _Mapping]]] = ..., timeout_seconds: _Optional[float] = ..., retries: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class RewardEndpoint(_message.Message):
    __slots__ = ("addresses", "grader", "weight", "token_env")
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    GRADER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ENV_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    grader: str
    weight: float
    token_env: str
    def __init__(self, addresses: _Optional[_Iterable[str]] = ..., grader: _Optional[str] = ..., weight: _Optional[float] = ..., token_env: _Optional[str] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("generation", "path", "size_bytes")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    generation: int
    path: str
    size_bytes: int
    def __init__(self, generation: _Optional[int] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class FetchCheckpointRequest(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("offset", "data", "size_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    size_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class EsSettings(_message.Message):
    __slots__ = ("seed", "rank", "population", "noise_reuse", "target_modules", "exclude_modules", "optimizer", "adam_beta1", "adam_beta2", "adam_eps", "weight_decay", "dtype", "momentum", "anchor_decay", "space", "lora_rank", "lora_alpha")
    SEED_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    POPULATION_FIELD_NUMBER: _ClassVar[int]
    NOISE_REUSE_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_MODULES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    ADAM_BETA1_FIELD_NUMBER: _ClassVar[int]
    ADAM_BETA2_FIELD_NUMBER: _ClassVar[int]
    ADAM_EPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_DECAY_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    seed: int
    rank: int
    population: int
    noise_reuse: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    exclude_modules: _containers.RepeatedScalarFieldContainer[str]
    optimizer: str
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    weight_decay: float
    dtype: str
    momentum: float
    anchor_decay: float
    space: str
    lora_rank: int
    lora_alpha: float
    def __init__(self, seed: _Optional[int] = ..., rank: _Optional[int] = ..., population: _Optional[int] = ..., noise_reuse: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., exclude_modules: _Optional[_Iterable[str]] = ..., optimizer: _Optional[str] = ..., adam_beta1: _Optional[float] = ..., adam_beta2: _Optional[float] = ..., adam_eps: _Optional[float] = ..., weight_decay: _Optional[float] = ..., dtype: _Optional[str] = ..., momentum: _Optional[float] = ..., anchor_decay: _Optional[float] = ..., space: _Optional[str] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[float] = ...) -> None: ...

class GetWorkRequest(_message.Message):
    __slots__ = ("worker_id", "applied_generation")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    applied_generation: int
    def __init__(self, worker_id: _Optional[str] = ..., applied_generation: _Optional[int] = ...) -> None: ...

class GetWorkResponse(_message.Message):
    __slots__ = ("updates", "lease", "retry_after_seconds", "finished", "resync")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[UpdateRecord]
    lease: Lease
    retry_after_seconds: float
    finished: bool
    resync: bool
    def __init__(self, updates: _Optional[_Iterable[_Union[UpdateRecord, _Mapping]]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., retry_after_seconds: _Optional[float] = ..., finished: _Optional[bool] = ..., resync: _Optional[bool] = ...) -> None: ...

class UpdateRecord(_message.Message):
    __slots__ = ("generation", "noise_epoch", "lr", "sigma", "fitness")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NOISE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    noise_epoch: int
    lr: float
    sigma: float
    fitness: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, generation: _Optional[int] = ..., noise_epoch: _Optional[int] = ..., lr: _Optional[float] = ..., sigma: _Optional[float] = ..., fitness: _Optional[_Iterable[float]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("index", "text", "reference", "metadata", "columns", "messages")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    reference: str
    metadata: _containers.ScalarMap[str, str]
    columns: _struct_pb2.Struct
    messages: _containers.RepeatedCompositeFieldContainer[_reward_pb2.Message]
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., reference: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., columns: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_reward_pb2.Message, _Mapping]]] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "chat_template", "stop_rule", "sampling_seed")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    STOP_RULE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_SEED_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    chat_template: bool
    stop_rule: str
    sampling_seed: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., chat_template: _Optional[bool] = ..., stop_rule: _Optional[str] = ..., sampling_seed: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "kind", "generation", "member_start", "member_end", "sigma", "prompts", "sampling", "deadline_seconds", "return_completions")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_START_FIELD_NUMBER: _ClassVar[int]
    MEMBER_END_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    kind: LeaseKind
    generation: int
    member_start: int
    member_end: int
    sigma: float
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    sampling: Sampling
    deadline_seconds: float
    return_completions: int
    def __init__(self, lease_id: _Optional[str] = ..., kind: _Optional[_Union[LeaseKind, str]] = ..., generation: _Optional[int] = ..., member_start: _Optional[int] = ..., member_end: _Optional[int] = ..., sigma: _Optional[float] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., deadline_seconds: _Optional[float] = ..., return_completions: _Optional[int] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("worker_id", "lease_id", "generation", "rewards", "statuses", "weights_fingerprint", "generated_tokens", "generate_seconds", "reward_seconds", "update_seconds", "noise_seconds", "completions", "sub_score_sums", "sub_score_counts")
    class SubScoreSumsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SubScoreCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOISE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    SUB_SCORE_SUMS_FIELD_NUMBER: _ClassVar[int]
    SUB_SCORE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    lease_id: str
    generation: int
    rewards: _containers.RepeatedScalarFieldContainer[float]
    statuses: _containers.RepeatedScalarFieldContainer[_reward_pb2.ScoreStatus]
    weights_fingerprint: str
    generated_tokens: int
    generate_seconds: float
    reward_seconds: float
    update_seconds: float
    noise_seconds: float
    completions: _containers.RepeatedScalarFieldContainer[str]
    sub_score_sums: _containers.ScalarMap[str, float]
    sub_score_counts: _containers.ScalarMap[str, int]
    def __init__(self, worker_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., generation: _Optional[int] = ..., rewards: _Optional[_Iterable[float]] = ..., statuses: _Optional[_Iterable[_Union[_reward_pb2.ScoreStatus, str]]] = ..., weights_fingerprint: _Optional[str] = ..., generated_tokens: _Optional[int] = ..., generate_seconds: _Optional[float] = ..., reward_seconds: _Optional[float] = ..., update_seconds: _Optional[float] = ..., noise_seconds: _Optional[float] = ..., completions: _Optional[_Iterable[str]] = ..., sub_score_sums: _Optional[_Mapping[str, float]] = ..., sub_score_counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ("accepted", "reason", "resync")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    resync: bool
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., resync: _Optional[bool] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("worker_id", "lease_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    lease_id: str
    def __init__(self, worker_id: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GenerationSummary(_message.Message):
    __slots__ = ("generation", "reward_mean", "reward_max", "heldout_reward", "seconds")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    REWARD_MAX_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_REWARD_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    reward_mean: float
    reward_max: float
    heldout_reward: float
    seconds: float
    def __init__(self, generation: _Optional[int] = ..., reward_mean: _Optional[float] = ..., reward_max: _Optional[float] = ..., heldout_reward: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "leases_completed", "weights_fingerprint", "last_seen_seconds_ago", "device")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASES_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    leases_completed: int
    weights_fingerprint: str
    last_seen_seconds_ago: float
    device: str
    def __init__(self, worker_id: _Optional[str] = ..., leases_completed: _Optional[int] = ..., weights_fingerprint: _Optional[str] = ..., last_seen_seconds_ago: _Optional[float] = ..., device: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("run_id", "generation", "total_generations", "finished", "history", "workers", "weights_fingerprint", "last_checkpoint", "fingerprint_mismatches", "lease_reassignments", "lease_releases", "workers_total", "state", "failure", "training_seconds", "time_budget_seconds")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    LEASE_REASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_RELEASES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    generation: int
    total_generations: int
    finished: bool
    history: _containers.RepeatedCompositeFieldContainer[GenerationSummary]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    weights_fingerprint: str
    last_checkpoint: CheckpointInfo
    fingerprint_mismatches: int
    lease_reassignments: int
    lease_releases: int
    workers_total: int
    state: RunState
    failure: str
    training_seconds: float
    time_budget_seconds: float
    def __init__(self, run_id: _Optional[str] = ..., generation: _Optional[int] = ..., total_generations: _Optional[int] = ..., finished: _Optional[bool] = ..., history: _Optional[_Iterable[_Union[GenerationSummary, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., weights_fingerprint: _Optional[str] = ..., last_checkpoint: _Optional[_Union[CheckpointInfo, _Mapping]] = ..., fingerprint_mismatches: _Optional[int] = ..., lease_reassignments: _Optional[int] = ..., lease_releases: _Optional[int] = ..., workers_total: _Optional[int] = ..., state: _Optional[_Union[RunState, str]] = ..., failure: _Optional[str] = ..., training_seconds: _Optional[float] = ..., time_budget_seconds: _Optional[float] = ...) -> None: ...
