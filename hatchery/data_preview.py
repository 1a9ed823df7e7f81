"""`hatchery data preview CONFIG`: what a run's prompts will be, before it runs.

The row counts, a few prompts exactly as the model will read them (after the chat
template), their references and columns, and the prompt lengths in tokens. Only the
model's tokenizer is loaded, not its weights.
"""

from __future__ import annotations

import random
import statistics

from hatchery.core.config import RunConfig
from hatchery.core.model import format_prompts, load_tokenizer, resolve_model
from hatchery.core.prompt_data import run_task

LENGTH_SAMPLE = 10_000  # prompts tokenized for the length distribution (all of them when fewer)


def preview(cfg: RunConfig, examples: int = 3) -> dict:
    task = run_task(cfg)
    tokenizer = load_tokenizer(resolve_model(cfg.model.source, cfg.model.revision))
    shown = [task.train[i] for i in range(min(examples, len(task.train)))]
    rows = list(range(len(task.train)))
    sample = sorted(random.Random(0).sample(rows, LENGTH_SAMPLE)) if len(rows) > LENGTH_SAMPLE else rows
    texts = format_prompts(tokenizer, [task.train[i].model_input for i in sample], cfg.task.chat_template)
    lengths = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return {
        "task": cfg.task.name, "train_rows": len(task.train), "heldout_rows": len(task.heldout),
        "grader": cfg.grader or task.grader, "max_new_tokens": task.max_new_tokens,
        "examples": [{"prompt": text, "reference": p.reference, "columns": p.columns or p.metadata}
                     for p, text in zip(shown, format_prompts(tokenizer, [p.model_input for p in shown],
                                                              cfg.task.chat_template))],
        "prompt_tokens": {"prompts_measured": len(lengths), "min": lengths[0],
                          "median": statistics.median(lengths),
                          "p95": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))], "max": lengths[-1]},
    }
