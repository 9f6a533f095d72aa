"""``rlvr plot RUN_DIR``: PNG curves of a run's metrics.jsonl (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

from rlvr.metrics import read_metrics

# (file stem, title, metric keys drawn on it)
PANELS = [
    ("reward", "reward", ["reward/mean", "reward/accuracy"]),
    ("accuracy", "held-out accuracy", ["eval/accuracy"]),
    ("kl", "KL to the reference", ["policy/kl"]),
    ("entropy", "token entropy", ["policy/entropy"]),
    ("response_length", "response length (tokens)", ["response/length_mean"]),
]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per panel that has data, plus ``curves.png`` with all of them; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    rows = read_metrics(run)
    out = Path(out_dir) if out_dir is not None else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    panels = [(stem, title, [(k, *_series(rows, k)) for k in keys]) for stem, title, keys in PANELS]
    panels = [(stem, title, [s for s in series if s[1]]) for stem, title, series in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ValueError(f"{run / 'metrics.jsonl'} has none of the plotted metrics")
    written = []

    def draw(ax, title, series):
        for key, xs, ys in series:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    for stem, title, series in panels:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        draw(ax, title, series)
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (stem, title, series) in zip(axes[0], panels):
        draw(ax, title, series)
    fig.suptitle(run.name, fontsize=9)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
