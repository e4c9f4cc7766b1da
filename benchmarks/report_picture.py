"""The README's picture of a compare report: every family's sample grid with its headline figures.

    python benchmarks/report_picture.py REPORT_DIR --out docs/report.png

REPORT_DIR is a finished ``diffvae compare`` folder (its results.json and figures/samples_<family>.png).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def figures_line(r: dict) -> str:
    """FID [interval], ms/sample, bits/dim and (labelled data) class coverage of one family's results."""
    ci = r.get("fid_ci95") or [None, None]
    fid = f"FID {r['fid']:.0f}" + (f" [{ci[0]:.0f}, {ci[1]:.0f}]" if None not in ci else "")
    coverage = f"\nclass entropy {r['class_entropy_ratio']:.2f} of max" if r.get("class_entropy_ratio") is not None else ""
    return f"{fid}\n{r['ms_per_sample']:.3g} ms/sample ({r['nfe']} NFE)\n{r['bpd']:.3f} bits/dim{coverage}"


def draw(report: Path, out: Path) -> None:
    results = json.loads((report / "results.json").read_text())
    families = [f for f in results.get("families_requested", []) if f in results["families"]]
    fig, axes = plt.subplots(1, len(families), figsize=(3.2 * len(families), 4.9))
    for ax, fam in zip(axes, families):
        r = results["families"][fam]
        ax.imshow(Image.open(report / r["figures"]["samples"]), cmap="gray")
        ax.set_title(f"{fam}: {results['training'][fam]['steps']} steps", fontsize=10)
        ax.set_xlabel(figures_line(r), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"diffvae compare --data {results['data']}: budget {results['budget_minutes']:g} min "
                 f"(used {results['elapsed_minutes']:.1f})\n{results.get('eval_samples', '?')} samples per family; "
                 "FID in diffvae's features, 95% interval", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    args = parser.parse_args(argv)
    draw(args.report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
