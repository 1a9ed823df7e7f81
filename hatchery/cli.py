"""The `hatchery` command line: one small handler per verb, looked up in VERBS.

Each verb declares its flags, whether they may also come from the environment
(`--some-flag` from `$HATCHERY_SOME_FLAG`, flags win) and whether it takes the TLS
flags; main() parses, checks TLS and calls the handler. Handlers import what they
need when they run, so `hatchery health` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "HATCHERY_"


class HatcheryParser(argparse.ArgumentParser):
    """An ArgumentParser whose flags, when `env_prefix` is set, default to $<PREFIX><DEST>."""

    def __init__(self, *args: Any, env_prefix: str = "", **kwargs: Any):
        self.env_prefix = env_prefix
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        value = os.environ.get(f"{self.env_prefix}{action.dest.upper()}") if self.env_prefix else None
        if value is not None and action.dest != "help":
            if kwargs.get("action") == "store_true":
                action.default = value.strip().lower() in ("1", "true", "yes")
            else:
                action.default = action.type(value) if action.type else value
            action.required = False
        return action


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _needs(verb: str, *modules: str) -> None:
    """Stops with what to install when a tool's optional dependencies are missing."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SystemExit(f"hatchery {verb}: needs {', '.join(missing)}: pip install 'hatchery[bench]'")


def _ints(csv: str) -> list[int]:
    return [int(x) for x in csv.split(",") if x]


def _print_json(result: dict, out: str | None) -> int:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0


# -- flags --------------------------------------------------------------------------


def _server_flags(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 inside a container)")
    p.add_argument("--port", type=int, default=default_port, help="port to bind; 0 picks a free one")
    p.add_argument("--port-file", default=None, help="write the bound port to this file once serving")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port; 0: off")


def _tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default="", metavar="PEM", help="this process's certificate chain (serve with TLS)")
    p.add_argument("--tls-key", default="", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--tls-ca", default="", metavar="PEM",
                   help="CA that signs the peers' certificates (connect with TLS; verify clients under mTLS)")
    p.add_argument("--tls-require-client-cert", action="store_true",
                   help="mutual TLS: refuse clients without a certificate signed by --tls-ca")


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="run config YAML (default: the embedded default)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR where it stopped, with the config it was started with")
    p.add_argument("--device", default="auto", help="the worker's: auto (the first CUDA device, else the CPU), "
                                                    "cpu, cuda or cuda:N")


def _optimizer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="run config YAML (default: the embedded default)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    p.add_argument("--resume-if-exists", action="store_true",
                   help="with --config: resume when its run_dir already holds that run (a restarted pod), "
                        "start it otherwise")
    p.add_argument("--keep-serving", action="store_true",
                   help="after the run ends, keep answering status and watch calls until stopped (a pod that "
                        "exits is restarted)")
    _server_flags(p, 50051)


def _inference_flags(p: argparse.ArgumentParser) -> None:
    _server_flags(p, 50052)
    p.add_argument("--optimizer-address", required=True, help="host:port of the optimizer service")
    p.add_argument("--reward-address", default="",
                   help="host:port of the reward service, for runs whose config names no reward.services")
    p.add_argument("--worker-id", default="", help="unique worker name (default: host name and port)")
    p.add_argument("--fetch-files", "--fetch-checkpoints", dest="fetch_files", action="store_true",
                   help="stream the start model and checkpoints over gRPC even when the optimizer's paths "
                        "are visible here")
    p.add_argument("--device", default="auto", help="auto (the first CUDA device, else the CPU), cpu, cuda or cuda:N")


def _reward_flags(p: argparse.ArgumentParser) -> None:
    _server_flags(p, 50053)
    p.add_argument("--graders", default=None, metavar="FILE",
                   help="YAML mapping of grader name to spec (regex, combined, python, openrlhf_http)")
    p.add_argument("--default-grader", default="first_integer", help="grader used when a request names none")


def _health_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="host:port of any Hatchery service")
    p.add_argument("--service", default="", help="the service name to ask about; empty: the server as a whole")


def _conformance_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="host:port of the reward service to check")
    p.add_argument("--grader", default="", help="the grader the rules score with; default: the server's default")
    p.add_argument("--token-env", default="", metavar="VAR",
                   help="an environment variable holding the service's bearer token (then the auth rule runs)")
    p.add_argument("--samples", default="", metavar="JSONL",
                   help="your own samples (JSON lines of prompt, completion, reference, metadata), added to the kit's")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds each call may take")
    p.add_argument("--json", action="store_true", help="the findings as JSON")


