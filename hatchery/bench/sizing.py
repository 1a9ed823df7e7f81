"""`hatchery bench-size`: what a run of a model costs in memory and on disk, per dtype.

Each model and dtype trains one generation with the three services as processes on
loopback (bench-data's measure: peak resident memory of the optimizer and the worker),
with a checkpoint written; the checkpoint's size (float32 master weights of the
perturbed matrices) and the model folder's are read off the disk. The Qwen2.5 shapes
are random weights built from their configs, saved once into a scratch folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hatchery.bench.data import measure
from hatchery.bench.throughput import QWEN_SHAPES, qwen_shape
from hatchery.core.model import EMBEDDED, load_tokenizer, resolve_model

MODELS = ("smollm2", *QWEN_SHAPES)
RUN = {"es": {"population": 2, "rank": 1}, "grader": "length",
       "task": {"heldout_size": 2, "max_new_tokens": 2},
       "train": {"generations": 1, "prompts_per_member": 1, "eval_every": 1000, "time_budget_seconds": 0,
                 "checkpoint_every": 1}}
MIB = 2**20


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def model_folder(name: str, scratch: Path) -> Path:
    """The embedded SmolLM2, random weights in a Qwen2.5 shape saved under `scratch`, or a
    model folder of your own."""
    if name not in QWEN_SHAPES:
        return resolve_model(EMBEDDED if name == "smollm2" else name)
    folder = scratch / name
    if not folder.is_dir():
        lm = qwen_shape(name, load_tokenizer(resolve_model(EMBEDDED)))
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
    return folder


def run_size_bench(models: tuple[str, ...] = MODELS, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hatchery-bench-size-") as tmp:
        scratch = Path(tmp)
        for name in models:
            folder = model_folder(name, scratch)
            for dtype in dtypes:
                case = f"{Path(name).name}-{dtype}"
                run = {**RUN, "model": {"source": str(folder), "dtype": dtype}}
                measured = measure(case, run, scratch, {})
                (checkpoint,) = (scratch / case / "run" / "checkpoints").glob("*.safetensors")
                rows.append({"model": Path(name).name, "dtype": dtype,
                             "model_folder_mib": round(_folder_bytes(folder) / MIB),
                             "optimizer_peak_rss_mib": measured["optimizer_peak_rss_mib"],
                             "inference_peak_rss_mib": measured["inference_peak_rss_mib"],
                             "checkpoint_mib": round(checkpoint.stat().st_size / MIB)})
    return {"cpus": os.cpu_count(), "population": 2, "rows": rows}
