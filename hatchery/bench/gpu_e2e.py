"""The three services on one machine with the worker on a GPU (scripts/gpu_e2e.sh).

A random model in a Qwen2.5 shape is saved as a Hugging Face folder, `hatchery run`
trains it for a few generations with `--device`, and the optimizer's status is polled
throughout: every result a worker reports carries its weights' fingerprint, and the
optimizer drops any that differs from its own, so zero mismatches over the run means
the worker on the GPU held the optimizer's weights bit for bit after every update.
Where the worker's time went comes from the run's metrics.jsonl (generate against
update), and `hatchery bench` gives the perturbed / plain throughput ratio beside it.

    python -m hatchery.bench.gpu_e2e --device cuda --out docs/results/gpu-e2e.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import torch
import yaml
from google.protobuf import json_format

from hatchery.bench.throughput import QWEN_SHAPES, qwen_shape, run_bench, tiny_model
from hatchery.client import RunClient
from hatchery.core.model import EMBEDDED, load_tokenizer, resolve_model
from hatchery.core.run_metrics import metrics_rows


def save_model(shape: str, folder: Path, tokenizer: str | None) -> Path:
    """Random weights in `shape` (a QWEN_SHAPES name, or "tiny"), with SmolLM2's tokenizer."""
    tok = load_tokenizer(tokenizer or resolve_model(EMBEDDED))
    lm = tiny_model(tok) if shape == "tiny" else qwen_shape(shape, tok)
    lm.model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _status(port_file: Path) -> dict | None:
    """The optimizer's GetStatus as a dict; None while it is not up."""
    if not port_file.is_file() or not port_file.read_text().strip():
        return None
    try:
        with RunClient(f"127.0.0.1:{port_file.read_text().strip()}", token="", timeout=5) as run:
            reply = run.status()
    except grpc.RpcError:
        return None
    return json_format.MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def train(work: Path, model: Path, device: str, dtype: str, population: int, generations: int) -> dict:
    """`hatchery run` on `model`, polled until it ends: the last status seen and the run's rows."""
    run_dir = work / "run"
    # The length grader scores random text unevenly, so every generation makes a real update.
    config = {"run_dir": str(run_dir), "model": {"source": str(model), "dtype": dtype}, "grader": "length",
              "task": {"name": "arith", "heldout_size": 8, "max_new_tokens": 16},
              "es": {"population": population}, "train": {"generations": generations, "eval_every": generations}}
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "hatchery.cli", "run", str(work / "run.yaml"), "--device", device])
    last = None
    while proc.poll() is None:
        last = _status(run_dir / "ports" / "optimizer") or last
        time.sleep(1.0)
    if proc.returncode != 0:
        raise RuntimeError(f"hatchery run exited {proc.returncode}")
    if last is None:
        raise RuntimeError("the optimizer never answered GetStatus")
    rows = [r for r in metrics_rows(run_dir) if r["reward_mean"] is not None]  # trained generations
    return {"status": last, "rows": rows}


def run_e2e(device: str, shape: str, dtype: str, population: int, generations: int, batches: list[int],
            work: Path, tokenizer: str | None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    model = save_model(shape, work / "model", tokenizer)
    trained = train(work, model, device, dtype, population, generations)
    status, rows = trained["status"], trained["rows"]
    generate = sum(r["time_split"].get("generate", 0.0) for r in rows)
    update = sum(r["time_split"].get("update", 0.0) for r in rows)
    bench = run_bench([shape], [dtype], batches, [1], [], new_tokens=32, repeats=2, naive_repeats=0,
                      prompts_per_member=[4], device=device, tokenizer=str(model))
    return {
        "machine": bench["machine"], "date": bench["date"], "model": shape, "dtype": dtype,
        "population": population, "generations": len(rows),
        "fingerprint_mismatches": int(status.get("fingerprint_mismatches", 0)),
        "workers": [{"device": w.get("device", ""), "fingerprint": w.get("weights_fingerprint", "")}
                    for w in status.get("workers", [])],
        "optimizer_fingerprint": status.get("weights_fingerprint", ""),
        "worker_generate_seconds": generate, "worker_update_seconds": update,
        "update_share_of_worker_time": update / (generate + update) if generate + update else None,
        "throughput": [{"batch": r["batch"], "perturbed_over_plain": r["eggroll_over_unperturbed_throughput"]}
                       for r in bench["throughput"]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hatchery.bench.gpu_e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="qwen2.5-0.5b-shape", choices=["tiny", *QWEN_SHAPES])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--batches", default="256,1024", help="comma-separated rows per batch for the throughput ratio")
    p.add_argument("--work", default=".gpu/e2e", help="scratch folder: the model and the run")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's)")
    p.add_argument("--out", required=True, help="the JSON report")
    args = p.parse_args(argv)
    report = run_e2e(args.device, args.shape, args.dtype, args.population, args.generations,
                     [int(b) for b in args.batches.split(",")], Path(args.work), args.tokenizer)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    devices = {w["device"].split(" ")[0].split(":")[0] for w in report["workers"]}
    ok = report["fingerprint_mismatches"] == 0 and report["generations"] >= 1 and devices == {
        torch.device(args.device).type}
    if not ok:
        print(f"gpu_e2e: FAILED: {report['fingerprint_mismatches']} fingerprint mismatches, "
              f"{report['generations']} generations, workers on {sorted(devices)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
