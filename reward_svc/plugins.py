"""Python reward plug-ins: a TRL-style function, run in worker processes.

The function is named `module:function` and called as TRL calls reward
functions: `fn(prompts=[...], completions=[...], reference=[...], **columns)`,
where each column of the samples is a keyword (None where a sample lacks it),
with its type when the samples carry typed columns (a dataset's: numbers stay
numbers, lists stay lists), as text otherwise; a prompt given to the model as a
conversation is its list of {role, content} messages, as TRL passes it. It
returns one float, or None for "not applicable", per completion, and may be
`async`. Each call runs in a separate process with a memory limit and a time
limit, confined to reading its own folder (see confinement.py), so a grader that
hangs, leaks, crashes or reaches outside costs the samples it was scoring, never
the reward service: a call over several samples that fails as a whole is retried
sample by sample, so only the culprit is marked.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import multiprocessing
import os
import queue
import resource
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from hatchery.service.prompts import model_input, struct_values
from hatchery.v1 import reward_pb2
from reward_svc.confinement import confine_by_hook, confine_by_kernel, scrub_environment
from reward_svc.graders import Outcome, Status

log = logging.getLogger("hatchery.reward.plugins")
START_TIMEOUT_SECONDS = 60.0


def _keywords(samples: Sequence[reward_pb2.Sample]) -> dict[str, list[Any]]:
    """The plug-in's keyword arguments: one list per column, typed where the samples are."""
    rows = [struct_values(s.columns) if s.HasField("columns") else dict(s.metadata) for s in samples]
    keys = sorted({k for row in rows for k in row})
    return {"prompts": [model_input(s) for s in samples], "completions": [s.completion for s in samples],
            **{k: [row.get(k) for row in rows] for k in keys}, "reference": [s.reference for s in samples]}


def _child(conn: Connection, function: str, path: str, memory_mb: int, confined: bool) -> None:
    """The worker process: import the function once, confine itself, then score batches until told to stop."""
    layers: tuple[str, ...] = ()
    if confined:  # before the plug-in's module runs a line
        scrub_environment()
        if path:  # its folder is known: the kernel layers hold its top-level code too
            layers = confine_by_kernel(path)
    if memory_mb:
        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if path:
        sys.path.insert(0, path)
    try:
        module_name, _, attr = function.partition(":")
        module = importlib.import_module(module_name)
        fn = getattr(module, attr)
        if not callable(fn):
            raise TypeError(f"{function} is a {type(fn).__name__}, not a function")
    except BaseException as err:  # noqa: BLE001 - report whatever stopped the import to the parent
        conn.send(("error", f"cannot load {function}: {type(err).__name__}: {err}"))
        return
    if confined:
        folder = path or os.path.dirname(module.__file__ or ".")
        layers = layers or confine_by_kernel(folder)
        confine_by_hook(folder)
    conn.send(("ready", layers))
    while True:
        try:
            kwargs = conn.recv()
        except EOFError:
            return
        try:
            result = fn(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            conn.send(("ok", list(result)))
        except BaseException as err:  # noqa: BLE001 - MemoryError and SystemExit included
            conn.send(("error", f"{type(err).__name__}: {err}"))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class _Process:
    """One worker process and its end of the pipe."""

    def __init__(self, function: str, path: str, memory_mb: int, confined: bool):
        ctx = multiprocessing.get_context("spawn")  # not fork: the gRPC server has threads
        self._kill_lock, self._killed = threading.Lock(), False
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child, function, path, memory_mb, confined), daemon=True,
                                name=f"reward-plugin {function}")
        self.proc.start()
        child.close()
        if not self.conn.poll(START_TIMEOUT_SECONDS):
            self.kill()
            raise RuntimeError(f"plug-in {function} did not load within {START_TIMEOUT_SECONDS:.0f} s")
        try:
            kind, message = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"plug-in {function} exited while loading "
                               f"(code {self.proc.exitcode}; out of memory?)") from None
        if kind != "ready":
            self.kill()
            raise RuntimeError(message)
        self.kernel_layers: tuple[str, ...] = tuple(message)  # what the kernel holds it by, besides the hook

    def call(self, kwargs: dict[str, Any], timeout: float) -> tuple[str, Any]:
        """("ok", values), ("error", message), ("timeout", message) or ("crashed", message)."""
        self.conn.send(kwargs)
        if not self.conn.poll(timeout):
            return "timeout", f"no answer within {timeout:g} s"
        try:
            return self.conn.recv()
        except (EOFError, ConnectionResetError):
            self.proc.join(1.0)
            return "crashed", f"the plug-in process exited with code {self.proc.exitcode}"

    def kill(self) -> None:
        """Idempotent and safe from two threads at once (a stopping service and the call in flight
        that its kill broke): the pipe is closed once, so no thread closes a descriptor twice."""
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
            self.proc.kill()
            self.proc.join()
            self.conn.close()


