"""PNG plots of a load test: latency over time and a latency histogram (needs matplotlib).

matplotlib is in the `dev` extra, not a service dependency: without it the plots are
skipped with a note and the load test runs as usual.
"""

from __future__ import annotations

from pathlib import Path

from service.loadtest.runner import Record

OVER_TIME, HISTOGRAM = "latency-over-time.png", "latency-histogram.png"


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(records: list[Record], report: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    title = f"sdedit loadtest: {report['config']['mode']} loop, model {report['model']['name']}"
    ok = [r for r in records if r.code == "OK"]
    failed = [r for r in records if r.code != "OK"]
    paths = [folder / OVER_TIME, folder / HISTOGRAM]

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    warmup = report["config"]["warmup_seconds"]
    if warmup > 0:
        ax.axvspan(-warmup, 0, color="0.9", label="warm-up (not counted)")
    ax.scatter([r.intended for r in ok], [r.latency for r in ok], s=8, label="ok")
    if failed:
        ax.scatter([r.intended for r in failed], [r.latency for r in failed], s=14, marker="x", color="tab:red",
                   label="error")
    p99 = report["latency_seconds"]["p99"]
    if p99 is not None:
        ax.axhline(p99, color="tab:orange", linestyle="--", linewidth=1, label=f"p99 {p99:.3f} s")
    ax.set_xlabel("intended send time (s from the end of warm-up)")
    ax.set_ylabel("latency (s, from intended send)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(paths[0])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    measured = [r.latency for r in ok if not r.warmup]
    if measured:
        ax.hist(measured, bins=min(50, max(10, len(measured) // 5)), color="tab:blue")
    for name, style in (("p50", "-"), ("p99", "--")):
        value = report["latency_seconds"][name]
        if value is not None:
            ax.axvline(value, color="tab:orange", linestyle=style, linewidth=1, label=f"{name} {value:.3f} s")
    ax.set_xlabel("latency (s, from intended send)")
    ax.set_ylabel("requests")
    ax.set_title(f"{title}: {len(measured)} measured requests")
    if measured:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(paths[1])
    plt.close(fig)
    return paths
