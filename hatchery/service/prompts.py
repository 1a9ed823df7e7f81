"""A task's prompts on the wire: TaskPrompt to a lease's Prompt, and Prompt plus completion
to the reward service's Sample, with the dataset's typed columns and conversations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import json_format, struct_pb2

from hatchery.core.tasks import EXACT_INTEGERS, TaskPrompt
from hatchery.v1 import optimizer_pb2, reward_pb2

if TYPE_CHECKING:  # the reward service, which uses this module, has no need of torch
    from hatchery.core.model import Prompt as ModelInput


def lease_prompt(index: int, p: TaskPrompt) -> optimizer_pb2.Prompt:
    columns = None
    if p.columns:
        columns = struct_pb2.Struct()
        columns.update(p.columns)
    return optimizer_pb2.Prompt(index=index, text=p.text, reference=p.reference, metadata=p.metadata,
                                columns=columns, messages=[reward_pb2.Message(**m) for m in p.messages])


def reward_sample(p: optimizer_pb2.Prompt, completion: str) -> reward_pb2.Sample:
    return reward_pb2.Sample(prompt=p.text, completion=completion, reference=p.reference, metadata=p.metadata,
                             columns=p.columns if p.HasField("columns") else None, messages=p.messages)


def model_input(p: optimizer_pb2.Prompt | reward_pb2.Sample) -> ModelInput:
    """The conversation the model is given, or the prompt's text alone."""
    text = p.text if isinstance(p, optimizer_pb2.Prompt) else p.prompt
    return [{"role": m.role, "content": m.content} for m in p.messages] or text


def struct_values(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as Python values, whole numbers as int: a dataset's integer column reaches a
    grader as the integers it holds (3, not 3.0), as TRL would pass them."""
    return _whole(json_format.MessageToDict(struct))


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_INTEGERS:
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value
