"""The `hatchery` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _env_defaults(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Every flag --some-flag can also come from $HATCHERY_SOME_FLAG (flags win)."""
    for action in parser._actions:
        env = f"{prefix}{action.dest.upper()}"
        if action.dest == "help" or env not in os.environ:
            continue
        value = os.environ[env]
        if isinstance(action, argparse._StoreTrueAction):
            action.default = value.strip().lower() in ("1", "true", "yes")
        else:
            action.default = action.type(value) if action.type else value
        action.required = False


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _add_server_flags(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 inside a container)")
    p.add_argument("--port", type=int, default=default_port, help="port to bind; 0 picks a free one")
    p.add_argument("--port-file", default=None, help="write the bound port to this file once serving")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port; 0: off")


def _add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default="", metavar="PEM", help="this process's certificate chain (serve with TLS)")
    p.add_argument("--tls-key", default="", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--tls-ca", default="", metavar="PEM",
                   help="CA that signs the peers' certificates (connect with TLS; verify clients under mTLS)")
    p.add_argument("--tls-require-client-cert", action="store_true",
                   help="mutual TLS: refuse clients without a certificate signed by --tls-ca")


def _tls(args: argparse.Namespace):
    from hatchery.service.security import Tls

    return Tls(args.tls_cert, args.tls_key, args.tls_ca, args.tls_require_client_cert).check()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hatchery", description="Fine-tune LLMs with evolution strategies.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start optimizer, inference and reward services locally and train")
    run.add_argument("config", nargs="?", default=None, help="run config YAML (default: the embedded default)")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue the run in RUN_DIR where it stopped, with the config it was started with")

    opt = sub.add_parser("optimizer", help="serve hatchery.v1.OptimizerService and drive a run")
    opt.add_argument("--config", default=None, help="run config YAML (default: the embedded default)")
    opt.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    opt.add_argument("--resume-if-exists", action="store_true",
                     help="with --config: resume when its run_dir already holds that run (a restarted pod), "
                          "start it otherwise")
    _add_server_flags(opt, 50051)

    inf = sub.add_parser("inference", help="serve hatchery.v1.InferenceService and evaluate leases")
    _add_server_flags(inf, 50052)
    inf.add_argument("--optimizer-address", required=True, help="host:port of the optimizer service")
    inf.add_argument("--reward-address", default="",
                     help="host:port of the reward service, for runs whose config names no reward.services")
    inf.add_argument("--worker-id", default="", help="unique worker name (default: host name and port)")
    inf.add_argument("--fetch-files", "--fetch-checkpoints", dest="fetch_files", action="store_true",
                     help="stream the start model and checkpoints over gRPC even when the optimizer's paths "
                          "are visible here")

    rew = sub.add_parser("reward", help="serve hatchery.v1.RewardService with the built-in graders and plug-ins; "
                                        "set $HATCHERY_REWARD_TOKEN to require a bearer token")
    _add_server_flags(rew, 50053)
    rew.add_argument("--graders", default=None, metavar="FILE",
                     help="YAML mapping of grader name to spec (regex, combined, python, openrlhf_http)")
    rew.add_argument("--default-grader", default="first_integer", help="grader used when a request names none")

    hc = sub.add_parser("health", help="exit 0 when a service answers grpc.health.v1 SERVING (probes, helm test)")
    hc.add_argument("address", help="host:port of any Hatchery service")
    hc.add_argument("--service", default="", help="the service name to ask about; empty: the server as a whole")
    _add_tls_flags(hc)

    st = sub.add_parser("status", help="print an optimizer's status as JSON")
    st.add_argument("address", help="host:port of the optimizer")
    _add_tls_flags(st)

    bench = sub.add_parser("bench", help="EGGROLL vs unperturbed vs naive ES generation throughput (JSON, plots)")
    bench.add_argument("--models", default="tiny,smollm2",
                       help="comma-separated: tiny, smollm2, qwen2.5-0.5b-shape, qwen2.5-1.5b-shape (random weights)")
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    bench.add_argument("--tokenizer", default=None, help="tokenizer folder for the random models (default: SmolLM2's)")
    bench.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    bench.add_argument("--batches", default="8,32,128", help="rows per batch: members x prompts per member")
    bench.add_argument("--prompts-per-member", default="1,4", help="comma-separated; 4 is a run's default")
    bench.add_argument("--ranks", default="1,2,4,8")
    bench.add_argument("--naive-populations", default="8,16,32,64",
                       help="populations at which naive full-rank ES is compared with EGGROLL (lowest rank)")
    bench.add_argument("--new-tokens", type=int, default=32)
    bench.add_argument("--repeats", type=int, default=5, help="unperturbed/eggroll pairs per batch and rank")
    bench.add_argument("--naive-repeats", type=int, default=1, help="naive/eggroll pairs per population")
    bench.add_argument("--out", default=None, help="also write the JSON here")
    bench.add_argument("--plots", default=None, help="write bench-throughput.png and bench-naive.png here")

    bench_reward = sub.add_parser("bench-reward", help="reward samples/s over gRPC vs in-process (JSON)")
    bench_reward.add_argument("--samples", type=int, default=4096)
    bench_reward.add_argument("--batch-size", type=int, default=256)
    bench_reward.add_argument("--repeats", type=int, default=5)
    bench_reward.add_argument("--out", default=None, help="also write the JSON here")

    sync = sub.add_parser("bench-sync", help="bytes on the wire and update time per generation against model size "
                                             "(JSON)")
    sync.add_argument("--widths", default="256,512,1024", help="hidden sizes of random 4-layer Llamas")
    sync.add_argument("--no-smollm2", action="store_true", help="leave the embedded SmolLM2 out")
    sync.add_argument("--generations", type=int, default=4)
    sync.add_argument("--out", default=None, help="also write the JSON here")

    grpo = sub.add_parser("bench-grpo", help="the GRPO baseline (TRL GRPOTrainer) on a task, held-out reward "
                                             "against training time (JSON lines; needs hatchery[grpo])")
    grpo.add_argument("--out", required=True, help="JSON lines, one per held-out evaluation")
    grpo.add_argument("--model", default="embedded:smollm2-135m-instruct", help="a local Hugging Face folder")
    grpo.add_argument("--task", default="arith")
    grpo.add_argument("--seed", type=int, default=0, help="the trainer's seed")
    grpo.add_argument("--task-seed", type=int, default=0, help="the train / held-out split, as a run's task.seed")
    grpo.add_argument("--heldout-size", type=int, default=128)
    grpo.add_argument("--budget-seconds", type=float, default=720.0, help="of training time, evaluations excluded")
    grpo.add_argument("--max-steps", type=int, default=10_000)
    grpo.add_argument("--lr", type=float, default=1e-5)
    grpo.add_argument("--eval-every", type=int, default=2, help="steps between held-out evaluations")
    grpo.add_argument("--compare-with", default=None,
                      help="a Hatchery run dir or its metrics.jsonl: plot its held-out curve too")
    grpo.add_argument("--plot", default=None, help="PNG of held-out reward against training time")

    brk = sub.add_parser("breakdown", help="where a run's training time went, from its metrics.jsonl (JSON)")
    brk.add_argument("run_dir", help="the run directory")
    brk.add_argument("--out", default=None, help="also write the JSON here")

    abl = sub.add_parser("ablation", help="held-out curves and end rewards of several variants' runs (JSON)")
    abl.add_argument("variants", nargs="+", metavar="NAME=RUN[,RUN...]",
                     help="a variant's name and its runs, one per seed: run dirs or bench-grpo JSON lines")
    abl.add_argument("--out", default=None, help="also write the JSON here")
    abl.add_argument("--plot", default=None, help="PNG of every run's held-out reward against training time")

    exp = sub.add_parser("export", help="a run's weights as a Hugging Face folder or a PEFT LoRA adapter")
    exp.add_argument("run_dir", help="the run directory")
    exp.add_argument("out", help="the folder to write")
    exp.add_argument("--format", choices=["hf", "peft-lora"], default="hf")
    exp.add_argument("--generation", type=int, default=None, help="after this many updates (default: all)")
    size = exp.add_mutually_exclusive_group()
    size.add_argument("--rank", type=int, default=None, help="peft-lora: this rank for every matrix")
    size.add_argument("--energy", type=float, default=None,
                      help="peft-lora: per matrix, the smallest rank keeping this share of the change's energy")

    ev = sub.add_parser("eval", help="held-out reward of a model or PEFT adapter on a task (JSON)")
    ev.add_argument("model", help="a Hugging Face folder, a PEFT adapter folder, or embedded:smollm2-135m-instruct")
    ev.add_argument("--task", default="arith")
    ev.add_argument("--seed", type=int, default=0, help="the task seed (the run's task.seed)")
    ev.add_argument("--heldout-size", type=int, default=128)
    ev.add_argument("--reward-address", default="", help="a reward service; default: start one")
    ev.add_argument("--grader", default="", help="default: the task's")
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--max-new-tokens", type=int, default=0, help="the run's task.max_new_tokens; 0: the task's")

    load = sub.add_parser("loadtest", help="bounded load on loopback: reward clients and simulated workers (JSON)")
    load.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    load.add_argument("--reward-clients", type=int, default=32)
    load.add_argument("--batch", type=int, default=16, help="samples per Score request")
    load.add_argument("--workers", type=int, default=32, help="simulated workers holding and returning leases")
    load.add_argument("--population", type=int, default=64)
    load.add_argument("--out", default=None, help="also write the JSON here")

    for p in (opt, inf, rew):
        _add_tls_flags(p)
    for p in (opt, inf, rew, st, hc):
        _env_defaults(p, "HATCHERY_")
    return parser