def _status_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="host:port of the optimizer")


def _watch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="host:port of the optimizer")
    p.add_argument("--from-generation", type=int, default=0, help="the first generation to show (0: the whole run)")
    p.add_argument("--json", action="store_true", help="one JSON object per event instead of the display")


def _control_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="host:port of the optimizer")


def _bench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="tiny,smollm2",
                   help="comma-separated: tiny, smollm2, qwen2.5-0.5b-shape, qwen2.5-1.5b-shape (random weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for the random models (default: SmolLM2's)")
    p.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    p.add_argument("--batches", default="8,32,128", help="rows per batch: members x prompts per member")
    p.add_argument("--prompts-per-member", default="1,4", help="comma-separated; 4 is a run's default")
    p.add_argument("--ranks", default="1,2,4,8")
    p.add_argument("--lora-ranks", default="8,16", help="adapter ranks of a LoRA-space population (es.space: lora); "
                                                       "empty: none")
    p.add_argument("--naive-populations", default="8,16,32,64",
                   help="populations at which naive full-rank ES is compared with EGGROLL (lowest rank)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="unperturbed/eggroll pairs per batch and rank")
    p.add_argument("--naive-repeats", type=int, default=1, help="naive/eggroll pairs per population")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--plots", default=None, help="write bench-throughput.png and bench-naive.png here")


def _bench_reward_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the JSON here")


def _bench_sync_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", default="256,512,1024", help="hidden sizes of random 4-layer Llamas")
    p.add_argument("--no-smollm2", action="store_true", help="leave the embedded SmolLM2 out")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the JSON here")


def _bench_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="generated word problems in the Parquet file")
    p.add_argument("--model", default="", help="default: the embedded SmolLM2")
    p.add_argument("--out", default=None, help="also write the JSON here")


def _bench_size_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="smollm2,qwen2.5-0.5b-shape,qwen2.5-1.5b-shape",
                   help="comma-separated: smollm2, qwen2.5-0.5b-shape, qwen2.5-1.5b-shape, or model folders")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    p.add_argument("--out", default=None, help="also write the JSON here")


def _bench_grpo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="JSON lines, one per held-out evaluation")
    p.add_argument("--model", default="embedded:smollm2-135m-instruct", help="a local Hugging Face folder")
    p.add_argument("--task", default="arith")
    p.add_argument("--seed", type=int, default=0, help="the trainer's seed")
    p.add_argument("--task-seed", type=int, default=0, help="the train / held-out split, as a run's task.seed")
    p.add_argument("--heldout-size", type=int, default=128)
    p.add_argument("--budget-seconds", type=float, default=720.0, help="of training time, evaluations excluded")
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--eval-every", type=int, default=2, help="steps between held-out evaluations")
    p.add_argument("--compare-with", default=None,
                   help="a Hatchery run dir or its metrics.jsonl: plot its held-out curve too")
    p.add_argument("--plot", default=None, help="PNG of held-out reward against training time")


def _breakdown_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--out", default=None, help="also write the JSON here")


def _ablation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("variants", nargs="+", metavar="NAME=RUN[,RUN...]",
                   help="a variant's name and its runs, one per seed: run dirs or bench-grpo JSON lines")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--plot", default=None, help="PNG of every run's held-out reward against training time")


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--format", choices=["hf", "peft-lora"], default="hf")
    p.add_argument("--generation", type=int, default=None, help="after this many updates (default: all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--rank", type=int, default=None, help="peft-lora: this rank for every matrix")
    size.add_argument("--energy", type=float, default=None,
                      help="peft-lora: per matrix, the smallest rank keeping this share of the change's energy "
                           "(default 0.99); a lora-space run's adapter is written as it is, without either")


