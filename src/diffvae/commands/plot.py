"""``diffvae plot RUN --out curves.png``: a run's training loss and its held-out eval rows
(``--eval-every``, :mod:`diffvae.monitor`) drawn from ``metrics.jsonl`` with matplotlib — no TensorBoard
needed. A latent family's earlier stages (``<stage>_metrics.jsonl``) are drawn as their own loss curves."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from diffvae.errors import DiffvaeError
from diffvae.outputs import check_output
from diffvae.runs import RunDir, atomic_write_bytes
from diffvae.schema import check_metrics_row

EVAL_PANELS = (("eval_bpd", "held-out bits/dim (cheap bound)"), ("eval_fid", "FID (few samples)"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory (finished or still training)")
    parser.add_argument("--out", required=True, help="curves.png (outside the run folder)")
    parser.add_argument("--force", action="store_true", help="overwrite --out")


def run(args: argparse.Namespace) -> int:
    out = check_output(args.out, args.force, (".png",))
    run_dir = RunDir(args.run)
    run_dir.read_config()  # one line if RUN is not a run
    curves = read_curves(Path(args.run))
    if not curves["loss"]:
        raise DiffvaeError(f"{args.run} has no metrics rows yet")
    atomic_write_bytes(out, draw(curves, Path(args.run).resolve().name))
    print(f"diffvae: wrote the curves of {args.run} → {out}", file=sys.stderr)
    return 0


def read_curves(path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{"loss": {label: [(step, loss)]}, "eval": {key: [(step, value)]}} of a run's metrics files."""
    rows = RunDir(path).read_metrics()
    loss = {"loss": [(r["step"], r["loss"]) for r in rows if "loss" in r]}
    for stage_file in sorted(path.glob("*_metrics.jsonl")):
        stage_rows = _read_rows(stage_file)
        loss[f"{stage_file.name[:-len('_metrics.jsonl')]} loss"] = [(r["step"], r["loss"]) for r in stage_rows if "loss" in r]
    evals = {key: [(r["step"], r[key]) for r in rows if r.get(key) is not None] for key, _ in EVAL_PANELS}
    return {"loss": {k: v for k, v in loss.items() if v}, "eval": {k: v for k, v in evals.items() if v}}


def _read_rows(path: Path) -> list[dict]:
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as e:  # read through the schema as damaged, like metrics.jsonl
        raise DiffvaeError(f"{path} is damaged: not UTF-8 at byte {e.start}") from None
    except OSError as e:
        raise DiffvaeError(f"cannot read {path}: {e.strerror}") from None
    return [check_metrics_row(line, path, i) for i, line in enumerate(lines[:-1], start=1) if line.strip()]


def draw(curves: dict, title: str) -> bytes:
    """A PNG: one panel of loss curves, one per eval figure present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(curves["eval"])
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4), squeeze=False)
    for label, points in curves["loss"].items():
        axes[0, 0].plot(*zip(*points), label=label)
    axes[0, 0].set(xlabel="step", ylabel="training loss", title=title)
    if len(curves["loss"]) > 1:
        axes[0, 0].legend(fontsize=8)
    names = dict(EVAL_PANELS)
    for ax, (key, points) in zip(axes[0, 1:], curves["eval"].items()):
        ax.plot(*zip(*points), marker="o")
        ax.set(xlabel="step", ylabel=names[key], title=names[key])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
