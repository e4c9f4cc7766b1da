"""Calibration of diffvae's intervals and paired tests (issue 23, items 8a and 8b).

coverage  — every interval type at N = 50, 100, 200, 500 on d = 128 Gaussian features (reference M = 500, the size
            of mnist's held-out split): the share of repeats whose 95% interval contains the quantity it is for.
            Single-set intervals (FID@N, KID, precision, recall; jackknife over the generated rows) are for the
            expectation over generated sets given the shared reference, Monte-Carlo'd from fresh generated sets;
            paired differences (jackknife over both generated sets and the shared reference) for the expected
            difference over generated sets and references, Monte-Carlo'd likewise; bits/dim (paired t), probe
            accuracy (paired per image), speed (Welch) and the sharpness gap (paired bootstrap) against their
            closed forms or Monte-Carlo values.
false     — false decisions on real data: two disjoint random sets of real training images scored as two
            "models" against the held-out split (mnist features), many splits: the share decided at α = 0.05.

    nice -n 10 python benchmarks/bench_calibration.py [--only coverage|false] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import results_path, write_json  # noqa: E402

from diffvae.metrics import paired as P  # noqa: E402

D = 128
REFERENCE = 500
SIZES = (50, 100, 200, 500)
REPEATS = {50: 80, 100: 80, 200: 40, 500: 20}
TRUTH_DRAWS = 100
SAMPLE_METRICS = ("fid", "kid", "precision", "recall")


class Gaussians:
    """Reference, family A and family B feature distributions (two spectra; B has a collapsed half)."""

    def __init__(self, seed: int = 0):
        self.g = torch.Generator().manual_seed(seed)
        self.spectrum = torch.linspace(1.0, 0.05, D, dtype=torch.float64)

    def draw(self, which: str, n: int) -> torch.Tensor:
        x = torch.randn(n, D, generator=self.g, dtype=torch.float64)
        if which == "ref":
            return x * self.spectrum.sqrt()
        if which == "a":
            return x * (1.2 * self.spectrum).sqrt() + 0.03
        scale = self.spectrum.clone()
        scale[D // 2:] *= 0.3  # a partly collapsed generator
        return x * scale.sqrt()


def _covered(ci, truth: float) -> bool:
    return ci[0] <= truth <= ci[1]


def coverage_single(gauss: Gaussians, n: int, repeats: int) -> dict[str, float]:
    reference = gauss.draw("ref", REFERENCE)
    out = {}
    for metric in SAMPLE_METRICS:
        truth = sum(P.estimate(metric, reference, gauss.draw("a", n)) for _ in range(TRUTH_DRAWS)) / TRUTH_DRAWS
        hits = [_covered(P.metric_interval(metric, reference, gauss.draw("a", n))[1], truth) for _ in range(repeats)]
        out[f"{metric}@N"] = sum(hits) / repeats
    return out


def coverage_paired(gauss: Gaussians, n: int, repeats: int) -> dict[str, float]:
    out = {}
    for metric in SAMPLE_METRICS:
        truth = sum(P.estimate(metric, r := gauss.draw("ref", REFERENCE), gauss.draw("a", n))
                    - P.estimate(metric, r, gauss.draw("b", n)) for _ in range(TRUTH_DRAWS)) / TRUTH_DRAWS
        hits = [_covered(P.paired_sample_difference(metric, gauss.draw("ref", REFERENCE), gauss.draw("a", n),
                                                    gauss.draw("b", n)).ci95, truth) for _ in range(repeats)]
        out[f"{metric} difference"] = sum(hits) / repeats
    return out


def coverage_per_item(n: int, repeats: int, seed: int = 1) -> dict[str, float]:
    """Paired t on skewed per-image bits/dim, paired per-image probe correctness, Welch on 5 timing repeats,
    paired bootstrap on the sharpness gap."""
    g = torch.Generator().manual_seed(seed)
    hits = {"bpd difference (paired t)": 0, "probe accuracy difference (paired)": 0,
            "ms/sample difference (Welch, 5 repeats)": 0, "sharpness gap difference (paired bootstrap)": 0}
    sharp_truth = _sharpness_truth(n, g)
    for _ in range(repeats):
        base = _gamma(n, g)  # image difficulty, skewed
        bpd_a = 1.4 + 0.3 * base + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
        bpd_b = 1.43 + 0.35 * base + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
        hits["bpd difference (paired t)"] += _covered(P.paired_mean_difference("bpd", bpd_a, bpd_b).ci95, 1.4 + 0.3 - 1.43 - 0.35)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        correct_a, correct_b = (u < 0.8).double(), (u < 0.75).double()  # correlated: the same hard images
        hits["probe accuracy difference (paired)"] += _covered(P.paired_proportion_difference("probe_accuracy", correct_a, correct_b).ci95, 0.05)
        ms_a = 2.0 * torch.exp(0.1 * torch.randn(5, generator=g, dtype=torch.float64))
        ms_b = 3.0 * torch.exp(0.2 * torch.randn(5, generator=g, dtype=torch.float64))
        hits["ms/sample difference (Welch, 5 repeats)"] += _covered(P.welch_difference("ms_per_sample", ms_a, ms_b).ci95,
                                                                    2.0 * math.exp(0.005) - 3.0 * math.exp(0.02))
        sa, sb, sr = _gamma(n, g, 2.0), _gamma(n, g, 3.0) * 0.7, _gamma(REFERENCE, g, 2.0)
        hits["sharpness gap difference (paired bootstrap)"] += _covered(
            P.paired_scalar_bootstrap("sharpness_gap", P.sharpness_gap, sa, sb, sr, 400, g).ci95, sharp_truth)
    return {k: v / repeats for k, v in hits.items()}


def _gamma(n: int, g: torch.Generator, shape: float = 2.0) -> torch.Tensor:
    """Gamma(shape, 1)/shape draws from sums of exponentials (shape an integer): mean 1, skewed."""
    k = int(shape)
    return -torch.log(torch.rand(n, k, generator=g, dtype=torch.float64)).sum(1) / k


def _sharpness_truth(n: int, g: torch.Generator) -> float:
    draws = [float(P.sharpness_gap(_gamma(n, g, 2.0).mean(), _gamma(REFERENCE, g, 2.0).mean())
                   - P.sharpness_gap(_gamma(n, g, 3.0).mean() * 0.7, _gamma(REFERENCE, g, 2.0).mean())) for _ in range(2000)]
    return sum(draws) / len(draws)


def run_coverage(quick: bool) -> dict:
    gauss = Gaussians()
    table = {}
    for n in SIZES:
        repeats = max(10, REPEATS[n] // (5 if quick else 1))
        t0 = time.process_time()
        row = {**coverage_single(gauss, n, repeats), **coverage_paired(gauss, n, repeats), **coverage_per_item(n, repeats)}
        table[str(n)] = {"repeats": repeats, "coverage": row, "cpu_seconds": time.process_time() - t0}
        print(n, json.dumps(table[str(n)]), flush=True)
    return table


def run_supplement(quick: bool) -> dict:
    """More repeats at N = 500, where the main table has 20: the per-item intervals (cheap) and precision@N."""
    repeats = 40 if quick else 200
    row = coverage_per_item(500, repeats, seed=2)
    gauss = Gaussians(seed=3)
    reference = gauss.draw("ref", REFERENCE)
    truth = sum(P.estimate("precision", reference, gauss.draw("a", 500)) for _ in range(TRUTH_DRAWS)) / TRUTH_DRAWS
    n_pr = 12 if quick else 60
    row["precision@N"] = sum(_covered(P.metric_interval("precision", reference, gauss.draw("a", 500))[1], truth)
                             for _ in range(n_pr)) / n_pr
    return {"500": {"repeats": repeats, "precision_repeats": n_pr, "coverage": row}}


def run_false_decisions(quick: bool, splits: int = 60, n: int = 200) -> dict:
    """Two disjoint random sets of n real training images against the held-out split, ``splits`` times."""
    from diffvae.data import load_data
    from diffvae.metrics.features import get_feature_extractor

    dataset = load_data("mnist")
    extractor = get_feature_extractor(dataset)
    reference = torch.as_tensor(extractor.features(dataset.test)).double()
    train = torch.as_tensor(extractor.features(dataset.train)).double()
    g = torch.Generator().manual_seed(0)
    splits = splits // (5 if quick else 1)
    decided = {m: 0 for m in SAMPLE_METRICS}
    for _ in range(splits):
        order = torch.randperm(train.shape[0], generator=g)
        a, b = train[order[:n]], train[order[n:2 * n]]
        for metric in SAMPLE_METRICS:
            decided[metric] += P.paired_sample_difference(metric, reference, a, b).decided() is not None
    return {"splits": splits, "n": n, "reference": int(reference.shape[0]), "data": "mnist",
            "decided_share": {m: v / splits for m, v in decided.items()}}


def render(coverage: dict, false: dict) -> str:
    """The RESULTS.md tables from the two JSON files."""
    sizes = list(coverage["coverage"])
    kinds = list(coverage["coverage"][sizes[0]]["coverage"])
    lines = ["| interval (nominal 95%) | " + " | ".join(f"N = {n}" for n in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{coverage['coverage'][n]['coverage'][kind]:.0%}" for n in sizes) + " |")
    lines.append("| repeats | " + " | ".join(str(coverage["coverage"][n]["repeats"]) for n in sizes) + " |")
    f = false["false_decisions"]
    lines += ["", f"False decisions, {f['splits']} splits of {f['n']} + {f['n']} real {f['data']} training images against the "
              f"{f['reference']} held-out images (paired jackknife, α = 0.05):", "",
              "| metric | decided |", "|---|---:|"]
    lines += [f"| {m} | {v:.1%} |" for m, v in f["decided_share"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("coverage", "false", "supplement"), default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render", action="store_true", help="print RESULTS.md's tables from the last JSON files")
    args = parser.parse_args()
    if args.render:
        read = lambda name: json.load(open(results_path(name, args.quick)))  # noqa: E731
        print(render(read("bench_calibration_coverage"), read("bench_calibration_false")))
        return
    torch.set_num_threads(1)
    out = {"d": D, "reference": REFERENCE, "truth_draws": TRUTH_DRAWS}
    t0 = time.process_time()
    if args.only in (None, "false"):
        out["false_decisions"] = run_false_decisions(args.quick)
        print(json.dumps(out["false_decisions"]), flush=True)
    if args.only in (None, "coverage"):
        out["coverage"] = run_coverage(args.quick)
    if args.only in (None, "supplement"):
        out["supplement"] = run_supplement(args.quick)
        print(json.dumps(out["supplement"]), flush=True)
    out["cpu_seconds"] = time.process_time() - t0
    suffix = f"_{args.only}" if args.only else ""
    write_json(results_path(f"bench_calibration{suffix}", args.quick), out)


if __name__ == "__main__":
    main()