def _eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a Hugging Face folder, a PEFT adapter folder, or embedded:smollm2-135m-instruct")
    p.add_argument("--task", default="arith")
    p.add_argument("--seed", type=int, default=0, help="the task seed (the run's task.seed)")
    p.add_argument("--heldout-size", type=int, default=128)
    p.add_argument("--reward-address", default="", help="a reward service; default: start one")
    p.add_argument("--grader", default="", help="default: the task's")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-new-tokens", type=int, default=0, help="the run's task.max_new_tokens; 0: the task's")
    data = p.add_argument_group("a data file instead of --task (every row scored, read as a run reads task.heldout)")
    data.add_argument("--data", default="", help="a .jsonl .json .parquet .csv .arrow file, a save_to_disk folder "
                                                 "or a glob")
    data.add_argument("--prompt-key", default="prompt", help="the run's task.prompt_key")
    data.add_argument("--reference-key", default="", help="the run's task.reference_key")
    data.add_argument("--system-prompt", default="", help="the run's task.system_prompt")


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["preview"], help="preview: row counts, prompts as the model sees them, "
                                                       "their columns and lengths in tokens")
    p.add_argument("config", help="run config YAML")
    p.add_argument("-n", "--examples", type=int, default=3, help="prompts to show")


def _fetch_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML")


def _loadtest_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--reward-clients", type=int, default=32)
    p.add_argument("--batch", type=int, default=16, help="samples per Score request")
    p.add_argument("--workers", type=int, default=32, help="simulated workers holding and returning leases")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--out", default=None, help="also write the JSON here")


# -- handlers -----------------------------------------------------------------------


def _run_config(args: argparse.Namespace):
    """The run's config from --config/CONFIG, --resume or --resume-if-exists; ConfigError or OSError."""
    from hatchery.core.config import ConfigError, load_config, resumed_config, start_or_resume, with_fresh_run_dir

    if args.resume and args.config:
        raise ConfigError("give a config or --resume RUN_DIR, not both")
    if args.resume:
        return resumed_config(args.resume)
    if getattr(args, "resume_if_exists", False):
        return start_or_resume(load_config(args.config))
    return with_fresh_run_dir(load_config(args.config))


def _with_run_config(handler: Callable[[argparse.Namespace, Any, Any], int]) -> Callable[..., int]:
    """A handler that receives the run's config, or exits 2 naming what is wrong with it."""

    def wrapped(args: argparse.Namespace, tls: Any) -> int:
        from hatchery.core.config import ConfigError

        try:
            cfg = _run_config(args)
        except (ConfigError, OSError) as err:
            print(f"hatchery: bad config: {err}", file=sys.stderr)
            return 2
        return handler(args, tls, cfg)

    return wrapped


@_with_run_config
def _run(args: argparse.Namespace, tls: Any, cfg: Any) -> int:
    from hatchery.core.model import check_device_dtype, pick_device
    from hatchery.launcher import run_local

    try:  # before any service starts
        check_device_dtype(pick_device(args.device), cfg.model.dtype)
    except ValueError as err:
        print(f"hatchery run: {err}", file=sys.stderr)
        return 2
    return run_local(cfg, resume=bool(args.resume), device=args.device)


@_with_run_config
def _optimizer(args: argparse.Namespace, tls: Any, cfg: Any) -> int:
    _quiet_libraries()
    from optimizer_svc.server import serve

    try:
        return serve(cfg, args.host, args.port, args.port_file, tls, args.metrics_port,
                     keep_serving=args.keep_serving)
    except OSError as err:  # the run's files cannot be written (a full disk, a read-only volume)
        print(f"hatchery optimizer: {err}", file=sys.stderr)
        return 1


def _inference(args: argparse.Namespace, tls: Any) -> int:
    _quiet_libraries()
    from inference_svc.server import serve

    try:
        serve(args.host, args.port, args.port_file, args.optimizer_address, args.reward_address, args.worker_id,
              args.fetch_files, tls, args.metrics_port, args.device)
    except ValueError as err:  # a device this machine does not have, or cannot run the run's dtype on
        print(f"hatchery inference: {err}", file=sys.stderr)
        return 2
    return 0


def _reward(args: argparse.Namespace, tls: Any) -> int:
    from reward_svc.server import serve

    try:
        serve(args.host, args.port, args.port_file, args.default_grader, args.graders, tls, args.metrics_port)
    except (ValueError, RuntimeError, OSError) as err:  # a bad graders file or a plug-in that will not load
        print(f"hatchery reward: {err}", file=sys.stderr)
        return 2
    return 0


