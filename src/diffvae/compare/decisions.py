"""Compare's statistics step: every verdict of the report as a paired test, stored in ``results.json``.

:class:`Decider` answers "is family a better than family b on metric m?" from the evidence each evaluation
stored (:mod:`diffvae.compare.evidence`) with the paired tests of :mod:`diffvae.metrics.paired`:

* FID@N, KID, precision, recall and midpoint FID@n — paired jackknife over both generated sets and the
  shared reference (the figures' own estimand: at the shared sample count, against the shared reference);
* bits/dim — paired t over the same held-out images (the first n both measured, in order);
* probe accuracy — exact McNemar test over the same probe test images;
* ms/sample — Welch's test over the timed batches;
* the sharpness gap |log(sharpness / real sharpness)| — paired bootstrap with the real images shared.

Without evidence (results from an older diffvae) it falls back to an unpaired normal test from the two stored
95% intervals, and says so in ``method``. A question over several pairs (a claim, or "best": the leader
against every other family) adjusts the p-values by Holm and says so; every answered pair becomes one entry of
``results["comparisons"]`` (schema in docs/issue 23), and ``results["best"]`` holds one entry per use.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from diffvae.metrics.paired import (
    ALPHA,
    LOWER_IS_BETTER,
    Comparison,
    SequentialPlan,
    holm,
    independent_proportion_difference,
    normal_comparison,
    paired_mean_difference,
    paired_proportion_difference,
    paired_sample_difference,
    paired_scalar_bootstrap,
    sharpness_gap,
    welch_difference,
)
from diffvae.compare.style import spec_or_none

# (use, metric, label, unit of "about N ... would decide it")
USES = (
    ("sample quality", "fid", "FID@{n}", "samples per family"),
    ("generation speed", "ms_per_sample", "ms/sample", "timed sampling batches per family"),
    ("likelihood", "bpd", "bits/dim (bounds only)", "held-out images"),
    ("representation", "probe_accuracy", "linear-probe accuracy", "probe test images"),
    ("interpolation", "midpoint_fid", "midpoint FID@{n}", "midpoint pairs per family"),
    ("sharpness", "sharpness_gap", "|log sharpness ratio|", "samples per family"),
)
CONTROLLABILITY = ("controllability", "conditional_accuracy", "accuracy", "samples per family")  # --conditional only
UNITS = {metric: unit for _, metric, _, unit in USES} | {m: "samples per family" for m in ("kid", "precision", "recall")}
SIZE_KEYS = {"fid": "n_samples", "kid": "n_samples", "precision": "n_samples", "recall": "n_samples",
             "sharpness_gap": "n_samples", "midpoint_fid": "midpoint_n", "bpd": "bpd_n", "probe_accuracy": "probe_n",
             "ms_per_sample": "ms_per_sample_repeats", "conditional_accuracy": "conditional_accuracy_n"}


def _finite(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def stored_interval(family: dict[str, Any], key: str) -> tuple[float, float] | None:
    ci = family.get(f"{key}_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(v) is not None for v in ci):
        return (float(ci[0]), float(ci[1]))
    return None


def figure_value(family: dict[str, Any], metric: str) -> tuple[float | None, tuple[float, float] | None]:
    """The printed figure of ``metric`` and its stored 95% interval (the sharpness gap derived from the ratio)."""
    if metric != "sharpness_gap":
        return _finite(family.get(metric)), stored_interval(family, metric)
    ratio = _finite(family.get("sharpness_ratio"))
    if ratio is None or ratio <= 0:
        return None, None
    ci = stored_interval(family, "sharpness_ratio")
    if ci is None or ci[0] <= 0:
        return abs(math.log(ratio)), None
    ends = sorted((abs(math.log(ci[0])), abs(math.log(ci[1]))))
    return abs(math.log(ratio)), ((0.0, ends[1]) if ci[0] <= 1.0 <= ci[1] else (ends[0], ends[1]))


class Decider:
    """Paired comparisons between the families of ``results`` from their ``evidence`` ({family: tensors}, and
    "reference"), recorded as entries; ``plan`` spends α over the looks of the evaluation (one look by default)."""

    def __init__(self, results: dict[str, Any], evidence: dict[str, dict] | None = None,
                 plan: SequentialPlan | None = None, look: int = 1):
        self.results, self.evidence = results, evidence or {}
        self.plan, self.look = plan or SequentialPlan(), look
        self.entries: list[dict[str, Any]] = []
        self._cache: dict[tuple[str, str, str], Comparison | None] = {}

    @property
    def level(self) -> float:
        return self.plan.level(self.look)

    def family(self, name: str, metric: str = "") -> dict[str, Any]:
        """The family's figures: its evaluation's, or its controllability stage's for ``conditional_accuracy``."""
        where = "control" if metric == "conditional_accuracy" else "families"
        return (self.results.get(where) or {}).get(name) or {}

    # ------------------------------------------------------------------ one pair
    def comparison(self, metric: str, a: str, b: str) -> Comparison | None:
        """metric(a) − metric(b), paired where the evidence allows; None where either figure is missing."""
        key = (metric, a, b)
        if key not in self._cache:
            self._cache[key] = self._paired(metric, a, b) or self._from_intervals(metric, a, b)
        return self._cache[key]

    def _paired(self, metric: str, a: str, b: str) -> Comparison | None:
        if metric == "conditional_accuracy":
            return self._proportions(metric, a, b)
        ea, eb, ref = self.evidence.get(a), self.evidence.get(b), self.evidence.get("reference") or {}
        if ea is None or eb is None:
            return None
        lower = LOWER_IS_BETTER.get(metric, True)
        if metric in ("fid", "kid", "precision", "recall") and "features" in ea and "features" in eb and "features" in ref:
            return paired_sample_difference(metric, ref["features"], ea["features"], eb["features"])
        if metric == "midpoint_fid" and "midpoint_features" in ea and "midpoint_features" in eb and "features" in ref:
            return dataclasses.replace(paired_sample_difference("fid", ref["features"], ea["midpoint_features"],
                                                                eb["midpoint_features"]), metric="midpoint_fid")
        if metric == "bpd" and "bpd" in ea and "bpd" in eb:
            n = min(ea["bpd"].numel(), eb["bpd"].numel())
            return paired_mean_difference("bpd", ea["bpd"][:n], eb["bpd"][:n], lower_is_better=lower) if n >= 2 else None
        if metric == "probe_accuracy" and "probe_correct" in ea and "probe_correct" in eb:
            n = min(ea["probe_correct"].numel(), eb["probe_correct"].numel())
            return paired_proportion_difference(metric, ea["probe_correct"][:n], eb["probe_correct"][:n],
                                                unit="probe test images") if n else None
        if metric == "ms_per_sample" and "ms_repeats" in ea and "ms_repeats" in eb:
            if min(ea["ms_repeats"].numel(), eb["ms_repeats"].numel()) >= 2:
                return welch_difference(metric, ea["ms_repeats"], eb["ms_repeats"], unit="timed sampling batches")
        if metric in ("sharpness_gap", "sharpness_ratio") and all("sharpness" in e for e in (ea, eb, ref)):
            statistic = sharpness_gap if metric == "sharpness_gap" else (lambda sample, real: sample / real)
            return paired_scalar_bootstrap(metric, statistic, ea["sharpness"], eb["sharpness"], ref["sharpness"],
                                           lower_is_better=lower)
        return None

    def _proportions(self, metric: str, a: str, b: str) -> Comparison | None:
        """Two families' shares of their own samples (different samples: independent, not paired)."""
        (pa, _), (pb, _) = figure_value(self.family(a, metric), metric), figure_value(self.family(b, metric), metric)
        na, nb = (int(self.family(f, metric).get(SIZE_KEYS[metric]) or 0) for f in (a, b))
        if pa is None or pb is None or min(na, nb) < 1:
            return None
        return independent_proportion_difference(metric, pa, na, pb, nb)

    def _from_intervals(self, metric: str, a: str, b: str) -> Comparison | None:
        (va, ca), (vb, cb) = figure_value(self.family(a, metric), metric), figure_value(self.family(b, metric), metric)
        if va is None or vb is None or ca is None or cb is None:
            return None
        se = math.hypot((ca[1] - ca[0]) / 2 / 1.959963984540054, (cb[1] - cb[0]) / 2 / 1.959963984540054)
        n = min(int(self.family(f, metric).get(SIZE_KEYS.get(metric, ""), 0) or 0) for f in (a, b))
        return normal_comparison(metric, va - vb, se, n, "unpaired normal test from the two stored 95% intervals "
                                 "(no per-item evidence stored)", lower_is_better=LOWER_IS_BETTER.get(metric, True),
                                 n_scales=metric not in ("fid", "midpoint_fid", "precision", "recall") and n > 0)

    # ------------------------------------------------------------------ a question over several pairs
    def question(self, question: str, metric: str, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """One entry per measurable pair, Holm-adjusted over them; recorded in :attr:`entries`."""
        found = [(a, b, c) for a, b in pairs if (c := self.comparison(metric, a, b)) is not None]
        if not found:
            return []
        adjusted = holm([c.p_value for _, _, c in found]) if len(found) > 1 else [found[0][2].p_value]
        m = len(found)
        note = (f"; Holm over {m} pairs" if m > 1 else "") + self.plan.describe()
        entries = []
        for (a, b, c), p in zip(found, adjusted):
            entry = dataclasses.replace(c, p_value=p).entry(question, a, b, alpha=self.level, note=note)
            if entry["decided"] is None:  # the power calculation at the level each test is held to (Bonferroni bound)
                entry["n_to_decide"] = c.n_to_decide(self.level / m)
            entries.append(entry)
        self.entries.extend(entries)
        return entries

    # ------------------------------------------------------------------ best per use
    def candidates(self, metric: str) -> list[str]:
        """Families with a figure of ``metric``; for bits/dim only those whose bpd is a bound."""
        out = []
        for fam in self.results.get("control" if metric == "conditional_accuracy" else "families") or {}:
            spec = spec_or_none(fam)
            if metric == "bpd" and spec is not None and not getattr(spec, "bpd_is_bound", True):
                continue
            if figure_value(self.family(fam, metric), metric)[0] is not None:
                out.append(fam)
        return out

    def best(self, use: str, metric: str, label: str, unit: str) -> dict[str, Any] | None:
        """The leader by the printed figure against every other family (Holm): ``results["best"][use]``."""
        fams = self.candidates(metric)
        if len(fams) < 2:
            return None
        lower = LOWER_IS_BETTER.get(metric, True)
        ranked = sorted(fams, key=lambda f: figure_value(self.family(f, metric), metric)[0] * (1 if lower else -1))
        leader, runner = ranked[0], ranked[1]
        entries = self.question(f"best:{use}", metric, [(leader, other) for other in ranked[1:]])
        if not entries:
            return None
        n = self.family(leader, metric).get(SIZE_KEYS.get(metric, ""))
        label = label.format(n=n if n is not None else "N")
        value, ci = figure_value(self.family(leader, metric), metric)
        decided = all(e["decided"] == "a" for e in entries)
        p = max(e["p_value"] for e in entries if e["p_value"] is not None) if any(e["p_value"] is not None for e in entries) else None
        first = next(e for e in entries if e["b"] == runner) if any(e["b"] == runner for e in entries) else entries[0]
        holm_note = f" (Holm over {len(entries)})" if len(entries) > 1 else ""
        need = max((e["n_to_decide"] for e in entries if e["decided"] is None and e["n_to_decide"]), default=None)
        if decided:
            confidence = f"decided, {_p(p)}{holm_note}"
        elif need:
            confidence = f"not decided: about {need:,} {unit} would decide it"
        else:
            confidence = f"not decided, {_p(p)}{holm_note}" if p is not None else "not decided"
        return {"family": leader if decided else None, "leader": leader, "metric": metric, "label": label,
                "value": value, "ci95": list(ci) if ci else None, "runner_up": runner, "decided": decided,
                "p_value": p, "confidence": confidence, "text": _best_text(use, label, leader, runner, value, ci, first,
                                                                          decided, confidence, lower)}


def _g(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _p(p: float | None) -> str:
    return "p = —" if p is None else "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def _name(fam: str) -> str:
    spec = spec_or_none(fam)
    return spec.title if spec is not None else fam


def _best_text(use: str, label: str, leader: str, runner: str, value: float, ci, entry: dict[str, Any], decided: bool,
               confidence: str, lower: bool) -> str:
    """"Best sample quality: DDPM (FID@200 8.77 [8.1, 9.4]; VAE 0.49 higher [0.12, 0.86]; decided, p = 0.003 (Holm over 3))."""
    figure = f"{label} {_g(value)}" + (f" [{_g(ci[0])}, {_g(ci[1])}]" if ci else "")
    d, (lo, hi) = entry["difference"], entry["ci95"]
    # the runner-up's figure minus the leader's, the estimand tested, as "higher"/"lower"
    gap = None if d is None else -d
    if gap is not None and lo is not None and hi is not None:
        word = "higher" if gap > 0 else "lower" if gap < 0 else "apart"
        gap_text = f"{_name(entry['b'])} {_g(abs(gap))} {word} (difference [{_g(-hi)}, {_g(-lo)}])"
    else:
        gap_text = f"next {_name(runner)}"
    if decided:
        return f"Best {use}: {_name(leader)} ({figure}; {gap_text}; {confidence})."
    return f"Best {use}: not decided at this budget ({_name(leader)} leads: {figure}; {gap_text}; {confidence})."


def decide_all(results: dict[str, Any], evidence: dict[str, dict] | None = None,
               plan: SequentialPlan | None = None, look: int = 1) -> Decider:
    """A :class:`Decider` over ``results`` with every use's best computed (``decider.best_entries``)."""
    decider = Decider(results, evidence, plan, look)
    decider.best_entries = {}
    for use, metric, label, unit in USES + ((CONTROLLABILITY,) if results.get("conditional") else ()):
        best = decider.best(use, metric, label, unit)
        if best is not None:
            decider.best_entries[use] = best
    return decider


__all__ = ["ALPHA", "Decider", "USES", "decide_all", "figure_value"]
