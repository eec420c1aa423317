"""The paper's experiment at small scale: realism versus faithfulness against t0.

    python benchmarks/quality.py [--model digits] [--guides 200] [--unconditional 500]

Runs the SDEdit engine in process (ONNX Runtime) on held-out digits the model never saw:

- unconditional samples (t0 = 1, the full reference sampler by default) against held-out
  real images, with the stroke guides and real training images as references;
- stroke synthesis: simulated stroke guides (median filter + a palette of 3-4 colours)
  over a sweep of t0; realism = KID against held-out images and the classifier's mean
  top-class probability; faithfulness = the paper's L2 between guide and output; and the
  share of outputs the classifier assigns to the guide's class;
- masked edits: a square painted over each digit, the mask around it; outside the mask the
  output must equal the guide bit for bit; inside, the share that keeps the digit's class.

KID and class assignments use a small CNN trained on the same training digits
(benchmarks/assets/digit_classifier.onnx, made by `python -m training.classifier`).
Writes results.json, results.md, tradeoff.png and grid.png to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality_metrics import kid, l2_faithfulness, paint_over, simulate_strokes
from service.backends.onnx import OnnxScoreModel
from service.config import load_settings
from service.pipeline.imaging import to_pixels
from service.sde import EditParams, build_schedule, run_sdedit
from training.digits import load_split, to_model_range

ROOT = Path(__file__).resolve().parent.parent
CLASSIFIER = ROOT / "benchmarks" / "assets" / "digit_classifier.onnx"
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Classifier:
    def __init__(self, path: Path = CLASSIFIER):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        self.scale = 1.0

    def calibrate(self, real: np.ndarray) -> None:
        """Fixes one global feature scale: unit mean square on the real images. The cubic KID
        kernel is scale-sensitive; without this, large ReLU features make its estimates noisy."""
        features, _ = self(real)
        self.scale = 1.0 / float(np.sqrt((features**2).mean()))

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, 32, 32] -> (features [N, d], probabilities [N, 10])."""
        feats, probs = [], []
        for i in range(0, len(pixels), 256):
            f, p = self.session.run(None, {"x": to_model_range(pixels[i:i + 256])})
            feats.append(f)
            probs.append(p)
        return self.scale * np.concatenate(feats).astype(np.float64), np.concatenate(probs)


@dataclass
class Row:
    name: str
    t0: float | None
    n: int
    kid: float
    kid_std: float
    top_prob: float  # the classifier's mean top-class probability
    class_agreement: float | None = None  # share assigned to the guide's class
    l2: float | None = None  # mean ||output - guide||_2, pixels in [0, 1]
    seconds: float | None = None


def sdedit_batch(model: OnnxScoreModel, guides: np.ndarray, masks: np.ndarray | None, t0: float, steps: int,
                 sampler: str, seed: int, batch: int) -> np.ndarray:
    """Edits each guide once (sample i seeded with seed + i); uint8 [N, H, W] -> uint8 [N, H, W]."""
    schedule = build_schedule(model.info.sde)
    params = EditParams(t0=t0, steps=steps, sampler=sampler)
    outputs = []
    for start in range(0, len(guides), batch):
        chunk = guides[start:start + batch]
        rngs = [np.random.default_rng(seed + start + i) for i in range(len(chunk))]
        mask = None if masks is None else (masks[start:start + batch] >= 128).astype(np.float32)
        result = run_sdedit(model.predict_eps, schedule, to_model_range(chunk), mask, params, rngs)
        outputs += [to_pixels(x)[:, :, 0] for x in result.samples]
    return np.stack(outputs)


def row(name: str, pixels: np.ndarray, real_features: np.ndarray, classify: Classifier, t0: float | None = None,
        guides: np.ndarray | None = None, labels: np.ndarray | None = None, seconds: float | None = None) -> Row:
    features, probs = classify(pixels)
    k, k_std = kid(features, real_features)
    agreement = None if labels is None else float((probs.argmax(1) == labels).mean())
    l2 = None if guides is None else float(l2_faithfulness(guides, pixels).mean())
    return Row(name, t0, len(pixels), k, k_std, float(probs.max(1).mean()), agreement, l2, seconds)


