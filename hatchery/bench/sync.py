"""`hatchery bench-sync`: bytes on the wire and update time per generation against model size.

Each model trains a few generations with an optimizer and a reward service as
gRPC servers on loopback in this process and one real Worker, whose optimizer
traffic is counted message by message. After the join, only seeds and scalars
should cross: the bytes per generation should not move with the model, while
applying an update (one matmul per matrix) grows with it. A lease carries its prompts'
text and columns, counted apart, with one more row on a dataset's longer prompts; so are
the few held-out completions results bring back (their text depends on what the model says).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc

from hatchery.bench.data import write_word_problems
from hatchery.bench.throughput import tiny_model
from hatchery.core.config import RunConfig, parse_config
from hatchery.core.model import EMBEDDED, load_model, resolve_model
from hatchery.core.run_metrics import OPTIMIZER_TIME_SPLIT, OVERLAPPED_TIME_SPLIT
from hatchery.core.start import prepare_start
from hatchery.service.serving import channel
from hatchery.v1 import optimizer_pb2_grpc
from inference_svc.server import Worker
from optimizer_svc.coordinator import Coordinator
from optimizer_svc.server import optimizer_server
from reward_svc.server import reward_server

WIDTHS = (256, 512, 1024)  # hidden sizes of the random 4-layer Llamas, next to SmolLM2 itself


class ByteCounter(grpc.UnaryUnaryClientInterceptor):
    """Serialized sizes of the optimizer traffic that carries a generation's work:
    leases, update records and results (empty polls and the one-off Join aside)."""

    def __init__(self):
        self.bytes = 0
        self.prompt_bytes = 0  # of those, the leases' prompts: their text, references and columns
        self.completion_bytes = 0  # and the held-out completions results bring back for watchers
        self.updates_received = 0

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        response = outcome.result()
        if details.method.endswith("/ReportResult"):
            bare = type(request)()
            bare.CopyFrom(request)
            del bare.completions[:]
            self.completion_bytes += request.ByteSize() - bare.ByteSize()
            self.bytes += request.ByteSize() + response.ByteSize()
        elif details.method.endswith("/GetWork") and (response.HasField("lease") or response.updates):
            self.bytes += request.ByteSize() + response.ByteSize()
            self.prompt_bytes += sum(p.ByteSize() for p in response.lease.prompts)
            self.updates_received += len(response.updates)
        return outcome


@contextlib.contextmanager
def loopback_run(cfg: RunConfig) -> Iterator[tuple[Coordinator, Worker, ByteCounter]]:
    """cfg's optimizer and a reward service on loopback in this process, and a joined
    Worker whose optimizer traffic is counted; train with run_to_end."""
    run_dir = Path(cfg.run_dir)
    start = prepare_start(cfg, run_dir)
    coordinator = Coordinator(cfg, load_model(start.path, cfg.model.dtype), run_dir)
    optimizer, reward = optimizer_server(coordinator, start), reward_server()
    optimizer.start()
    reward.start()
    try:
        worker = Worker("w", optimizer.address, reward.address)
        counter = ByteCounter()
        worker.optimizer = optimizer_pb2_grpc.OptimizerServiceStub(
            grpc.intercept_channel(channel(optimizer.address), counter))
        worker.join()
        yield coordinator, worker, counter
    finally:
        optimizer.stop()
        reward.stop()


def run_to_end(coordinator: Coordinator, worker: Worker, timeout: float = 600.0) -> None:
    thread = threading.Thread(target=worker.run, args=(threading.Event(),), daemon=True)
    thread.start()
    if not coordinator.finished.wait(timeout):
        raise TimeoutError(f"the run did not finish within {timeout:.0f} s")
    thread.join(30)


def _random_llama(tokenizer, hidden: int, folder: Path) -> Path:
    tiny_model(tokenizer, hidden=hidden).model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


ARITH = {"heldout_size": 4, "max_new_tokens": 4}


def sync_row(model_dir: Path, run_dir: Path, generations: int, task: dict = ARITH) -> dict:
    cfg = parse_config({"run_dir": str(run_dir), "model": {"source": str(model_dir)}, "grader": "length",
                        "task": task, "es": {"population": 4, "rank": 1},
                        "train": {"generations": generations, "prompts_per_member": 1, "eval_every": 10_000,
                                  "checkpoint_every": 0, "time_budget_seconds": 0}})
    with loopback_run(cfg) as (coordinator, worker, counter):
        run_to_end(coordinator, worker)
    train = [s for s in coordinator.history if s.trained]
    return {
        "model": model_dir.name, "task": cfg.task.name,
        "parameters": sum(t.weight.numel() for t in coordinator.targets),
        "generations": len(train), "bytes_per_generation": counter.bytes / generations,
        "prompt_bytes_per_generation": counter.prompt_bytes / generations,
        "completion_bytes_per_generation": counter.completion_bytes / generations,
        "updates_received": counter.updates_received,
        "worker_update_seconds_median": statistics.median(s.time_split["update"] for s in train[1:]),
        # its whole update: the part on the critical path and the part beside the next generation
        "optimizer_update_seconds_median": statistics.median(
            s.time_split[OPTIMIZER_TIME_SPLIT] + s.time_split.get(OVERLAPPED_TIME_SPLIT, 0.0) for s in train),
    }


def run_sync_bench(widths: tuple[int, ...] = WIDTHS, smollm2: bool = True, generations: int = 4) -> dict:
    """One row per model; `parameters` counts the perturbed (block linear) weights."""
    embedded = resolve_model(EMBEDDED)
    tokenizer = load_model(embedded).tokenizer
    with tempfile.TemporaryDirectory(prefix="hatchery-bench-sync-") as tmp:
        folders = [_random_llama(tokenizer, w, Path(tmp) / f"llama-4x{w}") for w in widths]
        if smollm2:
            folders.append(embedded)
        rows = [sync_row(folder, Path(tmp) / f"run-{i}", generations) for i, folder in enumerate(folders)]
        problems = Path(tmp) / "word-problems.parquet"  # longer prompts, with a typed column
        write_word_problems(problems, 64)
        dataset = {"name": "dataset", "train": str(problems), "reference_key": "answer", "heldout_size": 4,
                   "max_new_tokens": 4}
        rows.append(sync_row(folders[0], Path(tmp) / "run-dataset", generations, dataset))
    return {"generations": generations, "population": 4, "rank": 1, "rows": rows}
