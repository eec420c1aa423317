"""Few-step samplers against the exact answer and on the trained default model.

    python benchmarks/samplers.py [--guides 100] [--skip-digits] [--out DIR]

1. Exact-score Gaussian models (service.backends.oracle, data N(0.25, s^2) per pixel, s = 0.2,
   0.3, 0.5; VP, and VE for s = 0.3), served by an in-process `sdedit` server and edited
   through gRPC: every sampler and spacing at 5, 10, 20, 50 calls and the full schedule,
   t0 = 0.3, 0.5, 0.8, a constant guide -0.6. Each edit returns float32 .npy outputs; their
   pooled mean and variance are compared with the exact answer (closed form for Gaussian
   data: the law of x0 | x_t0 for stochastic samplers, the probability-flow map for
   deterministic ones, benchmarks/sampler_math.py), next to the sampler's own closed-form law.
2. The default model (`digits`): stroke guides from held-out digits as in
   benchmarks/quality.py, KID and L2 at 10, 20, 50 calls and the full schedule, t0 = 0.3 and
   0.5, with wall time per edit (ONNX Runtime in process, batches of --batch edits).

Writes results.json, results.md and error_vs_calls.png to --out
(default benchmarks/results/samplers/). The default run takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sampler_math import exact_law, is_deterministic, sampler_law
from sdedit.v1 import sdedit_pb2 as pb
from service.backends.oracle import gaussian_model
from service.backends.repository import model_parameters, write_model
from service.client import Client, build_request
from service.pipeline.imaging import decode_npy, encode_png
from service.sde.schedules import SDESpec, build_schedule

ROOT = Path(__file__).resolve().parent.parent
MU = 0.25
GUIDE_PIXEL = 51  # 51 / 127.5 - 1 = -0.6
GUIDE = GUIDE_PIXEL / 127.5 - 1.0
STDS = (0.2, 0.3, 0.5)
T0S = (0.3, 0.5, 0.8)
CALLS = (5, 10, 20, 50)
VP_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde")
VE_SAMPLERS = ("ddpm", "ddim", "euler_maruyama", "dpmpp_2m", "dpmpp_2m_sde")
SPACINGS = ("time_uniform", "logsnr_uniform", "karras")
VP = SDESpec(sde_type="vp_discrete")
VE = SDESpec(sde_type="ve", timesteps=1000, sigma_min=0.01, sigma_max=50.0)


def oracle_repository(root: Path) -> dict[str, tuple[SDESpec, float]]:
    models = {}
    for spec, stds in ((VP, STDS), (VE, (0.3,))):
        for s in stds:
            name = f"gauss-{'vp' if spec is VP else 've'}-{s}"
            write_model(root, name, gaussian_model(spec, MU, s).SerializeToString(),
                        model_parameters(spec, 32, 32, 1, default_steps=20, flexible_size=True,
                                         description=f"exact eps of N({MU}, {s}^2)"))
            models[name] = (spec, s)
    return models


def oracle_rows(size: int, samples: int, stds=STDS, t0s=T0S, calls=CALLS, seed: int = 0) -> list[dict]:
    """Every configuration edited through an in-process server; one row per edit."""
    from service.testing.servers import InProcessServer, local_settings

    rows = []
    with tempfile.TemporaryDirectory() as work:
        models = oracle_repository(Path(work))
        settings = local_settings(Path(work), default_model=next(iter(models)), cache="none", max_num_samples=64,
                                  onnx_threads=1, max_active_edits=1)
        server = InProcessServer(settings)
        guide = encode_png(np.full((size, size, 1), GUIDE_PIXEL, dtype=np.uint8))
        try:
            with Client(server.address) as client:
                for name, (spec, s) in models.items():
                    if spec is VP and s not in stds:
                        continue
                    schedule = build_schedule(spec)
                    samplers = VP_SAMPLERS if spec is VP else VE_SAMPLERS
                    spacings = SPACINGS if spec is VP else ("time_uniform",)  # VE: logSNR-uniform = time-uniform
                    configs = [(sampler, spacing, n) for sampler in samplers for spacing in spacings for n in calls]
                    configs.append(("ddpm" if spec is VP else "euler_maruyama", "time_uniform", 0))  # the full schedule
                    for t0 in t0s:
                        for sampler, spacing, n in configs:
                            request = build_request(guide, t0=t0, steps=n, sampler=sampler, spacing=spacing, seed=seed,
                                                    num_samples=samples, model=name, npy=True, full_schedule=n == 0)
                            seed += samples
                            rows.append(oracle_row(client, request, schedule, spec, s, t0, sampler, spacing, n))
        finally:
            server.stop()
    return rows


def oracle_row(client: Client, request: pb.EditRequest, schedule, spec: SDESpec, s: float, t0: float,
               sampler: str, spacing: str, n: int) -> dict:
    row = {"sde": spec.sde_type, "std": s, "t0": t0, "sampler": sampler, "spacing": spacing,
           "schedule": "full" if n == 0 else f"{n} calls"}
    deterministic = is_deterministic(sampler)
    exact_mean, exact_var = exact_law(schedule, t0, GUIDE, MU, s, deterministic)
    law_mean, law_var = sampler_law(schedule, t0, n, spacing, sampler, GUIDE, MU, s)
    row |= {"exact_mean": exact_mean, "exact_var": exact_var, "closed_form_mean": law_mean, "closed_form_var": law_var,
            "closed_form_var_ratio": law_var / exact_var}
    started = time.perf_counter()
    try:
        response = client.edit(request, timeout=600)
    except grpc.RpcError as exc:  # a refused configuration is a result
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        row |= {"refused": exc.details()}
        return row
    values = np.concatenate([decode_npy(image.data).ravel() for image in response.images]).astype(np.float64)
    count = values.size
    mean, var = float(values.mean()), float(values.var(ddof=1))
    row |= {
        "network_calls": response.network_calls, "seconds": time.perf_counter() - started, "pixels": count,
        "mean": mean, "var": var, "var_ratio": var / exact_var,
        "var_ratio_se": math.sqrt(2.0 / (count - 1)) * law_var / exact_var,
        "mean_error_in_exact_std": (mean - exact_mean) / math.sqrt(exact_var),
        "mean_se_in_exact_std": math.sqrt(law_var / count / exact_var),
    }
    return row


# --- the trained default model -----------------------------------------------------------------

DIGIT_RUNS = (("dpmpp_2m_sde", "logsnr_uniform"), ("dpmpp_2m", "logsnr_uniform"), ("dpmpp_2m_sde", "time_uniform"),
              ("ddpm", "time_uniform"))


def digits_rows(guides: int, calls=(10, 20, 50), t0s=(0.3, 0.5), batch: int = 100, seed: int = 0,
                runs=DIGIT_RUNS, full: bool = True) -> list[dict]:
    from benchmarks.quality import Classifier, row
    from benchmarks.quality_metrics import simulate_strokes
    from service.backends.onnx import OnnxScoreModel
    from service.config import load_settings
    from service.pipeline.imaging import to_pixels
    from service.sde import EditParams, run_sdedit
    from training.digits import load_split, to_model_range

    settings = load_settings(env={})
    model = OnnxScoreModel(settings.model_repository / settings.default_model)
    schedule = build_schedule(model.info.sde)
    classify = Classifier()
    split = load_split()
    rng = np.random.default_rng(seed)
    real = split.held_out_images
    classify.calibrate(real)
    real_features, _ = classify(real)
    picks = rng.permutation(len(real))[:guides]
    strokes = np.stack([simulate_strokes(image, rng) for image in real[picks]])
    labels = split.held_out_labels[picks]
    configs = [(sampler, spacing, n) for sampler, spacing in runs for n in calls] + ([("ddpm", "time_uniform", 0)] if full else [])
    out = []
    for t0 in t0s:
        for sampler, spacing, n in configs:
            params = EditParams(t0=t0, steps=n, sampler=sampler, spacing=spacing)
            started = time.perf_counter()
            outputs, calls_made = [], 0
            for start in range(0, len(strokes), batch):
                chunk = strokes[start:start + batch]
                rngs = [np.random.default_rng(seed + start + i) for i in range(len(chunk))]
                result = run_sdedit(model.predict_eps, schedule, to_model_range(chunk), None, params, rngs)
                outputs += [to_pixels(x)[:, :, 0] for x in result.samples]
                calls_made = result.network_calls
            seconds = time.perf_counter() - started
            r = row("strokes -> SDEdit", np.stack(outputs), real_features, classify, t0=t0, guides=strokes, labels=labels,
                    seconds=seconds)
            out.append({"t0": t0, "sampler": sampler, "spacing": spacing, "schedule": "full" if n == 0 else f"{n} calls",
                        "network_calls": calls_made, "n": r.n, "kid": r.kid, "kid_std": r.kid_std, "l2": r.l2,
                        "top_prob": r.top_prob, "class_agreement": r.class_agreement,
                        "seconds_per_edit": seconds / len(strokes), "batch": batch})
            print(f"digits t0={t0} {sampler} {spacing} {out[-1]['schedule']}: KID {1e3 * r.kid:.1f} ± {1e3 * r.kid_std:.1f} "
                  f"(x1e3), L2 {r.l2:.2f}, {out[-1]['seconds_per_edit'] * 1e3:.1f} ms per edit", flush=True)
    model.close()
    return out


def digits_acceptance(rows: list[dict], default: tuple[str, str, int]) -> dict[str, bool]:
    """The model's default edit (sampler, spacing, steps from its config.pbtxt) against the full schedule, per t0."""
    sampler, spacing, steps = default
    checks = {}
    for t0 in sorted({r["t0"] for r in rows}):
        full = next(r for r in rows if r["t0"] == t0 and r["schedule"] == "full")
        chosen = next((r for r in rows if r["t0"] == t0 and (r["sampler"], r["spacing"], r["schedule"])
                       == (sampler, spacing, f"{steps} calls")), None)
        if chosen is None:
            continue
        kid_ok = chosen["kid"] <= full["kid"] + max(0.1 * abs(full["kid"]), full["kid_std"])
        l2_ok = abs(chosen["l2"] - full["l2"]) <= 0.1 * full["l2"]
        what = f"t0={t0}: the default edit ({sampler}, {spacing}, {steps} calls)"
        checks[f"{what} uses <= 25 calls"] = chosen["network_calls"] <= 25
        checks[f"{what}: KID within 10% or one KID std of the full schedule's"] = kid_ok
        checks[f"{what}: L2 within 10% of the full schedule's"] = l2_ok
    return checks


