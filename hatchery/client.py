"""Drive and watch a run from Python: the client `hatchery watch|pause|resume|stop` use.

    from hatchery.client import RunClient

    with RunClient("optimizer.ml:50051", token=os.environ["HATCHERY_CONTROL_TOKEN"]) as run:
        for event in run.watch():          # every generation, in order, exactly once
            if event.row:
                print(event.generation, event.row["reward_mean"], event.row["heldout_reward"])
        print(event.state)                 # "finished" or "failed"

The stream reconnects by itself (a network blip, an optimizer restarted by its
StatefulSet) from the generation after the last one it delivered, so a watcher
misses nothing and sees nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from hatchery.service.prompts import struct_values
from hatchery.service.run_state import state_name
from hatchery.service.security import Tls, service_token
from hatchery.service.serving import channel
from hatchery.v1 import optimizer_pb2 as pb
from hatchery.v1 import optimizer_pb2_grpc

RECONNECTABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class Event:
    """One event of a watched run: a generation's metrics row, or the run's end."""

    generation: int
    row: dict | None  # the metrics.jsonl row (docs/metrics.md); None on the last event
    evaluation: pb.HeldOutEvaluation | None  # the held-out evaluation the generation began with
    state: str  # "finished" or "failed" on the last event, else ""
    failure: str = ""

    @classmethod
    def of(cls, event: pb.RunEvent) -> Event:
        return cls(event.generation, struct_values(event.row) if event.HasField("row") else None,
                   event.evaluation if event.HasField("evaluation") else None, state_name(event.state),
                   event.failure)

    @property
    def last(self) -> bool:
        return self.row is None


def default_token(control: bool) -> str:
    """$HATCHERY_CONTROL_TOKEN; for reading alone, the workers' token will do as well."""
    return service_token("control") or ("" if control else service_token("optimizer"))


class RunClient:
    """A run's optimizer, over gRPC: status, watch, pause, resume, stop."""

    def __init__(self, address: str, token: str | None = None, tls: Tls | None = None, timeout: float = 30.0):
        """`token`: None reads $HATCHERY_CONTROL_TOKEN (or, lacking it, $HATCHERY_OPTIMIZER_TOKEN)."""
        self._channel = channel(address, tls, default_token(control=False) if token is None else token)
        self._stub = optimizer_pb2_grpc.OptimizerServiceStub(self._channel)
        self.timeout = timeout

    def __enter__(self) -> RunClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def status(self) -> pb.GetStatusResponse:
        return self._stub.GetStatus(pb.GetStatusRequest(), timeout=self.timeout)

    def pause(self) -> str:
        """No lease goes out until resume(); returns the run's state."""
        return state_name(self._stub.PauseRun(pb.PauseRunRequest(), timeout=self.timeout).state)

    def resume(self) -> str:
        return state_name(self._stub.ResumeRun(pb.ResumeRunRequest(), timeout=self.timeout).state)

    def stop(self) -> str:
        """Ends the run after the generation in flight, as if its budget ran out."""
        return state_name(self._stub.StopRun(pb.StopRunRequest(), timeout=self.timeout).state)

    def watch(self, from_generation: int = 0, reconnect_for: float = 600.0,
              retry_seconds: float = 1.0) -> Iterator[Event]:
        """Every generation from `from_generation` on, then the last event; reconnects for up
        to `reconnect_for` seconds of outage, resuming after the last generation delivered."""
        following, down_since = from_generation, None
        while True:
            try:
                for raw in self._stub.WatchRun(pb.WatchRunRequest(from_generation=following)):
                    down_since = None
                    event = Event.of(raw)
                    yield event
                    if event.last:
                        return
                    following = event.generation + 1
            except grpc.RpcError as err:
                if err.code() not in RECONNECTABLE:
                    raise
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect_for:
                    raise
            time.sleep(retry_seconds)  # the stream ended early or failed: the optimizer is restarting


def control_client(address: str, tls: Tls | None = None) -> RunClient:
    """A RunClient that sends $HATCHERY_CONTROL_TOKEN alone (the workers' token cannot control a run)."""
    return RunClient(address, token=default_token(control=True), tls=tls)

