"""``diffvae compare --conditional``: how well each family follows its label (issue 16).

Every family that can be trained on labels is (``--conditional``: the label dropout of
:mod:`diffvae.conditioning` gives each one both p(x | y) and p(x)); after the evaluations each gets a
stage ``control:<family>``, sized to its share of the budget:

1. an iterative family sweeps the classifier-free guidance scale w over ``GUIDANCE_SWEEP`` (FID,
   precision/recall, conditional accuracy and ms/sample of the same class-balanced noise at every w,
   :func:`diffvae.evaluate.guidance_sweep`); a one-pass family (the VAE) has no guidance;
2. fresh samples of every class at the w of the sweep's best accuracy (w = 1 without a sweep) give the
   headline **conditional accuracy** — the feature network's classifier agrees with the asked class —
   with its Wilson interval (fresh, so the w picked on the sweep does not flatter it), the per-class
   FID, and the per-class grid (a row per class).

The report shows a Controllability row, the guidance figure (:func:`guidance_figure`), the grids and
the classic claim "diffusion follows conditions better than a VAE" (:func:`claim_follows_conditions`),
decided only when the accuracies' intervals separate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from diffvae.api import load
from diffvae.compare.stages import compare_samples
from diffvae.compare.style import color, pyplot, save_figure, short, title
from diffvae.compare.verdicts import Figure, UNDECIDED, figure_text
from diffvae.conditioning import num_classes
from diffvae.errors import DiffvaeError
from diffvae.evaluate import EvalConfig, class_samples, conditional_scores, guidance_sweep
from diffvae.families import get_family
from diffvae.images import save_grid
from diffvae.metrics.bootstrap import wilson_interval

GUIDANCE_SWEEP = (0.0, 1.0, 2.0, 3.0, 5.0)
GRID_COLUMNS = 8  # samples per class in the per-class grid
SWEEP_FRACTION = 0.7  # of the stage's network evaluations; the rest: the per-class samples at the chosen w
MIN_PER_CLASS = 4


def check_conditional(dataset, families: tuple[str, ...]) -> None:
    """``--conditional`` needs labelled data and at least one family that takes labels (one line otherwise);
    called before anything is written."""
    if getattr(dataset, "train_labels", None) is None or not getattr(dataset, "num_classes", 0):
        raise DiffvaeError(f"--conditional needs labelled data, but {dataset.name} has no labels "
                           "(use a built-in data set, folder: with class subfolders, or an npz with y)")
    if not any(get_family(f).spec().conditional for f in families):
        raise DiffvaeError(f"--conditional: none of {','.join(families)} can be trained on labels")


def guidance_rows(w: float | None) -> int:
    """Network rows per image and step: guidance w ∉ {0, 1} runs the conditional and unconditional branch."""
    return 1 if w is None or float(w) in (0.0, 1.0) else 2


def control_sizes(spec, model, seconds: float, k: int, n_max: int) -> tuple[int, int]:
    """(samples per guidance scale, samples per class) whose network evaluations fit ``seconds``: the sweep
    gets ``SWEEP_FRACTION``, at most ``n_max`` (compare's sample count) per w and at least 2 per class; the
    per-class samples the rest, between ``MIN_PER_CLASS`` and ``n_max / k``. A one-pass family is cheap:
    no sweep, ``n_max / k`` per class."""
    top = max(MIN_PER_CLASS, n_max // k)
    if not spec.iterative:
        return 0, top
    evaluations = seconds / max(1e-9, spec.unit_cost_seconds(model) * model.nfe())  # images at one row each
    sweep_rows = sum(guidance_rows(w) for w in GUIDANCE_SWEEP)
    n = int(SWEEP_FRACTION * evaluations / sweep_rows) // k * k
    per_class = int((1 - SWEEP_FRACTION) * evaluations / (2 * k))
    return min(n_max, max(2 * k, n)), min(top, max(MIN_PER_CLASS, per_class))


def control_family(family: str, ctx, seconds: float, n_samples: int | None = None) -> dict[str, Any]:
    """The ``control:<family>`` stage: the guidance sweep (at most ``n_samples`` per w, the evaluations' shared
    count), then per-class samples at the w of its best accuracy; returns ``results["control"][family]``
    (``{"conditional": False}`` for an unconditional run)."""
    t0 = time.perf_counter()
    out_dir, dataset, config = Path(ctx.out), ctx.dataset, ctx.config
    model = load(out_dir / "runs" / family, device="cpu")
    k = num_classes(model)
    if not k:
        return {"conditional": False}
    spec, extractor = get_family(family).spec(), ctx.extractor()
    n, per_class = control_sizes(spec, model, 0.9 * seconds, k, n_samples or compare_samples(config.budget_minutes))
    eval_config = EvalConfig(seed=config.seed, guidance_sweep=GUIDANCE_SWEEP if n else (), guidance_sweep_n=n, per_class_n=per_class)
    result: dict[str, Any] = {"conditional": True, "num_classes": k, "per_class_n": per_class}
    if n:
        result.update(guidance_sweep(model, dataset, eval_config, extractor))
    w = result.get("best_guidance_accuracy")
    samples, labels = class_samples(model, dataclasses.replace(eval_config, guidance=w), torch.Generator().manual_seed(config.seed + 1))
    result.update(conditional_scores(samples, labels, dataset, extractor))
    result.update(guidance=w, conditional_accuracy_n=int(labels.numel()), w1=_sweep_row(result, 1.0))
    add_cost_figures(result)
    result["figures"] = {"classes": save_class_grid(samples, k, per_class, out_dir / f"figures/classes_{family}.png", out_dir)}
    result["minutes"] = (time.perf_counter() - t0) / 60.0
    return result


def _sweep_row(result: dict[str, Any], w: float) -> dict[str, Any] | None:
    return next((row for row in result.get("guidance_sweep") or [] if row["guidance"] == w), None)


def save_class_grid(samples: torch.Tensor, k: int, per_class: int, path: Path, out_dir: Path) -> str:
    """A row per class (the first ``GRID_COLUMNS`` samples asked for it); the path relative to ``out_dir``."""
    columns = min(GRID_COLUMNS, per_class)
    rows = samples.reshape(k, per_class, *samples.shape[1:])[:, :columns]
    save_grid(rows.flatten(0, 1), path, nrow=columns, scale=max(1, 64 // samples.shape[-1]))
    return str(path.relative_to(out_dir))


# ----------------------------------------------------------------------------- the report

def control_parts(results: dict[str, Any], fam: str) -> list:
    """The Controllability cell of ``fam`` (cell parts of :mod:`diffvae.compare.report`)."""
    C = f"control.{fam}."
    result = (results.get("control") or {}).get(fam)
    if result is None:
        stage = (results.get("stages") or {}).get(f"control:{fam}", {})
        return [f"control:{fam} failed: {stage.get('error', '')}" if stage.get("status") == "failed" else "not measured"]
    if not result.get("conditional"):
        return ["trained without labels (the family takes none)"]
    parts: list = [("accuracy ", C + "conditional_accuracy"), ("", C + "conditional_accuracy", "ci")]
    if result.get("guidance") is None:
        return parts + [" (one pass, no guidance)"]
    if result["guidance"] == 1.0:  # the conditional model unguided was best: nothing to trade
        return parts + [(" at guidance w = ", C + "guidance"), (" (FID ", C + "w1.fid"), (", recall ", C + "w1.recall"),
                        (", ms/sample ", C + "w1.ms_per_sample"), ")"]
    return parts + [(" at guidance w = ", C + "guidance"), (" (w = 1: ", C + "w1.accuracy"), ("; FID ", C + "w1.fid"),
                    (" → ", C + "controllability_fid"), (", recall ", C + "w1.recall"), (" → ", C + "controllability_recall"),
                    (", ms/sample ", C + "w1.ms_per_sample"), (" → ", C + "controllability_ms"), ")"]


def add_cost_figures(result: dict[str, Any]) -> None:
    """What the chosen w costs against w = 1 (from the sweep's row at w): FID, recall, ms/sample."""
    row = _sweep_row(result, result.get("guidance")) if result.get("guidance") is not None else None
    if row is not None:
        result.update(controllability_fid=row["fid"], controllability_recall=row.get("recall"), controllability_ms=row["ms_per_sample"])


def accuracy_figure(results: dict[str, Any], fam: str):
    """The family's headline conditional accuracy as a report Figure (Wilson interval, n samples)."""
    r = (results.get("control") or {}).get(fam) or {}
    value, ci = r.get("conditional_accuracy"), r.get("conditional_accuracy_ci95")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return Figure(float(value), tuple(ci) if isinstance(ci, (list, tuple)) and None not in ci else None, r.get("conditional_accuracy_n"))


CONDITION_CLAIM = "Conditioning: diffusion follows conditions better than a VAE"


def claim_follows_conditions(decider, autoencoder: str | None, iterative: tuple[str, ...]):
    """(claim, verdict, evidence) from the conditional accuracies: each iterative family's accuracy minus the VAE's,
    tested as two independent proportions with Holm over the families (``decider.question``, which records the
    entries in ``results["comparisons"]``): held when one is decided above the VAE, did not hold when all are
    decided below it; None without both sides."""
    results = decider.results
    vae = accuracy_figure(results, autoencoder) if autoencoder else None
    others = {f: accuracy_figure(results, f) for f in iterative}
    others = {f: v for f, v in others.items() if v is not None}
    if vae is None or not others:
        return None
    entries = decider.question(f"claim:{CONDITION_CLAIM}", "conditional_accuracy", [(f, autoencoder) for f in others])
    outcomes = [e["decided"] for e in entries]
    verdict = ("held" if "a" in outcomes else "did not hold" if outcomes and all(o == "b" for o in outcomes) else UNDECIDED)
    w = {f: (results["control"][f].get("guidance")) for f in others}
    evidence = (f"conditional accuracy (the feature network's classifier agrees with the asked class): {short(autoencoder)} "
                f"{figure_text(vae)}; " + ", ".join(f"{short(f)} {figure_text(v)} at w = {w[f]:g}" for f, v in others.items()))
    need = [e["n_to_decide"] for e in entries if e["decided"] is None and e.get("n_to_decide")]
    if verdict == UNDECIDED and need:
        evidence += f"; about {max(need):,} samples per family would decide it"
    return CONDITION_CLAIM, verdict, evidence


def guidance_figure(results: dict[str, Any], path: Path) -> bool:
    """Conditional accuracy (with Wilson intervals) and FID against the guidance scale w, a line per iterative
    family; a one-pass family's accuracy as a dashed level."""
    control = {f: r for f, r in (results.get("control") or {}).items() if r.get("conditional")}
    if not control:
        return False
    plt = pyplot()
    fig, (acc_ax, fid_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for fam, r in control.items():
        rows = r.get("guidance_sweep") or []
        if rows:
            ws = [row["guidance"] for row in rows]
            cis = [wilson_interval(row["accuracy"], r["guidance_sweep_n"]) for row in rows]
            below = [row["accuracy"] - c[0] for row, c in zip(rows, cis)]  # ≥ 0: the Wilson interval contains p̂
            above = [c[1] - row["accuracy"] for row, c in zip(rows, cis)]
            acc_ax.errorbar(ws, [row["accuracy"] for row in rows], yerr=[below, above], marker="o", capsize=3, label=title(fam),
                            color=color(fam))
            fid_ax.plot(ws, [row["fid"] for row in rows], marker="o", label=title(fam), color=color(fam))
        elif r.get("conditional_accuracy") is not None:
            acc_ax.axhline(r["conditional_accuracy"], linestyle="--", label=f"{title(fam)} (one pass)", color=color(fam))
            if r.get("conditional_accuracy_ci95") and None not in r["conditional_accuracy_ci95"]:
                acc_ax.axhspan(*r["conditional_accuracy_ci95"], alpha=0.15, color=color(fam))
    acc_ax.set(xlabel="guidance scale w", ylabel="conditional accuracy", ylim=(0, 1.02), title="Follows the label")
    fid_ax.set(xlabel="guidance scale w", ylabel="FID (lower is better)", title="Sample quality it costs")
    acc_ax.legend(fontsize=8)
    save_figure(fig, path)
    return True
