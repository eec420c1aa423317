"""`sdedit loadtest`: flags, the run, the report, the exit code.

Exit codes: 0 done (and every SLO met), 1 an SLO missed (--max-p99, --max-error-rate,
whose default DEFAULT_MAX_ERROR_RATE always applies), 2 bad flags or no usable server
(nothing was measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import grpc

from sdedit.v1 import sdedit_pb2 as pb
from sdedit.v1 import sdedit_pb2_grpc
from service.client import SAMPLERS, SPACINGS
from service.client.connection import Connection, connection_from_args
from service.loadtest.plots import plots_available, write_plots
from service.loadtest.report import DEFAULT_MAX_ERROR_RATE, SLO, build_report, format_report
from service.loadtest.runner import LoadPlan, Runner, open_channel
from service.loadtest.triton import TritonWatch
from service.loadtest.workload import RequestOptions, Workload, WorkloadError, parse_size, pick_model

EXIT_OK, EXIT_SLO_MISSED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    loop = parser.add_argument_group("load shape")
    loop.add_argument("--concurrency", type=int,
                      help="closed loop: concurrent callers (default 1); open loop: most requests in flight "
                           "(default 0 = no cap)")
    loop.add_argument("--rate", type=float, default=0.0,
                      help="open loop: requests per second, latency measured from each request's intended send time "
                           "(default 0 = closed loop)")
    loop.add_argument("--arrivals", choices=("uniform", "poisson"), default="uniform", help="open loop arrivals (default uniform)")
    loop.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    loop.add_argument("--requests", type=int, default=0, help="measured requests; replaces --duration (default 0 = use --duration)")
    loop.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    loop.add_argument("--seed", type=int, default=0, help="seed of the request mix (sizes, fixed or fresh) and the arrival times; "
                                                                    "fresh seeds are always new (default 0)")

    req = parser.add_argument_group("requests")
    req.add_argument("--model", default="", help="model name (default: the server's default)")
    req.add_argument("--rpc", choices=("edit", "stream"), default="edit", help="Edit or StreamEdit (default edit)")
    req.add_argument("--t0", type=float, default=0.5, help="editing strength (default 0.5)")
    req.add_argument("--steps", type=int, default=0, help="network calls per edit (default 0 = the model's default_steps)")
    req.add_argument("--sampler", choices=[name for name in SAMPLERS if name], help="default: the model's default sampler (ListModels)")
    req.add_argument("--spacing", choices=[name for name in SPACINGS if name], help="default: the model's default spacing (ListModels)")
    req.add_argument("--num-samples", type=int, default=1, help="images per request (default 1)")
    req.add_argument("--fixed-seed-fraction", type=float, default=0.0,
                     help="share of requests that repeat one fixed request (cache hits once cached); "
                          "the others get fresh seeds (default 0)")
    req.add_argument("--sizes", default="",
                     help="comma-separated WxH guide sizes, drawn at random (default: the model's own size, "
                          "plus twice it when the model accepts other sizes)")
    req.add_argument("--image", type=Path, help="guide image of the model's own size (default: a generated one)")

    out = parser.add_argument_group("output and SLOs")
    out.add_argument("--json", metavar="PATH", help="write the report as JSON (docs/loadtest.md); '-' = stdout")
    out.add_argument("--plot-dir", type=Path, help="write latency PNG plots here (needs matplotlib)")
    out.add_argument("--max-p99", type=float, help="exit 1 when the p99 latency (s) is above this")
    out.add_argument("--max-error-rate", type=float, default=DEFAULT_MAX_ERROR_RATE,
                     help="exit 1 when the error fraction (0..1, requests not sent while backing off included) is above "
                          f"this (default {DEFAULT_MAX_ERROR_RATE:g}; 1 = never)")
    out.add_argument("--triton-metrics-url", help="Triton's metrics URL (http://HOST:8002/metrics): "
                                                  "also report its queue and compute time and batch size")


def plan_from(args: argparse.Namespace) -> LoadPlan:
    problems = []
    if args.rate < 0:
        problems.append("--rate must be >= 0")
    if args.concurrency is None:
        args.concurrency = 0 if args.rate > 0 else 1
    if args.concurrency < (0 if args.rate > 0 else 1):
        problems.append("--concurrency must be >= 1 (>= 0 with --rate)")
    if args.duration <= 0 and args.requests <= 0:
        problems.append("--duration must be > 0 (or give --requests)")
    if args.requests < 0 or args.warmup < 0 or args.timeout <= 0:
        problems.append("--requests and --warmup must be >= 0, --timeout > 0")
    if args.max_error_rate is not None and not 0 <= args.max_error_rate <= 1:
        problems.append("--max-error-rate must be in [0, 1]")
    if problems:
        raise WorkloadError("; ".join(problems))
    return LoadPlan(address=args.address, concurrency=args.concurrency, rate=args.rate, arrivals=args.arrivals,
                    duration=args.duration, requests=args.requests, warmup=args.warmup, rpc=args.rpc,
                    timeout=args.timeout, seed=args.seed)


def options_from(args: argparse.Namespace) -> RequestOptions:
    sizes = tuple(parse_size(s) for s in args.sizes.split(",") if s.strip())
    image = args.image.read_bytes() if args.image else None
    return RequestOptions(model=args.model, t0=args.t0, steps=args.steps, sampler=args.sampler, spacing=args.spacing,
                          num_samples=args.num_samples,
                          fixed_seed_fraction=args.fixed_seed_fraction, sizes=sizes, image=image)


async def run_loadtest(plan: LoadPlan, options: RequestOptions, slo: SLO, triton_url: str | None = None,
                       plot_dir: Path | None = None, connection: Connection | None = None) -> tuple[dict, list[Path]]:
    """Runs one load test; returns its report (the JSON form) and the plots written.
    connection: TLS and token for plan.address (default: plaintext, no token)."""
    async with open_channel(connection or plan.address) as channel:
        stub = sdedit_pb2_grpc.ImageEditorStub(channel)
        models = (await stub.ListModels(pb.ListModelsRequest(), timeout=min(plan.timeout, 30))).models
        workload = Workload(pick_model(list(models), options.model), options, plan.seed)
        watch = TritonWatch(triton_url) if triton_url else None
        result = await Runner(plan, workload, stub, on_measure_start=watch.start if watch else None).run()
    triton = await asyncio.to_thread(watch.finish) if watch else None
    report = build_report(plan, workload, result, slo, triton)
    plots = write_plots(result.records, report, plot_dir) if plot_dir is not None and plots_available() else []
    return report, plots


def main(args: argparse.Namespace) -> int:
    try:
        plan, options, connection = plan_from(args), options_from(args), connection_from_args(args)
        report, plots = asyncio.run(run_loadtest(plan, options, SLO(args.max_p99, args.max_error_rate),
                                                 args.triton_metrics_url, args.plot_dir, connection))
    except (WorkloadError, OSError, ValueError) as exc:
        print(f"sdedit loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.aio.AioRpcError as exc:
        print(f"sdedit loadtest: cannot list the models at {args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_USAGE
    text_out = sys.stderr if args.json == "-" else sys.stdout
    print(format_report(report), file=text_out)
    if args.plot_dir is not None:
        print(f"plots: {', '.join(map(str, plots))}" if plots else "plots skipped: matplotlib is not installed", file=text_out)
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_OK if report["slo"]["passed"] else EXIT_SLO_MISSED
