"""The `sdedit` command: serve, edit, models, loadtest, import."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import grpc

from service.client.connection import add_connection_arguments, connection_from_args
from service.config import SettingsError, add_arguments, load_settings
from service.errors import BackendError, ModelConfigError
from service.sde.samplers import SAMPLERS
from service.sde.schedules import SPACINGS
from service.tenancy.tenants import TokensFileError

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _client_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server HOST:PORT (default {DEFAULT_ADDRESS})")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline in seconds (default 600)")
    add_connection_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdedit", description="SDEdit image editing over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service", description="Run the gRPC service. Every flag "
                           "can also be set by the environment variable named in its help.")
    add_arguments(serve)

    edit = _client_parser(sub, "edit", "edit an image with a running service")
    edit.add_argument("image", type=Path, help="guide image (PNG or JPEG)")
    edit.add_argument("-o", "--output", type=Path, required=True, help="output file (.png, or .npy with --npy); "
                      "with several samples, -0, -1, ... are added before the suffix")
    edit.add_argument("--mask", type=Path, help="PNG mask: white = regenerate, black = keep")
    edit.add_argument("--t0", type=float, default=0.5, help="editing strength in (0, 1] (default 0.5)")
    edit.add_argument("--steps", type=int, default=0, help="network calls per repeat (default 0 = the model's default, "
                      "see `sdedit models`)")
    edit.add_argument("--full-schedule", action="store_true", help="call the network at every level from t0 down "
                      "(the reference SDEdit schedule; round(t0 x timesteps) calls; with the reference sampler unless --sampler)")
    edit.add_argument("--repeats", type=int, default=1, help="noise-then-denoise repeats K (default 1)")
    edit.add_argument("--sampler", choices=SAMPLERS, help="default: the model's default sampler")
    edit.add_argument("--spacing", choices=SPACINGS, help="level spacing (default: the model's default)")
    edit.add_argument("--eta", type=float, default=0.0, help="DDIM noise (default 0: deterministic)")
    edit.add_argument("--seed", type=int, help="seed of the first sample (default random)")
    edit.add_argument("--num-samples", type=int, default=1)
    edit.add_argument("--model", default="", help="model name (default: the service's default)")
    edit.add_argument("--npy", action="store_true", help="write raw float32 .npy instead of PNG")
    edit.add_argument("--preview-every", type=int, default=0, help="save previews every N steps")
    edit.add_argument("--preview-dir", type=Path, help="folder for previews (with --preview-every)")
    edit.add_argument("--request-id", default="")
    edit.add_argument("--quiet", action="store_true", help="no progress bar")

    _client_parser(sub, "models", "list the models of a running service")

    add_import_arguments(sub)

    from service.loadtest.cli import add_arguments as add_loadtest_arguments

    loadtest = _client_parser(sub, "loadtest", "send a measured load to a running service and report latency and throughput")
    loadtest.set_defaults(timeout=600.0)
    loadtest.description = ("Send load to a running service: a closed loop of --concurrency callers, or an open loop "
                            "at --rate requests/s (latency from each request's intended send time). Reports throughput, "
                            "latency percentiles, status codes and cache hits; exits 1 when --max-p99 or "
                            "--max-error-rate is missed. JSON schema: docs/loadtest.md.")
    add_loadtest_arguments(loadtest)
    return parser


def _import_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="model name: the folder written under the repository")
    parser.add_argument("--repository", type=Path, help="model repository (default: the configured one, "
                        "SDEDIT_MODEL_REPOSITORY or the checkout's model_repository/)")
    parser.add_argument("--fp16", action="store_true", help="store the weights as float16 (about half the file); "
                        "inputs and outputs stay float32")
    parser.add_argument("--default-steps", type=int, help="network calls of an edit with steps = 0 (default 20)")
    parser.add_argument("--description", default="", help="one line for ListModels (default: architecture and source)")
    parser.add_argument("--max-size", type=int, default=0, help="largest side served (default: the native resolution)")
    parser.add_argument("--check-size", type=int, default=0, help="side of the export check's random inputs "
                        "(default: the native resolution; smaller is faster for big models)")
    parser.add_argument("--force", action="store_true", help="replace a model of that name")


def add_import_arguments(sub: argparse._SubParsersAction) -> None:
    text = ("export a score network to the model repository as ONNX, with its config.pbtxt and model card "
            "(needs the `import` extra: torch, diffusers, PyYAML)")
    parser = sub.add_parser("import", help=text, description=text)
    kinds = parser.add_subparsers(dest="source", required=True)
    diffusers = kinds.add_parser("diffusers", help="a diffusers UNet2DModel folder, or a pipeline folder with unet/ and scheduler/")
    diffusers.add_argument("folder", type=Path)
    diffusers.add_argument("--data-range", choices=("-1,1", "0,1"), help="the data the network was trained on "
                           "(default: 0,1 for ScoreSdeVe models, as score_sde's NCSN++; -1,1 otherwise)")
    _import_common(diffusers)
    reference = kinds.add_parser("reference", help="a state dict of the SDEdit reference code's Model with its configs/*.yml")
    reference.add_argument("checkpoint", type=Path)
    reference.add_argument("--config", type=Path, required=True, help="the reference's YAML config (model.*, data.image_size, diffusion.*)")
    _import_common(reference)


def cmd_import(args: argparse.Namespace) -> int:
    from training.importers import INSTALL_HINT, ImportFailed, missing_dependencies

    missing = missing_dependencies("torch", "onnxscript", *(("diffusers",) if args.source == "diffusers" else ("yaml",)))
    if missing:
        print(f"sdedit import: needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from training.importers.common import ImportOptions

    try:
        repository = args.repository or load_settings(env=None).model_repository
    except SettingsError as exc:
        print(f"sdedit import: {exc}", file=sys.stderr)
        return 2
    if (repository / args.name).exists() and not args.force:
        print(f"sdedit import: {repository / args.name} exists (--force replaces it)", file=sys.stderr)
        return 1
    options = ImportOptions(name=args.name, repository=repository, fp16=args.fp16, default_steps=args.default_steps,
                            description=args.description, max_size=args.max_size, check_size=args.check_size)
    started = time.perf_counter()
    try:
        if args.source == "diffusers":
            from training.importers.diffusers_format import import_diffusers

            model_dir = import_diffusers(args.folder, options, data_range=args.data_range)
        else:
            from training.importers.reference import import_reference

            model_dir = import_reference(args.checkpoint, args.config, options)
    except (ImportFailed, ModelConfigError, OSError) as exc:
        print(f"sdedit import: {exc}", file=sys.stderr)
        return 1
    size = (model_dir / "1" / "model.onnx").stat().st_size
    print(f"wrote {model_dir} ({size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s; model card {model_dir / 'README.md'}")
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"sdedit serve: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    logging.getLogger(__name__).info("settings: %s", settings.describe())
    from service.server import serve

    try:
        return asyncio.run(serve(settings))
    except (ModelConfigError, BackendError, OSError, SettingsError, TokensFileError) as exc:
        print(f"sdedit serve: {exc}", file=sys.stderr)
        return 1


def _print_rpc_error(exc: grpc.RpcError) -> int:
    print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def cmd_models(args: argparse.Namespace) -> int:
    from service.client import SAMPLER_NAMES, SPACING_NAMES, Client

    try:
        with Client(connection_from_args(args)) as client:
            models = client.list_models(timeout=args.timeout)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        return _print_rpc_error(exc)
    for m in models:
        flags = " (default)" if m.is_default else ""
        flexible = f", sizes in multiples of {m.size_multiple} up to {m.max_width}x{m.max_height}" if m.flexible_size else ""
        print(f"{m.name}\t{m.width}x{m.height}\t{m.channels} channel(s)\t{m.sde_type}, {m.timesteps} timesteps, "
              f"default {SAMPLER_NAMES.get(m.default_sampler, '?')} {SPACING_NAMES.get(m.default_spacing, '?')} "
              f"{m.default_steps} steps (reference sampler {SAMPLER_NAMES.get(m.reference_sampler, '?')}){flexible}"
              f"\thash {m.content_hash[:12]}{flags}")
    return 0


class ProgressBar:
    """A one-line progress bar on stderr, fed by StreamEdit's progress events."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_percent = -1

    def update(self, done: int, total: int, elapsed: float) -> None:
        if not self.enabled or total == 0:
            return
        percent = 100 * done // total
        if not self.tty and percent // 10 == self.last_percent // 10:
            return
        self.last_percent = percent
        filled = 30 * done // total
        bar = "#" * filled + "." * (30 - filled)
        line = f"[{bar}] {done}/{total} network calls {elapsed:6.1f}s"
        if self.tty:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def cmd_edit(args: argparse.Namespace) -> int:
    from service.client import SAMPLER_NAMES, SPACING_NAMES, Client, build_request

    try:
        request = build_request(
            args.image.read_bytes(), mask=args.mask.read_bytes() if args.mask else b"", t0=args.t0, steps=args.steps,
            repeats=args.repeats, sampler=args.sampler, eta=args.eta, seed=args.seed, num_samples=args.num_samples,
            model=args.model, npy=args.npy, preview_every=args.preview_every, request_id=args.request_id,
            spacing=args.spacing, full_schedule=args.full_schedule,
        )
        connection = connection_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar = ProgressBar(not args.quiet)
    started = time.perf_counter()
    result = None
    try:
        with Client(connection) as client:
            for event in client.stream_edit(request, timeout=args.timeout):
                kind = event.WhichOneof("event")
                if kind == "progress":
                    bar.update(event.progress.network_calls, event.progress.total_network_calls, event.progress.elapsed_seconds)
                elif kind == "preview":
                    p = event.preview.progress
                    bar.update(p.network_calls, p.total_network_calls, p.elapsed_seconds)
                    if args.preview_dir:
                        args.preview_dir.mkdir(parents=True, exist_ok=True)
                        for i, image in enumerate(event.preview.images):
                            name = f"repeat{p.repeat}-step{p.step:04d}-sample{i}.png"
                            (args.preview_dir / name).write_bytes(image.data)
                else:
                    result = event.result
    except grpc.RpcError as exc:
        bar.close()
        return _print_rpc_error(exc)
    bar.close()
    if result is None:
        print("error: the stream ended without a result", file=sys.stderr)
        return 1
    for i, image in enumerate(result.images):
        path = _numbered(args.output, i, len(result.images))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.data)
        print(f"wrote {path} (seed {image.seed})")
    cached = ", from cache" if result.cached else ""
    print(f"model {result.model}, sampler {SAMPLER_NAMES.get(result.sampler, '?')}, spacing "
          f"{SPACING_NAMES.get(result.spacing, '?')}, {result.steps} steps x {result.repeats} repeat(s) = "
          f"{result.network_calls} network calls per sample, "
          f"{result.timings.total_seconds:.2f}s on the server, {time.perf_counter() - started:.2f}s in all{cached}")
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from service.loadtest.cli import main as loadtest_main

    return loadtest_main(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": cmd_serve, "edit": cmd_edit, "models": cmd_models, "loadtest": cmd_loadtest, "import": cmd_import}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
