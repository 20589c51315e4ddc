"""Training curves (train and validation loss against tokens seen) from runs' log.csv.

    python -m ternary_train.plot RUN_DIR [RUN_DIR ...] -o curve.png
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path


def read_log(run: Path) -> list[dict]:
    with (Path(run) / "log.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot(runs: list[Path], out: Path, labels: list[str] | None = None, title: str | None = None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, run in enumerate(runs):
        rows = [r for r in read_log(run) if r["step"] > 1]
        if not rows:
            continue
        name = labels[i] if labels else Path(run).name
        t = [r["tokens"] / 1e6 for r in rows]
        line, = ax.plot(t, [r["train_loss"] for r in rows], alpha=0.6, label=f"{name} train")
        ax.plot(t, [r["val_loss"] for r in rows], color=line.get_color(), marker=".",
                label=f"{name} val (last estimate: ppl {math.exp(rows[-1]['val_loss']):.0f})")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("loss (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=Path("training_curve.png"))
    ap.add_argument("--labels", default=None, help="comma-separated, one per run")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    print(plot([r.expanduser() for r in args.runs], args.out, labels, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
