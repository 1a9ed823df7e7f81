"""Reward functions written for TRL's GRPOTrainer work as Hatchery plug-ins unchanged.

Hatchery calls fn(prompts=[...], completions=[...], reference=[...], **metadata_columns)
and reads back one float per completion, or None where the function does not apply.

    reward:
      graders:
        answer: {type: python, function: trl_rewards:accuracy_reward, path: examples/plugins}
"""

import re

ANSWER = re.compile(r"-?\d+")


def accuracy_reward(completions, reference, **kwargs):
    """1.0 when the first integer in the completion is the reference answer."""
    scores = []
    for completion, answer in zip(completions, reference):
        if not answer:
            scores.append(None)  # no reference: not applicable, never a silent 0
            continue
        found = ANSWER.search(completion)
        scores.append(1.0 if found and found.group() == answer.strip() else 0.0)
    return scores


def brevity_reward(completions, **kwargs):
    """A small bonus for short answers: 1 at 0 characters, 0 at 200 and beyond."""
    return [max(0.0, 1.0 - len(c) / 200) for c in completions]
