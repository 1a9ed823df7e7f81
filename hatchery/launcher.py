"""`hatchery run`: the three services as separate processes on loopback.

Each service is started exactly as a user or the Helm chart would start it,
with a port file to learn its bound port, so nothing here is a shortcut.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hatchery.core.config import RunConfig

HOST = "127.0.0.1"  # local runs bind loopback only


@dataclass
class MemoryWatch:
    """Peak resident memory of each process and of their sum, sampled from /proc."""

    procs: dict[str, subprocess.Popen]
    peak: dict[str, int] = field(default_factory=dict)
    peak_total: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            now = {name: self.rss(p.pid) for name, p in self.procs.items()}
            for name, value in now.items():
                self.peak[name] = max(self.peak.get(name, 0), value)
            self.peak_total = max(self.peak_total, sum(now.values()))

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def stop(self) -> str:
        self._stop.set()
        parts = ", ".join(f"{name} {v / 2**30:.2f}" for name, v in self.peak.items())
        return f"peak resident memory (GiB): {parts}; all together {self.peak_total / 2**30:.2f}"


def spawn_service(args: list[str], log_path: Path | None = None, env: dict[str, str] | None = None,
                  errors_here: bool = False) -> subprocess.Popen:
    """`hatchery ARGS` as a child process, its output into `log_path` (with `errors_here`, its
    stderr still on this terminal); env adds to (not replaces) this environment."""
    out = open(log_path, "w") if log_path else None
    return subprocess.Popen([sys.executable, "-m", "hatchery.cli", *args], stdout=out or None,
                            stderr=None if errors_here or not out else subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def _show_progress(address: str) -> None:
    """The live display of `hatchery watch`, for the run this process started (in a terminal)."""
    from hatchery.client import RunClient
    from hatchery.run_display import RunDisplay

    with contextlib.suppress(Exception), RunClient(address) as run:  # the display must never end the run
        status = run.status()
        display = RunDisplay(sys.stdout, status.total_generations, status.time_budget_seconds, live=True)
        for event in run.watch(reconnect_for=5.0):
            display.show(event)


def wait_for_port(path: Path, proc: subprocess.Popen, name: str, timeout: float = 600.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return int(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} service exited with code {proc.returncode} before it started")
        time.sleep(0.1)
    raise TimeoutError(f"the {name} service did not start within {timeout:.0f} s")


@contextlib.contextmanager
def loopback_service(args: list[str], folder: Path, name: str, timeout: float = 300.0) -> Iterator[str]:
    """`hatchery ARGS` on 127.0.0.1 with a free port, logging to folder/NAME.log; yields its
    address and stops it on leaving."""
    port_file = folder / f"{name}.port"
    proc = spawn_service([*args, "--host", HOST, "--port", "0", "--port-file", str(port_file)],
                         folder / f"{name}.log")
    try:
        yield f"{HOST}:{wait_for_port(port_file, proc, name, timeout)}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _supervise(procs: dict[str, subprocess.Popen], run_dir: Path) -> int:
    """Waits for the optimizer to finish; a service that dies first ends the run with an error
    (a worker exits 0 on its own once it has heard that the run is over)."""
    while True:
        code = procs["optimizer"].poll()
        if code is not None:
            if code == 0:
                with contextlib.suppress(subprocess.TimeoutExpired):  # the finally below stops it
                    procs["inference"].wait(timeout=60)
            else:
                print(f"hatchery: the optimizer service exited with code {code}; "
                      f"continue with: hatchery run --resume {run_dir}", file=sys.stderr, flush=True)
            return code
        for name, proc in procs.items():
            if proc.poll() is not None and not (name == "inference" and proc.returncode == 0):
                print(f"hatchery: the {name} service exited with code {proc.returncode}; stopping the run",
                      file=sys.stderr, flush=True)
                return 1
        time.sleep(0.2)


def run_local(cfg: RunConfig, resume: bool = False, device: str = "auto") -> int:
    """Starts reward, optimizer and one inference worker; returns the optimizer's exit code.
    With resume, the optimizer continues the run in cfg.run_dir. SIGTERM (kill, a container
    stop) ends it as Ctrl-C does: its services are stopped, never left running on their own."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    run_dir = Path(cfg.run_dir)
    ports = run_dir / "ports"
    ports.mkdir(parents=True, exist_ok=True)
    for stale in ports.glob("*"):
        stale.unlink()
    if resume:
        run_args = ["--resume", str(run_dir)]
    else:
        config_path = run_dir / "run-config.yaml"
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        run_args = ["--config", str(config_path)]
    common = ["--host", HOST, "--port", "0"]
    reward_args = []
    if cfg.reward.graders:
        graders_path = run_dir / "graders.yaml"
        graders_path.write_text(yaml.safe_dump(cfg.reward.graders, sort_keys=False))
        reward_args = ["--graders", str(graders_path)]
    procs: dict[str, subprocess.Popen] = {}
    watch = MemoryWatch(procs)
    try:
        procs["reward"] = spawn_service(["reward", *common, *reward_args, "--port-file", str(ports / "reward")],
                                        run_dir / "reward.log")
        live = sys.stdout.isatty()  # a terminal gets the live display; the optimizer's lines go to its log
        procs["optimizer"] = spawn_service(["optimizer", *run_args, *common, "--port-file", str(ports / "optimizer")],
                                           run_dir / "optimizer.log" if live else None, errors_here=True)
        watch.start()
        try:
            reward_port = wait_for_port(ports / "reward", procs["reward"], "reward")
            optimizer_port = wait_for_port(ports / "optimizer", procs["optimizer"], "optimizer")
        except (RuntimeError, TimeoutError) as err:  # the service has said why, in its log or above
            print(f"hatchery: {err} (the services' logs are in {run_dir})", file=sys.stderr, flush=True)
            return 1
        if live:
            threading.Thread(target=_show_progress, args=(f"{HOST}:{optimizer_port}",), daemon=True).start()
        procs["inference"] = spawn_service(["inference", *common, "--port-file", str(ports / "inference"),
                                            "--optimizer-address", f"{HOST}:{optimizer_port}",
                                            "--reward-address", f"{HOST}:{reward_port}", "--worker-id", "local-0",
                                            "--device", device],
                                           run_dir / "inference.log")
        code = _supervise(procs, run_dir)
        if live and code == 0:
            print(f"done: model in {run_dir / 'model'}, plot {run_dir / 'rewards.png'}, "
                  f"log {run_dir / 'optimizer.log'}", flush=True)
        return code
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        memory = watch.stop()
        print(memory, flush=True)
        with contextlib.suppress(OSError):  # a full disk has already been reported by the optimizer
            (run_dir / "memory.txt").write_text(memory + "\n")