def default_edit() -> tuple[str, str, int]:
    """The default model's steps = 0 edit, from its config.pbtxt."""
    from service.backends.repository import load_model_info
    from service.config import load_settings

    settings = load_settings(env={})
    info = load_model_info(settings.model_repository / settings.default_model)
    return info.default_sampler, info.default_spacing, info.default_steps


# --- reporting -----------------------------------------------------------------------------------

def oracle_table(rows: list[dict]) -> str:
    lines = ["| SDE | data std | t0 | sampler | spacing | schedule | calls | var / exact (through the service, ± SE) | "
             "var / exact (closed form) | mean error (exact std units) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['sde']} | {r['std']} | {r['t0']} | {r['sampler']} | {r['spacing']} | {r['schedule']} | - | "
                         f"refused (INVALID_ARGUMENT) | {r['closed_form_var_ratio']:.3f} | - |")
            continue
        lines.append(f"| {r['sde']} | {r['std']} | {r['t0']} | {r['sampler']} | {r['spacing']} | {r['schedule']} | "
                     f"{r['network_calls']} | {r['var_ratio']:.3f} ± {r['var_ratio_se']:.3f} | {r['closed_form_var_ratio']:.3f} | "
                     f"{r['mean_error_in_exact_std']:+.4f} |")
    return "\n".join(lines)