def _health(args: argparse.Namespace, tls: Any) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from hatchery.service.serving import channel

    reply = health_pb2_grpc.HealthStub(channel(args.address, tls)).Check(
        health_pb2.HealthCheckRequest(service=args.service), timeout=10)
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _conformance(args: argparse.Namespace, tls: Any) -> int:
    from hatchery.conformance import Probe, check, read_samples

    if args.token_env and args.token_env not in os.environ:
        print(f"hatchery conformance: --token-env: ${args.token_env} is not set", file=sys.stderr)
        return 2
    try:
        samples = read_samples(args.samples) if args.samples else []
    except (OSError, ValueError) as err:
        print(f"hatchery conformance: --samples: {err}", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env, "") if args.token_env else ""
    report = check(Probe(args.address, args.grader, token, tls, args.timeout, samples))
    print(report.to_json() if args.json else "\n".join(report.lines()))
    return 1 if report.failed else 0


def _status(args: argparse.Namespace, tls: Any) -> int:
    from google.protobuf import json_format

    from hatchery.service.security import service_token
    from hatchery.service.serving import channel
    from hatchery.v1 import optimizer_pb2, optimizer_pb2_grpc

    stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(args.address, tls, service_token("optimizer")))
    status = stub.GetStatus(optimizer_pb2.GetStatusRequest(), timeout=10)
    print(json.dumps(json_format.MessageToDict(status, preserving_proto_field_name=True), indent=2))
    return 0


