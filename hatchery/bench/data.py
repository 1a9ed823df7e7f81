"""`hatchery bench-data`: what a large prompt dataset costs a run, next to arith.

A Parquet file of generated word problems (1,000,000 rows by default) is trained on for
one generation by the three services as separate processes on loopback, started as
`hatchery run` starts them, and so is the default arith task with the same model.
Reported for each: seconds from starting the optimizer until its first lease goes out
(the data read and checked, the start hashed, the model loaded) and the resident memory
of the optimizer (when that lease goes out, and at its peak) and of the worker (peak).
The dataset runs twice: first with an empty `datasets` cache (the file is converted to
Arrow once), then with it warm, as a restarted optimizer finds it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from hatchery.launcher import HOST, MemoryWatch, spawn_service, wait_for_port
from hatchery.service.serving import channel
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc

RUN = {"es": {"population": 2, "rank": 1}, "grader": "numeric",
       "train": {"generations": 1, "prompts_per_member": 1, "eval_every": 1000, "time_budget_seconds": 0,
                 "checkpoint_every": 0}}
MIB = 2**20


def write_word_problems(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` two-step word problems with integer answers and a difficulty column, as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    a, b, c = (rng.integers(2, 500, rows) for _ in range(3))
    prompts = [f"A shop has {x} boxes. It sells {y} and gets {z} more. How many boxes does it have now?"
               for x, y, z in zip(a.tolist(), b.tolist(), c.tolist())]
    table = pa.table({"prompt": prompts, "answer": pa.array((a - b + c).astype(str)),
                      "level": pa.array(rng.integers(1, 6, rows))})
    pq.write_table(table, path)


def _first_lease(address: str, timeout: float = 900.0) -> None:
    """Waits, as a worker would, until the optimizer hands out a lease; gives it straight back."""
    stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(address))
    stub.Join(pb.JoinRequest(worker_id="bench-probe"), timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        work = stub.GetWork(pb.GetWorkRequest(worker_id="bench-probe"), timeout=60)
        if work.HasField("lease"):
            stub.ReleaseLease(pb.ReleaseLeaseRequest(worker_id="bench-probe", lease_id=work.lease.lease_id),
                              timeout=60)
            return
        time.sleep(min(work.retry_after_seconds, 0.05))
    raise TimeoutError(f"no lease within {timeout:.0f} s")


def measure(name: str, run: dict, folder: Path, env: dict[str, str]) -> dict:
    """One generation of `run` with the services as processes; its timings and memory."""
    run_dir = folder / name
    run_dir.mkdir()
    config = run_dir / "run.yaml"
    config.write_text(yaml.safe_dump({**run, "run_dir": str(run_dir / "run")}))
    common = ["--host", HOST, "--port", "0"]
    procs = {"reward": spawn_service(["reward", *common, "--port-file", str(run_dir / "reward.port")],
                                     run_dir / "reward.log", env)}
    started = time.monotonic()
    procs["optimizer"] = spawn_service(["optimizer", "--config", str(config), *common,
                                        "--port-file", str(run_dir / "optimizer.port")], run_dir / "optimizer.log", env)
    watch = MemoryWatch(procs)
    watch.start()
    try:
        address = f"{HOST}:{wait_for_port(run_dir / 'optimizer.port', procs['optimizer'], 'optimizer', 900)}"
        _first_lease(address)
        first_lease = time.monotonic() - started
        optimizer_at_first_lease = MemoryWatch.rss(procs["optimizer"].pid)
        reward = f"{HOST}:{wait_for_port(run_dir / 'reward.port', procs['reward'], 'reward')}"
        procs["inference"] = spawn_service(["inference", *common, "--optimizer-address", address,
                                            "--reward-address", reward, "--worker-id", "bench-0"],
                                           run_dir / "inference.log", env)
        code = procs["optimizer"].wait(timeout=1800)
        if code != 0:
            raise RuntimeError(f"{name}: the optimizer exited with code {code}; see {run_dir / 'optimizer.log'}")
    finally:
        watch.stop()
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    return {"case": name, "first_lease_seconds": round(first_lease, 2),
            "optimizer_rss_at_first_lease_mib": round(optimizer_at_first_lease / MIB),
            "optimizer_peak_rss_mib": round(watch.peak["optimizer"] / MIB),
            "inference_peak_rss_mib": round(watch.peak["inference"] / MIB)}


def run_data_bench(rows: int = 1_000_000, model: str = "") -> dict:
    with tempfile.TemporaryDirectory(prefix="hatchery-bench-data-") as tmp:
        folder = Path(tmp)
        data = folder / "word-problems.parquet"
        started = time.perf_counter()
        write_word_problems(data, rows)
        written = time.perf_counter() - started
        base = {**RUN, **({"model": {"source": model}} if model else {})}
        dataset = {**base, "task": {"name": "dataset", "train": str(data), "reference_key": "answer",
                                    "heldout_size": 8, "max_new_tokens": 8}}
        arith = {**base, "task": {"heldout_size": 8}}
        env = {"HF_DATASETS_CACHE": str(folder / "datasets-cache"), "HF_DATASETS_OFFLINE": "1"}
        cases = [measure("arith", arith, folder, env), measure("dataset-cold-cache", dataset, folder, env),
                 measure("dataset-warm-cache", dataset, folder, env)]
        return {"rows": rows, "parquet_bytes": os.path.getsize(data), "write_seconds": round(written, 1),
                "cpus": os.cpu_count(), "cases": cases}