def _ints(csv: str) -> list[int]:
    return [int(x) for x in csv.split(",") if x]


def _print_json(result: dict, out: str | None) -> int:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    tls = None
    if "tls_cert" in args:
        try:
            tls = _tls(args)
        except ValueError as err:
            print(f"hatchery {args.command}: {err}", file=sys.stderr)
            return 2
    if args.command in ("run", "optimizer"):
        from hatchery.core.config import ConfigError, load_config, resumed_config, start_or_resume, with_fresh_run_dir

        try:
            if args.resume and args.config:
                raise ConfigError("give a config or --resume RUN_DIR, not both")
            if args.resume:
                cfg = resumed_config(args.resume)
            elif getattr(args, "resume_if_exists", False):
                cfg = start_or_resume(load_config(args.config))
            else:
                cfg = with_fresh_run_dir(load_config(args.config))
        except (ConfigError, OSError) as err:
            print(f"hatchery: bad config: {err}", file=sys.stderr)
            return 2
    if args.command == "run":
        from hatchery.launcher import run_local

        return run_local(cfg, resume=bool(args.resume))
    if args.command == "health":
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from hatchery.service.serving import channel

        reply = health_pb2_grpc.HealthStub(channel(args.address, tls)).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=10)
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
    if args.command == "status":
        from google.protobuf import json_format

        from hatchery.service.security import service_token
        from hatchery.service.serving import channel
        from hatchery.v1 import optimizer_pb2, optimizer_pb2_grpc

        stub = optimizer_pb2_grpc.OptimizerServiceStub(channel(args.address, tls, service_token("optimizer")))
        status = stub.GetStatus(optimizer_pb2.GetStatusRequest(), timeout=10)
        print(json.dumps(json_format.MessageToDict(status, preserving_proto_field_name=True), indent=2))
        return 0
    if args.command == "bench":
        from hatchery.bench.throughput import plot_bench, run_bench

        report = run_bench(args.models.split(","), args.dtypes.split(","), _ints(args.batches), _ints(args.ranks),
                           _ints(args.naive_populations), args.new_tokens, args.repeats, args.naive_repeats,
                           _ints(args.prompts_per_member), args.device, args.tokenizer)
        if args.plots:
            plot_bench(report, Path(args.plots))
        return _print_json(report, args.out)
    if args.command == "bench-sync":
        from hatchery.bench.sync import run_sync_bench

        _quiet_libraries()
        return _print_json(run_sync_bench(tuple(_ints(args.widths)), not args.no_smollm2, args.generations), args.out)
    if args.command == "bench-grpo":
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
    if args.command == "breakdown":
        from hatchery.bench.breakdown import time_breakdown

        return _print_json(time_breakdown(args.run_dir), args.out)
    if args.command == "ablation":
        from hatchery.bench.ablation import ablation, parse_variants, plot_ablation

        try:
            report = ablation(parse_variants(args.variants))
        except (ValueError, OSError) as err:
            print(f"hatchery ablation: {err}", file=sys.stderr)
            return 2
        if args.plot:
            plot_ablation(report, Path(args.plot), "held-out reward against training time")
        return _print_json(report, args.out)
    if args.command == "export":
        from hatchery.export import export_hf, export_peft_lora

        _quiet_libraries()
        try:
            if args.format == "hf":
                report = export_hf(args.run_dir, args.out, args.generation)
            else:
                report = export_peft_lora(args.run_dir, args.out, args.generation, args.rank,
                                          args.energy if args.rank is not None or args.energy is not None else 0.99)
        except (ValueError, OSError) as err:
            print(f"hatchery export: {err}", file=sys.stderr)
            return 2
        report.pop("matrices", None)  # per matrix: in OUT/hatchery-export.json
        return _print_json(report, None)
    if args.command == "eval":
        from hatchery.evaluation import heldout_reward

        _quiet_libraries()
        try:
            result = heldout_reward(args.model, args.task, args.seed, args.heldout_size, args.reward_address,
                                    args.grader, args.dtype, args.max_new_tokens)
        except (ValueError, OSError) as err:
            print(f"hatchery eval: {err}", file=sys.stderr)
            return 2
        return _print_json(result, None)
    if args.command == "loadtest":
        from hatchery.bench.loadtest import run_loadtest

        _quiet_libraries()
        return _print_json(run_loadtest(args.seconds, args.reward_clients, args.batch, args.workers, args.population),
                           args.out)
    if args.command == "bench-reward":
        from hatchery.bench.reward import run_reward_bench

        return _print_json(run_reward_bench(args.samples, args.batch_size, args.repeats), args.out)
    if args.command == "reward":
        from reward_svc.server import serve

        try:
            serve(args.host, args.port, args.port_file, args.default_grader, args.graders, tls, args.metrics_port)
        except (ValueError, RuntimeError, OSError) as err:  # a bad graders file or a plug-in that will not load
            print(f"hatchery reward: {err}", file=sys.stderr)
            return 2
        return 0
    _quiet_libraries()
    if args.command == "optimizer":
        from optimizer_svc.server import serve

        return serve(cfg, args.host, args.port, args.port_file, tls, args.metrics_port)
    from inference_svc.server import serve

    serve(args.host, args.port, args.port_file, args.optimizer_address, args.reward_address, args.worker_id,
          args.fetch_files, tls, args.metrics_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