def summary_table(rows: list[dict], std: float = 0.3, sde: str = "vp_discrete") -> str:
    """Closed-form var / exact at each call count, one line per sampler and spacing (data std `std`)."""
    schedules = [f"{n} calls" for n in CALLS]
    lines = [f"| sampler, spacing ({sde}, data std {std}) | t0 | " + " | ".join(schedules) + " |",
             "|---|---|" + "---|" * len(schedules)]
    keys = sorted({(r["sampler"], r["spacing"]) for r in rows if r["std"] == std and r["sde"] == sde and r["schedule"] != "full"})
    for sampler, spacing in keys:
        for t0 in T0S:
            cells = []
            for schedule in schedules:
                match = [r for r in rows if (r["sde"], r["std"], r["t0"], r["sampler"], r["spacing"], r["schedule"])
                         == (sde, std, t0, sampler, spacing, schedule)]
                if not match:
                    cells.append("")
                elif "refused" in match[0]:
                    cells.append(f"refused ({match[0]['closed_form_var_ratio']:.2f})")
                else:
                    cells.append(f"{match[0]['var_ratio']:.3f} ({match[0]['closed_form_var_ratio']:.3f})")
            lines.append(f"| {sampler}, {spacing} | {t0} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def digits_table(rows: list[dict]) -> str:
    lines = ["| t0 | sampler | spacing | schedule | calls | KID (x1e3) | L2 | top-class prob | ms per edit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['t0']} | {r['sampler']} | {r['spacing']} | {r['schedule']} | {r['network_calls']} | "
                     f"{1e3 * r['kid']:.1f} ± {1e3 * r['kid_std']:.1f} | {r['l2']:.2f} | {r['top_prob']:.3f} | "
                     f"{1e3 * r['seconds_per_edit']:.1f} |")
    return "\n".join(lines)


COLOURS = {"ddpm": "tab:red", "ddim": "tab:orange", "euler_maruyama": "tab:gray", "dpmpp_2m": "tab:blue",
           "dpmpp_2m_sde": "tab:green"}
LINESTYLES = {"time_uniform": ":", "logsnr_uniform": "-", "karras": "--"}


def plot(rows: list[dict], path: Path, std: float = 0.3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(T0S), figsize=(5 * len(T0S), 4), dpi=110, sharey=True)
    for ax, t0 in zip(np.atleast_1d(axes), T0S):
        keys = sorted({(r["sampler"], r["spacing"]) for r in rows if r["sde"] == "vp_discrete" and r["std"] == std
                       and r["schedule"] != "full"})
        for sampler, spacing in keys:
            pts = sorted((r["network_calls"], abs(r["var_ratio"] - 1.0)) for r in rows
                         if (r["sde"], r["std"], r["t0"], r["sampler"], r["spacing"]) == ("vp_discrete", std, t0, sampler, spacing)
                         and r["schedule"] != "full" and "refused" not in r)
            if pts:  # colour: the sampler; line style: the spacing
                ax.plot(*zip(*pts), marker="o", linestyle=LINESTYLES[spacing], color=COLOURS[sampler],
                        label=f"{sampler}, {spacing}", linewidth=1, markersize=3)
        full = [r for r in rows if (r["sde"], r["std"], r["t0"], r["schedule"]) == ("vp_discrete", std, t0, "full")]
        if full:
            ax.plot([full[0]["network_calls"]], [abs(full[0]["var_ratio"] - 1.0)], "k*", markersize=9, label="full DDPM schedule")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network calls")
        ax.set_title(f"t0 = {t0}, data std {std} (vp_discrete)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("|output variance / exact - 1| (through the service)")
    np.atleast_1d(axes)[-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report_text(result: dict) -> list[str]:
    text = []
    if "oracle" in result:
        rows = result["oracle"]
        stds = sorted({r["std"] for r in rows if r["sde"] == "vp_discrete"})
        text += ["## Exact-score Gaussian models, through the service", "",
                 "Output variance / exact variance through the service (the sampler's closed form in parentheses); "
                 f"data N({MU}, std^2), guide {GUIDE:.1f}, {result['oracle_seconds']:.0f} s.", ""]
        for std in stds:
            text += [summary_table(rows, std), ""]
        text += [summary_table(rows, 0.3, "ve"), "", "### Every edit", "", oracle_table(rows), ""]
    if "digits" in result:
        text += ["## The default model (digits), stroke guides", "", digits_table(result["digits"]), ""]
        text += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in result["acceptance"].items()]
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="oracle guide side (pixels per sample = size^2)")
    parser.add_argument("--samples", type=int, default=16, help="oracle samples per edit (pooled pixels = samples x size^2)")
    parser.add_argument("--stds", type=float, nargs="*", default=list(STDS))
    parser.add_argument("--guides", type=int, default=100, help="digits stroke guides per configuration")
    parser.add_argument("--digits-calls", type=int, nargs="*", default=[10, 20, 25, 50])
    parser.add_argument("--digits-t0", type=float, nargs="*", default=[0.3, 0.5])
    parser.add_argument("--digits-runs", nargs="*", default=[f"{a}:{b}" for a, b in DIGIT_RUNS[:3]],
                        help="SAMPLER:SPACING pairs run on the digits model besides the full schedule (default: "
                             "DPM-Solver++(2M) SDE and ODE on logSNR-uniform levels, the SDE on time-uniform levels)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--skip-oracle", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "samplers")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "mu": MU, "guide": GUIDE}
    if not args.skip_oracle:
        started = time.perf_counter()
        rows = oracle_rows(args.size, args.samples, stds=tuple(args.stds))
        result["oracle"] = rows
        result["oracle_seconds"] = time.perf_counter() - started
        plot(rows, args.out / "error_vs_calls.png", std=0.3 if 0.3 in args.stds else args.stds[0])
    if not args.skip_digits:
        started = time.perf_counter()
        runs = tuple(tuple(pair.split(":")) for pair in args.digits_runs)
        rows = digits_rows(args.guides, tuple(args.digits_calls), tuple(args.digits_t0), args.batch, runs=runs)
        result["digits"] = rows
        result["digits_seconds"] = time.perf_counter() - started
        result["default_edit"] = default_edit()
        result["acceptance"] = digits_acceptance(rows, result["default_edit"])
    previous = args.out / "results.json"
    if previous.is_file():  # a part skipped this time keeps its last recorded run
        kept = json.loads(previous.read_text())
        for part, keys in (("oracle", ("oracle", "oracle_seconds")), ("digits", ("digits", "digits_seconds", "default_edit", "acceptance"))):
            if part not in result and part in kept:
                result |= {key: kept[key] for key in keys if key in kept}
    text = report_text(result)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text("\n".join(text) + "\n")
    print("\n".join(text[-12:]))
    print(f"wrote {args.out}/results.json, results.md" + ("" if args.skip_oracle else ", error_vs_calls.png"))
    return result


if __name__ == "__main__":
    main()
