"""Measures a model's working memory per image in ONNX Runtime and prints the config
parameters that admission control reads (docs/operations.md, "Limits and memory").

    python scripts/measure_model_memory.py model_repository/digits [--sizes 128 256] [--batch 2]

Each point runs in a fresh process (peak RSS, VmHWM, is per process): load the session, run
once at the native size, note the peak, run batch x size x size, note the peak again. The
difference is fitted as batch * (bytes_per_pixel * P + bytes_per_attention_entry * (P / d^2)^2)
with d = --attention-downsample (0: no attention term). The service multiplies the estimate
by a safety factor, so these are measurements, not budgets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import json, sys
import numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from service.backends.onnx import OnnxScoreModel
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
model = OnnxScoreModel(Path(sys.argv[2]))
info = model.info
size, batch = int(sys.argv[3]), int(sys.argv[4])
model.predict_eps(np.zeros((1, info.channels, info.height, info.width), np.float32), np.full(1, 10, np.float32))
before = peak()
model.predict_eps(np.random.default_rng(0).standard_normal((batch, info.channels, size, size), dtype=np.float32),
                  np.full(batch, 500, np.float32))
print(json.dumps({"delta": peak() - before}))
"""


def measure(model_dir: Path, size: int, batch: int) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(model_dir), str(size), str(batch)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["delta"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--attention-downsample", type=int, default=0)
    args = parser.parse_args()
    rows, targets = [], []
    for size in args.sizes:
        delta = measure(args.model_dir, size, args.batch)
        pixels = size * size
        row = [pixels]
        if args.attention_downsample:
            row.append((pixels / args.attention_downsample**2) ** 2)
        rows.append(row)
        targets.append(delta / args.batch)
        print(f"{size}x{size} batch {args.batch}: {delta / 2**20:.1f} MiB peak over the idle process "
              f"({delta / args.batch / pixels:.0f} bytes per pixel per image)")
    coef, *_ = np.linalg.lstsq(np.array(rows, dtype=np.float64), np.array(targets), rcond=None)
    coef = np.maximum(coef, 0.0)
    print("config.pbtxt parameters:")
    print(f'  memory_bytes_per_pixel: "{coef[0]:.0f}"')
    if args.attention_downsample:
        print(f'  attention_downsample: "{args.attention_downsample}"')
        print(f'  attention_bytes_per_entry: "{coef[1]:.1f}"')


if __name__ == "__main__":
    main()