def _watch(args: argparse.Namespace, tls: Any) -> int:
    import grpc

    from hatchery.client import RunClient
    from hatchery.run_display import RunDisplay

    try:
        with RunClient(args.address, tls=tls) as run:
            status = run.status()
            display = RunDisplay(sys.stdout, status.total_generations, status.time_budget_seconds)
            for event in run.watch(args.from_generation):
                if args.json:
                    print(json.dumps({"generation": event.generation, "row": event.row, "state": event.state,
                                      "failure": event.failure}), flush=True)
                else:
                    display.show(event)
    except grpc.RpcError as err:
        print(f"hatchery watch: {args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0 if event.state == "finished" else 1


def _control(action: str) -> Callable[[argparse.Namespace, Any], int]:
    """The handler of `hatchery pause|resume|stop ADDRESS`."""

    def handler(args: argparse.Namespace, tls: Any) -> int:
        import grpc

        from hatchery.client import control_client

        try:
            with control_client(args.address, tls) as run:
                state = getattr(run, action)()
        except grpc.RpcError as err:
            print(f"hatchery {action}: {args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        print(f"the run is {state}")
        return 0

    return handler


def _bench(args: argparse.Namespace, tls: Any) -> int:
    _needs("bench", "hatchery.bench")
    from hatchery.bench.throughput import plot_bench, run_bench

    report = run_bench(args.models.split(","), args.dtypes.split(","), _ints(args.batches), _ints(args.ranks),
                       _ints(args.naive_populations), args.new_tokens, args.repeats, args.naive_repeats,
                       _ints(args.prompts_per_member), args.device, args.tokenizer,
                       _ints(args.lora_ranks) if args.lora_ranks else ())
    if args.plots:
        plot_bench(report, Path(args.plots))
    return _print_json(report, args.out)


def _bench_sync(args: argparse.Namespace, tls: Any) -> int:
    _needs("bench-sync", "hatchery.bench")
    from hatchery.bench.sync import run_sync_bench

    _quiet_libraries()
    return _print_json(run_sync_bench(tuple(_ints(args.widths)), not args.no_smollm2, args.generations), args.out)


def _bench_data(args: argparse.Namespace, tls: Any) -> int:
    _needs("bench-data", "hatchery.bench")
    from hatchery.bench.data import run_data_bench

    return _print_json(run_data_bench(args.rows, args.model), args.out)


def _bench_size(args: argparse.Namespace, tls: Any) -> int:
    _needs("bench-size", "hatchery.bench")
    from hatchery.bench.sizing import run_size_bench

    return _print_json(run_size_bench(tuple(args.models.split(",")), tuple(args.dtypes.split(","))), args.out)


def _bench_grpo(args: argparse.Namespace, tls: Any) -> int:
    _needs("bench-grpo", "hatchery.bench", "trl")
    from hatchery.bench.grpo import run_grpo
    from hatchery.core.plot import plot_heldout_against_time
    from hatchery.core.run_metrics import heldout_curve, metrics_rows

    rows = run_grpo(Path(args.out), args.model, args.task, args.seed, args.heldout_size, args.budget_seconds,
                    args.max_steps, args.lr, eval_every=args.eval_every, task_seed=args.task_seed)
    if args.plot:
        curves = {"GRPO (TRL)": [(r["seconds"], r["heldout_reward"], r["stderr"]) for r in rows]}
        if args.compare_with:
            curves["Hatchery ES"] = heldout_curve(metrics_rows(args.compare_with))
        plot_heldout_against_time(curves, Path(args.plot), f"{args.task}: held-out reward")
    return 0


def _breakdown(args: argparse.Namespace, tls: Any) -> int:
    _needs("breakdown", "hatchery.bench")
    from hatchery.bench.breakdown import time_breakdown

    return _print_json(time_breakdown(args.run_dir), args.out)


def _ablation(args: argparse.Namespace, tls: Any) -> int:
    _needs("ablation", "hatchery.bench")
    from hatchery.bench.ablation import ablation, parse_variants, plot_ablation

    try:
        report = ablation(parse_variants(args.variants))
    except (ValueError, OSError) as err:
        print(f"hatchery ablation: {err}", file=sys.stderr)
        return 2
    if args.plot:
        plot_ablation(report, Path(args.plot), "held-out reward against training time")
    return _print_json(report, args.out)


def _export(args: argparse.Namespace, tls: Any) -> int:
    from hatchery.export import export_hf, export_peft_lora

    _quiet_libraries()
    try:
        if args.format == "hf":
            report = export_hf(args.run_dir, args.out, args.generation)
        else:
            report = export_peft_lora(args.run_dir, args.out, args.generation, args.rank, args.energy)
    except (ValueError, OSError) as err:
        print(f"hatchery export: {err}", file=sys.stderr)
        return 2
    report.pop("matrices", None)  # per matrix: in OUT/hatchery-export.json
    return _print_json(report, None)


def _eval(args: argparse.Namespace, tls: Any) -> int:
    from hatchery.evaluation import DataFile, heldout_reward

    _quiet_libraries()
    data = DataFile(args.data, args.prompt_key, args.reference_key, args.system_prompt) if args.data else None
    try:
        result = heldout_reward(args.model, args.task, args.seed, args.heldout_size, args.reward_address,
                                args.grader, args.dtype, args.max_new_tokens, data)
    except (ValueError, OSError) as err:  # a ConfigError too
        print(f"hatchery eval: {err}", file=sys.stderr)
        return 2
    return _print_json(result, None)


def _data(args: argparse.Namespace, tls: Any) -> int:
    from hatchery.core.config import ConfigError, load_config
    from hatchery.data_preview import preview

    _quiet_libraries()
    try:
        return _print_json(preview(load_config(args.config), args.examples), None)
    except (ConfigError, OSError) as err:
        print(f"hatchery: bad config: {err}", file=sys.stderr)
        return 2


def _fetch_model(args: argparse.Namespace, tls: Any) -> int:
    from hatchery.core.config import ConfigError, load_config
    from hatchery.core.model import resolve_model
    from hatchery.core.start import start_revision

    try:
        cfg = load_config(args.config)  # resolves model.source at model.revision: downloads a hub id
        path = resolve_model(cfg.model.source, start_revision(cfg, Path(cfg.run_dir)))
    except (ConfigError, OSError) as err:
        print(f"hatchery fetch-model: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _loadtest(args: argparse.Namespace, tls: Any) -> int:
    _needs("loadtest", "hatchery.bench")
    from hatchery.bench.loadtest import run_loadtest

    _quiet_libraries()
    return _print_json(run_loadtest(args.seconds, args.reward_clients, args.batch, args.workers, args.population),
                       args.out)


def _bench_reward(args: argparse.Namespace, tls: Any) -> int:
    _needs("bench-reward", "hatchery.bench")
    from hatchery.bench.reward import run_reward_bench

    return _print_json(run_reward_bench(args.samples, args.batch_size, args.repeats), args.out)


# -- the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verb:
    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace, Any], int]
    env: bool = False  # every flag may also come from $HATCHERY_<FLAG>
    tls: bool = False  # takes --tls-cert, --tls-key, --tls-ca, --tls-require-client-cert


VERBS: dict[str, Verb] = {
    "run": Verb("start optimizer, inference and reward services locally and train", _run_flags, _run),
    "optimizer": Verb("serve hatchery.v1.OptimizerService and drive a run", _optimizer_flags, _optimizer,
                      env=True, tls=True),
    "inference": Verb("serve hatchery.v1.InferenceService and evaluate leases", _inference_flags, _inference,
                      env=True, tls=True),
    "reward": Verb("serve hatchery.v1.RewardService with the built-in graders and plug-ins; "
                   "set $HATCHERY_REWARD_TOKEN to require a bearer token", _reward_flags, _reward,
                   env=True, tls=True),
    "health": Verb("exit 0 when a service answers grpc.health.v1 SERVING (probes, helm test)", _health_flags,
                   _health, env=True, tls=True),
    "status": Verb("print an optimizer's status as JSON", _status_flags, _status, env=True, tls=True),
    "watch": Verb("follow a run: a live display in a terminal, a line per generation when piped", _watch_flags,
                  _watch, env=True, tls=True),
    "pause": Verb("hand out no more leases until resume (needs $HATCHERY_CONTROL_TOKEN when tokens are on)",
                  _control_flags, _control("pause"), env=True, tls=True),
    "resume": Verb("hand out leases again after pause", _control_flags, _control("resume"), env=True, tls=True),
    "stop": Verb("end the run after the generation in flight, writing its model as at the end of its budget",
                 _control_flags, _control("stop"), env=True, tls=True),
    "conformance": Verb("check a reward service, in any language, against the hatchery.v1.RewardService contract",
                        _conformance_flags, _conformance, tls=True),
    "bench": Verb("EGGROLL vs unperturbed vs naive ES generation throughput (JSON, plots)", _bench_flags, _bench),
    "bench-reward": Verb("reward samples/s over gRPC vs in-process (JSON)", _bench_reward_flags, _bench_reward),
    "bench-sync": Verb("bytes on the wire and update time per generation against model size (JSON)",
                       _bench_sync_flags, _bench_sync),
    "bench-data": Verb("a large prompt file against arith: time to the first lease, optimizer and worker "
                       "memory (JSON)", _bench_data_flags, _bench_data),
    "bench-size": Verb("peak memory of the optimizer and a worker, and checkpoint size, per model and dtype (JSON)",
                       _bench_size_flags, _bench_size),
    "bench-grpo": Verb("the GRPO baseline (TRL GRPOTrainer) on a task, held-out reward against training time "
                       "(JSON lines; needs hatchery[grpo])", _bench_grpo_flags, _bench_grpo),
    "breakdown": Verb("where a run's training time went, from its metrics.jsonl (JSON)", _breakdown_flags,
                      _breakdown),
    "ablation": Verb("held-out curves and end rewards of several variants' runs (JSON)", _ablation_flags,
                     _ablation),
    "export": Verb("a run's weights as a Hugging Face folder or a PEFT LoRA adapter", _export_flags, _export),
    "eval": Verb("held-out reward of a model or PEFT adapter on a task or a data file (JSON)", _eval_flags, _eval),
    "data": Verb("what a run's prompts will be: row counts, examples as the model sees them, lengths (JSON)",
                 _data_flags, _data),
    "fetch-model": Verb("download a run's hub model into the Hugging Face cache (at the commit a started run "
                        "recorded) and print its folder; the chart's init container", _fetch_model_flags,
                        _fetch_model),
    "loadtest": Verb("bounded load on loopback: reward clients and simulated workers (JSON)", _loadtest_flags,
                     _loadtest),
}


def build_parser() -> argparse.ArgumentParser:
    parser = HatcheryParser(prog="hatchery", description="Fine-tune LLMs with evolution strategies.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.help, env_prefix=ENV_PREFIX if verb.env else "")
        verb.flags(p)
        if verb.tls:
            _tls_flags(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    verb = VERBS[args.command]
    tls = None
    if verb.tls:
        from hatchery.service.security import Tls

        try:
            tls = Tls(args.tls_cert, args.tls_key, args.tls_ca, args.tls_require_client_cert).check()
        except ValueError as err:
            print(f"hatchery {args.command}: {err}", file=sys.stderr)
            return 2
    return verb.handler(args, tls)


if __name__ == "__main__":
    sys.exit(main())
