"""Builds the tensorrt_plan variant of a model: trtexec on its model.onnx, plus a config.pbtxt.

    python scripts/build_tensorrt_plan.py model_repository/digits-mixture trt_repository \\
        [--max-batch 16 --opt-batch 4] [--min-side 64 --opt-side 256 --max-side 512] [--no-fp16] \\
        [--trtexec /usr/src/tensorrt/bin/trtexec] [--dry-run]

writes trt_repository/<name>/1/model.plan and trt_repository/<name>/config.pbtxt, the
production config with `platform: "tensorrt_plan"` and the plan's profile (same inputs,
outputs, parameters, dynamic batching and warm-up). Run it inside the Triton container that
will serve the plan (e.g. nvcr.io/nvidia/tritonserver:<release>-py3, which has trtexec at
/usr/src/tensorrt/bin/trtexec) on the GPU type that will serve it: a plan is tied to the
TensorRT version that built it and to the GPU architecture (compute capability). Rebuild
it for every new container release and every GPU type; the ONNX file stays the source.
--dry-run writes the config and prints the trtexec command without running it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from service.backends.repository import model_files, read_config
from service.backends.variants import PLAN_FILE, PlanProfile, tensorrt_plan_config, trtexec_command, write_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="model_repository/<name> (production config.pbtxt + 1/model.onnx)")
    parser.add_argument("target", type=Path, help="repository to write <name>/config.pbtxt and <name>/1/model.plan into")
    defaults = PlanProfile()
    for name in ("min_batch", "opt_batch", "max_batch", "min_side", "opt_side", "max_side"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                            help=f"optimisation profile (default {getattr(defaults, name)}; sides 0 = the native size)")
    parser.add_argument("--no-fp16", action="store_true", help="build in FP32 (default FP16)")
    parser.add_argument("--trtexec", default="trtexec", help="trtexec of the serving container's TensorRT")
    parser.add_argument("--dry-run", action="store_true", help="write the config, print the command, build nothing")
    args = parser.parse_args(argv)

    profile = PlanProfile(args.min_batch, args.opt_batch, args.max_batch, args.min_side, args.opt_side, args.max_side)
    if not profile.min_batch <= profile.opt_batch <= profile.max_batch:
        parser.error("batches must satisfy min <= opt <= max")
    if not profile.min_side <= profile.opt_side <= profile.max_side:
        parser.error("sides must satisfy min <= opt <= max")
    production = read_config(args.model_dir)
    onnx_path = model_files(args.model_dir, production)[0]
    version = args.target / args.model_dir.name / "1"
    version.mkdir(parents=True, exist_ok=True)
    command = trtexec_command(onnx_path.resolve(), (version / PLAN_FILE).resolve(), production, profile,
                              trtexec=args.trtexec, fp16=not args.no_fp16)
    write_config(args.target / args.model_dir.name, tensorrt_plan_config(production, profile, fp16=not args.no_fp16))
    print(shlex.join(command))
    if args.dry_run:
        return 0
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
