"""A run's state (hatchery.v1.RunState) as people read it: RUN_STATE_PAUSED -> "paused"."""

from __future__ import annotations

from hatchery.v1 import optimizer_pb2 as pb


def state_name(state: pb.RunState) -> str:
    """"" for an optimizer that predates run states."""
    return "" if state == pb.RUN_STATE_UNSPECIFIED else pb.RunState.Name(state).removeprefix("RUN_STATE_").lower()