class ProcessGrader:
    """A BatchGrader over a pool of worker processes that each host `function`: a call past
    `timeout_seconds` kills its process and marks its samples TIMED_OUT, and a call that fails
    as a whole is retried sample by sample, so only the culprit is marked. Subclasses say how
    samples become the function's keywords and what it returns becomes outcomes."""

    sub_score_names: tuple[str, ...] = ()

    def __init__(self, function: str, path: str, timeout_seconds: float, memory_mb: int, processes: int,
                 batch_size: int, confined: bool, start_now: bool):
        self.function, self.path, self.memory_mb, self.confined = function, path, memory_mb, confined
        self.label = function  # what messages call it
        self.timeout_seconds, self.batch_size = timeout_seconds, batch_size
        self._idle: queue.Queue[_Process | None] = queue.Queue()  # None: a process to start on first use
        started = [_Process(function, path, memory_mb, confined) for _ in range(processes if start_now else 0)]
        for proc in started:  # load errors are raised here, when started now
            self._idle.put(proc)
        for _ in range(processes - len(started)):
            self._idle.put(None)
        self._alive: set[_Process] = set(started)  # every process running, idle or in a call
        self._closed = False
        self.kernel_layers = started[0].kernel_layers if started else ()
        self._pool = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="reward-process")
        self._processes = processes

    def _request(self, samples: Sequence[reward_pb2.Sample]) -> dict[str, Any]:
        raise NotImplementedError

    def _outcomes(self, value: list, samples: Sequence[reward_pb2.Sample]) -> list[Outcome]:
        raise NotImplementedError

    def score(self, samples: Sequence[reward_pb2.Sample]) -> list[Outcome]:
        chunks = [samples[i:i + self.batch_size] for i in range(0, len(samples), self.batch_size)]
        return [o for chunk in self._pool.map(self._score_chunk, chunks) for o in chunk]

    def _score_chunk(self, samples: Sequence[reward_pb2.Sample]) -> list[Outcome]:
        """One call for the chunk; if the call fails as a whole, one call per sample."""
        outcomes = self._call(samples)
        if len(samples) > 1 and all(o.status in (Status.FAILED, Status.TIMED_OUT) for o in outcomes):
            return [self._call([s])[0] for s in samples]
        return outcomes

    def _call(self, samples: Sequence[reward_pb2.Sample]) -> list[Outcome]:
        kwargs = self._request(samples)
        proc = self._idle.get()
        try:
            if self._closed:
                raise RuntimeError("the reward service is stopping")
            if proc is None:
                proc = _Process(self.function, self.path, self.memory_mb, self.confined)
                self._alive.add(proc)
            kind, value = proc.call(kwargs, self.timeout_seconds)
        except (RuntimeError, OSError) as err:  # could not restart, or the pipe broke
            kind, value = "crashed", str(err)
        if kind in ("timeout", "crashed") and proc is not None:
            if not self._closed:
                log.warning("%s: %s; its process will be restarted", self.label, value)
            self._kill(proc)
            proc = None
        self._idle.put(proc)
        if kind == "timeout":
            return [Outcome.failed(f"{self.label}: {value}", Status.TIMED_OUT)] * len(samples)
        if kind != "ok":
            return [Outcome.failed(f"{self.label}: {value}")] * len(samples)
        if len(value) != len(samples):
            return [Outcome.failed(f"{self.label} returned {len(value)} scores for {len(samples)} samples")
                    ] * len(samples)
        return self._outcomes(value, samples)

    def _kill(self, proc: _Process) -> None:
        self._alive.discard(proc)
        proc.kill()

    def close(self) -> None:
        """Stops every worker process now, calls in flight included: a stopping service waits for no grader."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(self._alive):
            self._kill(proc)


class PluginGrader(ProcessGrader):
    """A Python plug-in function, TRL-style, over a pool of confined worker processes."""

    def __init__(self, function: str, path: str = "", timeout_seconds: float = 10.0, memory_mb: int = 2048,
                 processes: int = 2, batch_size: int = 16, confined: bool = True):
        if ":" not in function:
            raise ValueError(f"plug-in function must be 'module:function', got {function!r}")
        super().__init__(function, path, timeout_seconds, memory_mb, processes, batch_size, confined, start_now=True)
        if confined:
            log.info("plug-in %s: confined by an audit hook%s", function,
                     "".join(f" and {layer}" for layer in self.kernel_layers) or " alone (no kernel layer here)")

    def _request(self, samples: Sequence[reward_pb2.Sample]) -> dict[str, Any]:
        return _keywords(samples)

    def _outcomes(self, value: list, samples: Sequence[reward_pb2.Sample]) -> list[Outcome]:
        return [Outcome.failed(f"{self.function} returned None", Status.NOT_APPLICABLE) if v is None
                else Outcome.of_score(v) for v in value]