def markdown(rows: list[Row]) -> str:
    lines = ["| run | t0 | n | KID (x1e3) | top-class prob | class agreement | L2 | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "" if v is None else format(v, f)
    for r in rows:
        lines.append(f"| {r.name} | {fmt(r.t0, '.1f')} | {r.n} | {1e3 * r.kid:.2f} ± {1e3 * r.kid_std:.2f} | {r.top_prob:.3f} | "
                     f"{fmt(r.class_agreement, '.3f')} | {fmt(r.l2, '.2f')} | {fmt(r.seconds, '.0f')} |")
    return "\n".join(lines)


def plot(sweep: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0s = [r.t0 for r in sweep]
    fig, left = plt.subplots(figsize=(6, 4), dpi=120)
    left.plot(t0s, [1e3 * r.kid for r in sweep], "o-", color="tab:red", label="KID x1e3 (realism, lower is better)")
    left.set_xlabel("t0")
    left.set_ylabel("KID x1e3", color="tab:red")
    right = left.twinx()
    right.plot(t0s, [r.l2 for r in sweep], "s-", color="tab:blue", label="L2 to guide (faithfulness, lower is better)")
    right.set_ylabel("L2 to guide", color="tab:blue")
    left.legend(handles=[*left.get_lines(), *right.get_lines()], loc="center right", fontsize=8)
    left.set_title("SDEdit on stroke guides: realism vs faithfulness", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def grid(columns: list[tuple[str, np.ndarray]], path: Path, count: int = 8, scale: int = 3) -> None:
    """A grid: one row per example, one column per (title, images) pair."""
    from PIL import Image, ImageDraw

    cell = 32 * scale + 4
    canvas = Image.new("L", (cell * len(columns), 14 + cell * count), 255)
    draw = ImageDraw.Draw(canvas)
    for c, (title, images) in enumerate(columns):
        draw.text((c * cell + 2, 1), title, fill=0)
        for r in range(count):
            tile = Image.fromarray(images[r]).resize((32 * scale, 32 * scale), Image.NEAREST)
            canvas.paste(tile, (c * cell + 2, 14 + r * cell + 2))
    canvas.save(path)


def check_acceptance(unconditional: Row, strokes: Row, sweep: list[Row]) -> dict[str, bool]:
    ends = sweep[0], sweep[-1]
    kid_mid, l2_mid = (ends[0].kid + ends[1].kid) / 2, (ends[0].l2 + ends[1].l2) / 2
    middle = [r for r in sweep if 0.3 <= r.t0 <= 0.6]
    return {
        "unconditional KID <= strokes KID / 10": unconditional.kid <= strokes.kid / 10,
        "unconditional top-class prob >= 0.8": unconditional.top_prob >= 0.8,
        "KID falls from the smallest to the largest t0": ends[1].kid < ends[0].kid,
        "L2 rises from the smallest to the largest t0": ends[1].l2 > ends[0].l2,
        "some t0 in [0.3, 0.6] beats the midpoint in both KID and L2": any(r.kid < kid_mid and r.l2 < l2_mid for r in middle),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name (default: the service's default model)")
    parser.add_argument("--repository", type=Path, default=None)
    parser.add_argument("--guides", type=int, default=200, help="stroke guides (and masked edits) from held-out digits")
    parser.add_argument("--unconditional", type=int, default=500, help="unconditional samples at t0 = 1")
    parser.add_argument("--unconditional-steps", type=int, default=0, help="0 = the full reference sampler")
    parser.add_argument("--sweep-steps", type=int, default=100, help="network calls per edit in the t0 sweep (0 = full)")
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--t0", type=float, nargs="*", default=list(SWEEP))
    parser.add_argument("--masked-t0", type=float, nargs="*", default=[0.5, 0.8])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    settings = load_settings(env={}, **({"model_repository": args.repository} if args.repository else {}))
    name = args.model or settings.default_model
    model = OnnxScoreModel(settings.model_repository / name)
    out = args.out or ROOT / "benchmarks" / "results" / f"quality-{name}"
    out.mkdir(parents=True, exist_ok=True)
    classify = Classifier()
    split = load_split()
    rng = np.random.default_rng(args.seed)
    real = split.held_out_images
    classify.calibrate(real)
    real_features, _ = classify(real)
    reference = split.train_images[rng.choice(len(split.train_images), len(real), replace=False)]  # the split is class-ordered
    picks = rng.permutation(len(real))[: args.guides]
    originals, labels = real[picks], split.held_out_labels[picks]
    strokes = np.stack([simulate_strokes(image, rng) for image in originals])

    rows = [row("real training digits (reference)", reference, real_features, classify),
            row("stroke guides (reference)", strokes, real_features, classify, labels=labels)]
    print(markdown(rows), flush=True)
    started = time.perf_counter()
    noise_guides = np.zeros((args.unconditional, 32, 32), dtype=np.uint8)
    unconditional = sdedit_batch(model, noise_guides, None, 1.0, args.unconditional_steps, args.sampler, args.seed, args.batch)
    rows.append(row(f"unconditional (t0 = 1, steps {args.unconditional_steps or 'all'})", unconditional, real_features, classify,
                    t0=1.0, seconds=time.perf_counter() - started))
    print(markdown(rows[-1:]).splitlines()[-1], flush=True)

    sweep, outputs = [], {}
    for t0 in args.t0:
        started = time.perf_counter()
        outputs[t0] = sdedit_batch(model, strokes, None, t0, args.sweep_steps, args.sampler, args.seed, args.batch)
        sweep.append(row("strokes -> SDEdit", outputs[t0], real_features, classify, t0=t0, guides=strokes, labels=labels,
                         seconds=time.perf_counter() - started))
        print(markdown(sweep[-1:]).splitlines()[-1], flush=True)
    rows += sweep

    painted = [paint_over(image, rng) for image in originals]
    masked_guides, masks = np.stack([g for g, _ in painted]), np.stack([m for _, m in painted])
    masked = []
    for t0 in args.masked_t0:
        started = time.perf_counter()
        edited = sdedit_batch(model, masked_guides, masks, t0, args.sweep_steps, args.sampler, args.seed, args.batch)
        outside_exact = bool(np.all(edited[masks == 0] == masked_guides[masks == 0]))
        _, probs = classify(edited)
        masked.append({"t0": t0, "n": len(edited), "outside_mask_bit_exact": outside_exact,
                       "class_kept_rate": float((probs.argmax(1) == labels).mean()),
                       "guide_class_kept_rate": float((classify(masked_guides)[1].argmax(1) == labels).mean()),
                       "seconds": time.perf_counter() - started})
        outputs[f"masked-{t0}"] = edited
        print(f"masked t0={t0}: outside bit-exact {outside_exact}, class kept {masked[-1]['class_kept_rate']:.3f} "
              f"(painted guides: {masked[-1]['guide_class_kept_rate']:.3f})", flush=True)

    acceptance = check_acceptance(rows[2], rows[1], sweep) if len(sweep) > 1 else {}
    result = {"model": name, "model_hash": model.info.content_hash, "args": {k: str(v) for k, v in vars(args).items()},
              "rows": [asdict(r) for r in rows], "masked": masked, "acceptance": acceptance}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = markdown(rows) + "\n\n| masked t0 | n | outside mask bit-exact | class kept (edited) | class kept (painted guide) |\n"
    table += "|---|---|---|---|---|\n"
    table += "\n".join(f"| {m['t0']} | {m['n']} | {m['outside_mask_bit_exact']} | {m['class_kept_rate']:.3f} | "
                       f"{m['guide_class_kept_rate']:.3f} |" for m in masked)
    table += "\n\n" + "\n".join(f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in acceptance.items())
    (out / "results.md").write_text(table + "\n")
    if len(sweep) > 1:
        plot(sweep, out / "tradeoff.png")
    columns = [("guide", strokes)] + [(f"t0={t0}", outputs[t0]) for t0 in args.t0 if t0 in (0.3, 0.5, 0.7, 1.0)]
    if args.masked_t0:
        columns += [("painted", masked_guides), ("mask", masks), (f"masked {args.masked_t0[0]}", outputs[f"masked-{args.masked_t0[0]}"])]
    grid(columns, out / "grid.png", count=min(8, len(strokes)))
    print(f"\n{table}\n\nwrote {out}/results.json, results.md, tradeoff.png, grid.png")


if __name__ == "__main__":
    main()
