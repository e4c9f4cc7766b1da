"""The comparison report: the measured table (the classic table's rows, each cell a measured
figure), the classic claims checked against the numbers, a data-driven "when to use each", and
the figures — as ``report.md`` and ``report.html`` (well-formed XHTML-style HTML5).

Every number in a table cell is rendered from ``results.json`` by :func:`fmt` and, in the HTML,
carries ``data-key`` with its path in ``results.json`` so the report can be checked against it.

A verdict ("best", "held", "did not hold") is printed only when the paired test of its question rejects
(:mod:`diffvae.compare.decisions`: ``results.json["comparisons"]`` holds each test, ``results["best"]``
each use's answer); otherwise it is "not decided at this budget", with the 80%-power sample size that
would decide it where one can be computed honestly. Exact figures (e.g. the latent dimension) have no
interval and keep a plain comparison; :func:`decide` (intervals that do not overlap) remains for
comparisons against a fixed threshold.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffvae.compare.control import claim_follows_conditions, control_parts
from diffvae.compare.forecasts import section_heading, section_lines
from diffvae.compare.curves import crossover_decisions
from diffvae.compare.decisions import Decider, decide_all
from diffvae.compare.evidence import REFERENCE, load_evidence
from diffvae.compare.refine import sequential_plan
from diffvae.compare.figures import bpd_stack, captions as figure_captions, draw_all
from diffvae.compare.style import short, spec_or_none, title
from diffvae.compare.verdicts import (UNDECIDED, Figure, _stored_interval, comparison_entry, comparison_text,  # noqa: F401 (re-exported)
                                      decide, figure_text, fmt, holm, interval_of, mi_ceiling_note, p_text,
                                      samples_to_decide, separated, store_comparisons, undecided_text, unpaired_difference)
from diffvae.contract import FamilySpec
from diffvae.runs import atomic_write_text


# A cell is a list of parts: plain text, (prefix, path) for a number, or (prefix, path, kind) for a
# rule of its own (:func:`_special`): "ci" = " [low, high]", the 95% interval of the figure at path;
# "mi" = mutual information with its estimator's ceiling; "images" = how many held-out images; "psnr" = a round
# trip's PSNR in dB ("exact" when its MSE is 0);
# "parts" = a note when the bound's parts (figure) come from fewer images than its total.
Part = str | tuple[str, ...]
def lookup(results: dict[str, Any], path: str) -> Any:
    node: Any = results
    for part in path.split("."):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


# ----------------------------------------------------------------------------- intervals and decisions

def _cells(fam: str) -> dict[str, list[Part]]:
    """The parts of each table cell of ``fam``: common rows, then the family's spec (its latent,
    interpolation, bound label and extras, and rows it fills itself: ``spec.report_cells``)."""
    spec = spec_or_none(fam) or FamilySpec(title=fam, short=fam, objective="", latent_space="", interpolation="")
    F = f"families.{fam}."
    T = f"training.{fam}."

    def ci(key: str) -> Part:
        return ("", F + key, "ci")

    held_out = [(" over ", F + "bpd_n", "images"), ("", F, "parts")]
    return {
        "Latent space": [spec.latent_space, ("; latent std ", F + "latent_std")],
        "Latent dimension": [("", F + "latent_dims"), (" for ", F + "data_dims"), (" pixel values (ratio ", F + "latent_ratio"), ")"],
        "Generation": [("", F + "nfe"), " network evaluations, ", ("", F + "ms_per_sample"), ci("ms_per_sample"), " ms/sample"],
        "Sample quality": [("FID ", F + "fid"), ci("fid"), (", KID ", F + "kid"), ci("kid"), (", precision ", F + "precision"),
                           ci("precision"), (", recall ", F + "recall"), ci("recall"),
                           (", sharpness ×", F + "sharpness_ratio"), ci("sharpness_ratio"), (", recognisable ", F + "confident_fraction"),
                           (", class entropy / max ", F + "class_entropy_ratio"), ci("class_entropy_ratio"),
                           (", share of classes under half their expected frequency ", F + "classes_below_half")],
        "Training": [("", T + "objective"), (": ", T + "minutes"), (" min, ", T + "steps"), (" steps, final loss ", T + "final_loss")],
        "Interpolation": [spec.interpolation, ("; round trip PSNR ", F + "roundtrip_psnr_db", "psnr"), (", smoothness ", F + "path_smoothness"),
                          (", midpoint FID ", F + "midpoint_fid"), ci("midpoint_fid")],
        "Posterior collapse": [spec.collapse_text],
        "Bits/dim (ELBO view)": [(spec.bound_label, F + "bpd"), ci("bpd"), *held_out, ("; given the label ", F + "cond_bpd"), ci("cond_bpd"),
                                 *[(prefix, F + key) for prefix, key in spec.bound_extras]],
        "Representation (linear probe)": [("accuracy ", F + "probe_accuracy"), ci("probe_accuracy"), (" (chance ", F + "probe_chance"), ")"],
        **spec.report_cells(F),
    }


ROWS = ["Latent space", "Latent dimension", "Generation", "Sample quality", "Training", "Interpolation",
        "Posterior collapse", "Bits/dim (ELBO view)", "Representation (linear probe)"]


def _number(value: Any, path: str, as_html: bool) -> str:
    text = fmt(value)
    if as_html:
        return f'<span data-key="{html.escape(path)}">{html.escape(text)}</span>' if isinstance(value, (int, float)) else html.escape(text)
    return text


def _interval_text(results: dict[str, Any], path: str, as_html: bool) -> str:
    """" [low, high]" for the figure at ``path`` (from ``<key>_ci95``, numbers tagged with their
    path; or from ``<key>_sem``, plain), or "" without an interval."""
    family_path, key = path.rsplit(".", 1)
    family = lookup(results, family_path) or {}
    ci = interval_of(family, key)
    if ci is None:
        return ""
    if _stored_interval(family, key) is not None:  # stored in results.json: tag the numbers with their path
        low, high = (_number(family[f"{key}_ci95"][i], f"{path}_ci95.{i}", as_html) for i in (0, 1))
    else:
        low, high = (html.escape(fmt(v)) if as_html else fmt(v) for v in ci)
    return f" [{low}, {high}]"


def _special(kind: str, prefix: str, path: str, results: dict[str, Any], as_html: bool) -> str:
    e = html.escape if as_html else (lambda t: t)
    if kind == "ci":
        return _interval_text(results, path, as_html)
    value = lookup(results, path)
    if kind == "mi":  # mutual information, with the estimator's ceiling when it sits at it
        if value is None:
            return ""
        note = mi_ceiling_note(value, lookup(results, path + "_max"))
        return e(prefix) + _number(value, path, as_html) + e(" nats" + note)
    if kind == "psnr":  # an exact round trip has an infinite PSNR, stored as null beside an MSE of 0
        if value is None:
            return e("; round trip exact (MSE 0)") if lookup(results, path.replace("psnr_db", "mse")) == 0 else ""
        return e(prefix) + _number(value, path, as_html) + e(" dB")
    if kind == "images":
        return "" if value is None else e(prefix) + _number(value, path, as_html) + e(" held-out images")
    if kind == "parts":  # the figure's parts come from fewer images than the total: say so

        stack = bpd_stack(results, path.rstrip(".").rsplit(".", 1)[1])
        return "" if stack is None or stack.note is None else e(f"; {stack.note}")
    raise ValueError(f"unknown cell part kind {kind!r}")


def _render_cell(parts: list[Part], results: dict[str, Any], as_html: bool) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(html.escape(part) if as_html else part)
            continue
        if len(part) == 3:
            out.append(_special(part[2], part[0], part[1], results, as_html))
            continue
        prefix, path = part
        value = lookup(results, path)
        if value is None:
            continue
        out.append((html.escape(prefix) if as_html else prefix) + _number(value, path, as_html))
    return "".join(out)


def _family_status(results: dict[str, Any], fam: str) -> str | None:
    """None if the family has results; else why not (failed stage, or not run)."""
    if fam in results.get("families", {}):
        return None
    stages = results.get("stages", {})
    for stage in (f"train:{fam}", f"eval:{fam}"):
        if stages.get(stage, {}).get("status") == "failed":
            return f"{stage} failed: {stages[stage].get('error', '')}"
    return "not run"


def table(results: dict[str, Any], as_html: bool) -> tuple[list[str], list[list[str]]]:
    fams = results.get("families_requested") or list(results.get("families", {}))
    header = ["Aspect"] + [title(f) for f in fams]
    rows = []
    for row in ROWS + (["Controllability"] if results.get("conditional") else []):
        cells = [row]
        for fam in fams:
            if row == "Controllability":  # --conditional: its own stage, after the evaluation (diffvae.compare.control)

                cells.append(_render_cell(control_parts(results, fam), results, as_html))
                continue
            status = _family_status(results, fam)
            if status is not None and not (row == "Training" and fam in results.get("training", {})):
                cells.append(html.escape(status) if as_html else status)
            else:
                cells.append(_render_cell(_cells(fam)[row], results, as_html))
        rows.append(cells)
    return header, rows


# ----------------------------------------------------------------------------- claims and advice

# the sample size behind each figure's interval, and how "would decide it" counts it
SAMPLE_SIZES = {
    "fid": ("n_samples", "samples per family"), "kid": ("n_samples", "samples per family"),
    "precision": ("n_samples", "samples per family"), "recall": ("n_samples", "samples per family"),
    "sharpness_ratio": ("n_samples", "samples per family"), "sharpness_gap": ("n_samples", "samples per family"),
    "midpoint_fid": ("midpoint_n", "midpoint pairs per family"), "bpd": ("bpd_n", "held-out images per family"),
    "ms_per_sample": ("ms_per_sample_repeats", "timed sampling batches per family"),
    "probe_accuracy": ("probe_n", "probe test images per family"),
}
def _get(results, fam, key):
    return lookup(results, f"families.{fam}.{key}")


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def log_gap_interval(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    """Interval of |log r| from an interval (lo, hi) of a positive ratio r: 0 at its low end when the
    interval contains 1 (blur, r < 1, and noise, r > 1, both move the ratio away from 1)."""
    if ci is None or ci[0] <= 0:
        return None
    ends = sorted((abs(math.log(ci[0])), abs(math.log(ci[1]))))
    return (0.0, ends[1]) if ci[0] <= 1.0 <= ci[1] else (ends[0], ends[1])


def figure(results: dict[str, Any], fam: str, key: str) -> Figure | None:
    """The family's figure ``key`` with its interval and sample size, or None if not measured.
    ``sharpness_gap`` is derived: |log sharpness ratio|."""
    r = lookup(results, f"families.{fam}") or {}
    if key == "sharpness_gap":
        ratio = _number_or_none(r.get("sharpness_ratio"))
        if ratio is None or ratio <= 0:
            return None
        value, ci = abs(math.log(ratio)), log_gap_interval(interval_of(r, "sharpness_ratio"))
    else:
        value, ci = _number_or_none(r.get(key)), interval_of(r, key)
        if value is None:
            return None
    size_key = SAMPLE_SIZES.get(key, ("", ""))[0]
    n = r.get(size_key) if size_key else None
    if n is None and size_key == "n_samples":
        n = lookup(r, "eval_config.n_samples")
    return Figure(value, ci, int(n) if isinstance(n, (int, float)) and n > 0 else None)


def _outcome(comparisons: list[str]) -> str:
    """Several comparisons that must all go the claim's way ("a"): held if they all do, did not hold
    if any decided against it ("b"), otherwise not decided."""
    if comparisons and all(c == "a" for c in comparisons):
        return "held"
    return "did not hold" if "b" in comparisons else UNDECIDED


def _compared(decider, question: str, key: str, better: str, others) -> tuple[list[str], str, Figure | None, dict[str, Figure]]:
    """The paired test of ``better`` against each measured other family (:class:`diffvae.compare.decisions.Decider`,
    Holm over them, recorded as ``question``): (outcomes "a" | "b" | "undecided", the '; about N ...' text, figures)."""
    results = decider.results
    a = figure(results, better, key)
    figs = {f: figure(results, f, key) for f in others}
    figs = {f: v for f, v in figs.items() if v is not None}
    if a is None or not figs:
        return [], "", a, figs
    entries = decider.question(question, key, [(better, f) for f in figs])
    return [e["decided"] or "undecided" for e in entries], _need_entries(entries, key), a, figs


def _need_entries(entries: list[dict[str, Any]], key: str) -> str:
    """"; about N ... would decide it" (80% power, the largest over the undecided entries), else ""."""
    sizes = [e["n_to_decide"] for e in entries if e["decided"] is None and e.get("n_to_decide")]
    return f"; about {max(sizes):,} {SAMPLE_SIZES.get(key, ('', 'samples per family'))[1]} would decide it" if sizes else ""


def _listing(figs: dict[str, Figure], names: dict[str, str] | None = None) -> str:
    return ", ".join(f"{(names or {}).get(f, f)} {figure_text(v)}" for f, v in figs.items())


@dataclass(frozen=True)
class Roles:
    """The families the classic claims speak of, picked by their spec's traits: the VAE (one pass, a
    learned encoder; the first such family), pixel diffusion (iterative, no encoder) and latent
    diffusion (iterative, an encoder)."""

    autoencoder: str | None
    pixel: tuple[str, ...]
    latent: tuple[str, ...]

    @property
    def iterative(self) -> tuple[str, ...]:
        return self.pixel + self.latent


def _family_names(results: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys([*(results.get("families_requested") or []), *results.get("families", {})]))


def roles(results: dict[str, Any]) -> Roles:
    specs = {f: spec_or_none(f) for f in _family_names(results)}
    specs = {f: s for f, s in specs.items() if s is not None}
    one_pass = [f for f, s in specs.items() if not s.iterative and s.has_encoder]
    return Roles(one_pass[0] if one_pass else None,
                 tuple(f for f, s in specs.items() if s.iterative and not s.has_encoder),
                 tuple(f for f, s in specs.items() if s.iterative and s.has_encoder))


def claims(results: dict[str, Any], decider=None) -> list[dict[str, str]]:
    """Each classic claim with a verdict (held / did not hold / not decided at this budget / not
    measured) and the evidence: held or did not hold only when the paired test of the claim's question
    rejects (``decider``, :class:`diffvae.compare.decisions.Decider`, which records each test in its
    entries; without one, tests from the stored intervals). The families are picked by their traits
    (:func:`roles`); a family's own claims come from its spec."""

    d = decider or Decider(results)
    r = roles(results)
    out: list[dict[str, str]] = []

    def claim(text: str, verdict: str | None, evidence: str) -> None:
        out.append({"claim": text, "verdict": verdict or "not measured", "evidence": evidence})

    _claim_sample_quality(d, r, claim)
    if r.autoencoder is not None:
        _claim_blur_speed_dimension(d, r, claim)
        _claim_interpolation(d, r, claim)
    for fam in _family_names(results):
        spec = spec_or_none(fam)
        out.extend(spec.claims(results, fam) if spec is not None else [])
    if r.autoencoder is not None:
        _claim_representation(d, r, claim)
        _claim_latent_diffusion(d, r, claim)
    if results.get("conditional"):
        checked = claim_follows_conditions(d, r.autoencoder, r.iterative)
        claim(*checked) if checked else claim("Conditioning: diffusion follows conditions better than a VAE", None,
                                              "needs a conditional VAE and a conditional iterative family")
    return out


SAMPLE_CLAIM = "Sample quality: diffusion is state of the art, VAEs lag"


def _claim_sample_quality(d, r: Roles, claim) -> None:
    results = d.results
    fid_vae = figure(results, r.autoencoder, "fid") if r.autoencoder else None
    diffusion = {f: figure(results, f, "fid") for f in r.iterative}
    diffusion = {f: v for f, v in diffusion.items() if v is not None}
    if fid_vae is not None and diffusion:
        # held if any diffusion family beats the VAE: one test per family, Holm over them
        entries = d.question(f"claim:{SAMPLE_CLAIM}", "fid", [(f, r.autoencoder) for f in diffusion])
        outcomes = [e["decided"] or "undecided" for e in entries]
        verdict = "held" if "a" in outcomes else "did not hold" if outcomes and all(o == "b" for o in outcomes) else UNDECIDED
        ahead = [short(e["a"]) for e in entries if e["decided"] == "a"]  # say which family carried it
        claim(SAMPLE_CLAIM, verdict,
              f"FID@N {_listing(diffusion)} vs {short(r.autoencoder)} {figure_text(fid_vae)}"
              + (f"; ahead of the {short(r.autoencoder)}: {', '.join(ahead)} only" if verdict == "held" and len(ahead) < len(entries) else "")
              + (_need_entries(entries, "fid") if verdict == UNDECIDED else ""))
    else:
        claim("Sample quality: diffusion is state of the art, VAEs lag", None, "needs the VAE and a diffusion family")


BLUR_CLAIM = "VAE samples are often blurry"
SPEED_CLAIM = "Generation: a VAE decodes once, diffusion denoises iteratively (slower)"


def _claim_blur_speed_dimension(d, r: Roles, claim) -> None:
    results, vae = d.results, r.autoencoder
    outcomes, need, sharp_vae, others = _compared(d, f"claim:{BLUR_CLAIM}", "sharpness_ratio", vae, r.iterative)
    if sharp_vae is not None:
        threshold = decide(sharp_vae, Figure(0.8), True)
        verdict = _outcome([threshold, *outcomes])
        claim(BLUR_CLAIM, verdict, f"sharpness vs real data (blurry: below ×0.8 and below the others): "
              f"{short(vae)} ×{figure_text(sharp_vae)}" + "".join(f", {f} ×{figure_text(v)}" for f, v in others.items())
              + (need if verdict == UNDECIDED else ""))
    outcomes, need, ms_vae, ms = _compared(d, f"claim:{SPEED_CLAIM}", "ms_per_sample", vae, r.pixel)
    nfe = {f: _get(results, f, "nfe") for f in (vae, *r.iterative)}
    if ms_vae is not None and ms:
        verdict = _outcome(outcomes)
        claim(SPEED_CLAIM, verdict,
              f"{short(vae)} {figure_text(ms_vae)} ms/sample ({nfe[vae]} NFE) vs " + "; ".join(
                  f"{short(f)} {figure_text(v)} ms/sample ({nfe[f]} NFE): {fmt(v.value / max(ms_vae.value, 1e-9))}×"
                  for f, v in ms.items()) + (need if verdict == UNDECIDED else ""))
    lat = {f: _get(results, f, "latent_ratio") for f in (vae, *r.iterative)}
    pixel = [f for f in r.pixel if lat[f] is not None]
    if lat[vae] is not None and pixel:  # exact figures: no interval
        claim("Latent dimension: VAE compressed, diffusion the same as the data",
              "held" if lat[vae] < 1 and all(lat[f] == 1 for f in pixel) else "did not hold",
              f"latent/data dimension: {short(vae)} {fmt(lat[vae])}" + "".join(f", {short(f)} {fmt(lat[f])}" for f in pixel)
              + "".join(f", {short(f)} {fmt(lat[f])}" for f in r.latent if lat[f]))


INTERPOLATION_CLAIM = "Interpolation: direct in a VAE's latent (better for latent manipulation) vs via DDIM inversion"


def _claim_interpolation(d, r: Roles, claim) -> None:
    results, vae = d.results, r.autoencoder
    rt = {f: _get(results, f, "roundtrip_psnr_db") for f in (vae, *r.iterative)}
    outcomes, need, mid_vae, mid = _compared(d, f"claim:{INTERPOLATION_CLAIM}", "midpoint_fid", vae, r.iterative)
    if mid_vae is not None and mid:
        verdict = _outcome(outcomes)
        claim(INTERPOLATION_CLAIM, verdict,
              f"midpoint FID (lower = more realistic midpoints): {short(vae)} " + figure_text(mid_vae) +
              "".join(f", {f} {figure_text(v)}" for f, v in mid.items()) + f"; round trip PSNR: {short(vae)} " + fmt(rt[vae]) +
              " dB (encode→decode)" + "".join(f", {f} {fmt(rt[f])} dB (invert→regenerate)" for f in mid if rt[f] is not None)
              + (need if verdict == UNDECIDED else ""))


REPRESENTATION_CLAIM = "VAEs learn representations (diffusion's latent is just noise)"


def _claim_representation(d, r: Roles, claim) -> None:
    results, vae = d.results, r.autoencoder
    outcomes, need, probe_vae, probe = _compared(d, f"claim:{REPRESENTATION_CLAIM}", "probe_accuracy", vae, r.pixel)
    if probe_vae is not None and probe:
        verdict = _outcome(outcomes)
        latent_probes = {f: figure(results, f, "probe_accuracy") for f in r.latent}
        claim(REPRESENTATION_CLAIM, verdict,
              f"linear probe: {short(vae)} {figure_text(probe_vae)}" + "".join(
                  f", {short(f)} inverted noise {figure_text(v)}" for f, v in probe.items()) +
              "".join(f", {short(f)} {figure_text(v)}" for f, v in latent_probes.items() if v is not None)
              + (need if verdict == UNDECIDED else ""))


LDM_CLAIM = "Latent diffusion combines the strengths of both"


@dataclass(frozen=True)
class Setting:
    """One measured sampler setting of a family: its quality (FID, with its interval) and cost."""

    label: str  # "dpm++2m, 10 steps"
    fid: Figure
    ms: float


def quality_cost_settings(results: dict[str, Any], fam: str) -> list[Setting]:
    """Every setting of the family with a FID and ms/sample: its sampler sweep's rows (``fid_ci95`` where
    the row has one) and its main evaluation (the default sampler)."""
    r = lookup(results, f"families.{fam}") or {}
    out = []
    for row in r.get("sweep") or []:
        if _number_or_none(row.get("fid")) is not None and _number_or_none(row.get("ms_per_sample")) is not None:
            ci = _stored_interval(row, "fid")
            out.append(Setting(f"{row.get('sampler')}, {row.get('steps')} steps", Figure(float(row["fid"]), ci, row.get("n")),
                               float(row["ms_per_sample"])))
    main, ms = figure(results, fam, "fid"), _number_or_none(r.get("ms_per_sample"))
    if main is not None and ms is not None:
        out.append(Setting(f"{r.get('sampler') or 'default'}, {r.get('nfe')} NFE, main evaluation", main, ms))
    return out


def matched_cost(ldm: list[Setting], pixel: list[Setting]) -> tuple[Setting, Setting, bool] | None:
    """(LDM setting, the pixel family's best-FID setting, matched). Matched: the LDM's best-FID setting
    costing no more than that pixel setting (quality at matched cost). When the LDM has no setting that
    cheap: its best-FID setting at any cost, matched False (it costs more, so it can only fail the claim:
    worse and costlier). Costs are matched on the measured ms/sample. None when either has no setting."""
    if not ldm or not pixel:
        return None
    target = min(pixel, key=lambda s: (s.fid.value, s.ms))
    cheap = [s for s in ldm if s.ms <= target.ms]
    best = lambda settings: min(settings, key=lambda s: (s.fid.value, s.ms))
    return (best(cheap), target, True) if cheap else (best(ldm), target, False)


def _claim_latent_diffusion(d, r: Roles, claim) -> None:
    """LDM vs pixel diffusion on the quality–cost plane of their sampler sweeps (and main evaluations),
    not their default samplers: at the cost of each pixel family's best setting, is the LDM's best setting
    that costs no more better (FID difference with its interval; Holm over the pixel families)? Held when
    it is for every pixel family; did not hold when a pixel family is decided better at matched cost, or
    better and cheaper than every LDM setting; else not decided."""
    results = d.results
    for ldm in r.latent[:1]:
        matches = {f: matched_cost(quality_cost_settings(results, ldm), quality_cost_settings(results, f)) for f in r.pixel}
        found = {f: m for f, m in matches.items() if m is not None}
        if not found:
            claim(LDM_CLAIM, None, "needs FID and ms/sample of latent and pixel diffusion")
            return
        metric = lambda m: "fid_at_matched_cost" if m[2] else "fid_ldm_costlier"
        raw = {f: comparison_entry(f"claim:{LDM_CLAIM}", metric(m), (ldm, f), m[0].fid, m[1].fid, True) for f, m in found.items()}
        tested = [f for f, e in raw.items() if e["p_value"] is not None]
        adjusted = dict(zip(tested, holm([raw[f]["p_value"] for f in tested])))
        method = ("FID at matched cost (the LDM's best setting costing no more than the pixel family's best, on measured "
                  "ms/sample); difference of two independent 95% intervals" + (f"; Holm over {len(tested)}" if len(tested) > 1 else ""))
        entries = {f: comparison_entry(raw[f]["question"], raw[f]["metric"], (ldm, f), m[0].fid, m[1].fid, True, method,
                                       adjusted.get(f)) for f, m in found.items()}
        store_comparisons(results, list(entries.values()))
        outcomes = [entries[f]["decided"] if found[f][2] or entries[f]["decided"] == "b" else None for f in found]
        verdict = "held" if all(o == "a" for o in outcomes) else "did not hold" if "b" in outcomes else UNDECIDED
        claim(LDM_CLAIM, verdict, "; ".join(_matched_text(ldm, f, found[f], entries[f]) for f in found)
              + f" (Holm over {len(tested)})" * (len(tested) > 1))


def _matched_text(ldm: str, pixel: str, match: tuple[Setting, Setting, bool], entry: dict[str, Any]) -> str:
    a, b, matched = match
    where = f"at ≤ {fmt(b.ms)} ms/sample" if matched else f"no {short(ldm)} setting is as cheap as {short(pixel)}'s best"
    return (f"{where}: {short(ldm)} ({a.label}) FID {figure_text(a.fid)} at {fmt(a.ms)} ms/sample vs "
            f"{short(pixel)} ({b.label}) {figure_text(b.fid)} at {fmt(b.ms)} ms/sample: FID difference {comparison_text(entry)}"
            + ("" if entry["ci95"] is not None else " (a FID without an interval decides nothing)"))


def when_to_use(results: dict[str, Any]) -> list[str]:
    """The "best" sentence of each use (``results["best"]``, :mod:`diffvae.compare.decisions`): the leader by the
    printed figure, decided only when its paired test against every other family rejects (Holm), and the
    difference to the runner-up with its interval — the estimand tested. Computed from the stored intervals
    when ``results`` has no "best" yet."""
    best = results.get("best")
    if not isinstance(best, dict):
        best = decide_all(results).best_entries
    return [entry["text"] for entry in best.values() if isinstance(entry, dict) and entry.get("text")]


# ----------------------------------------------------------------------------- likelihood: bounds apart from estimates

def likelihood_figures(results: dict[str, Any]) -> tuple[dict[str, Figure], dict[str, Figure]]:
    """(bounds, estimates) of bits/dim. Bounds: each family's ``bpd`` where its spec says it is a
    variational bound (``spec.bpd_is_bound``) — only these are ranked against one another. Estimates:
    the probability-flow ODE's (a family whose ``bpd`` is one, keyed by the family; any family's
    ``ode_bpd``, keyed "<family>:ode"), biased by solver error and shown apart, never ranked against bounds."""
    bounds, estimates = {}, {}
    for fam in results.get("families", {}):
        spec, bpd, ode = spec_or_none(fam), figure(results, fam, "bpd"), figure(results, fam, "ode_bpd")
        if bpd is not None:
            (bounds if spec is None or spec.bpd_is_bound else estimates)[fam] = bpd
        if ode is not None:
            estimates[f"{fam}:ode"] = ode
    return bounds, estimates


def estimates_text(estimates: dict[str, Figure]) -> str:
    """"Flow matching 1.21 [1.1, 1.3]; DDPM (probability-flow ODE) 1.3 [1.2, 1.4]" (bits/dim)."""
    def name(key: str) -> str:
        fam, _, ode = key.partition(":")
        return short(fam) + (" (probability-flow ODE)" if ode else " (its ODE likelihood)")

    return "; ".join(f"{name(k)} {figure_text(v)}" for k, v in estimates.items())


# ----------------------------------------------------------------------------- at a glance

# (results["best"] key, the use as the reader asks it); controllability only for a conditional compare
USES = [("sample quality", "Sample quality"), ("generation speed", "Generation speed"), ("likelihood", "Likelihood"),
        ("representation", "Representation"), ("interpolation", "Editing / interpolation"),
        ("sharpness", "Sharpness"), ("controllability", "Controllability")]
NOT_DECIDED = "not decided"

# the fallback for results without results["best"] (an older results.json): (use, key, lower is better, label)
FALLBACK_CRITERIA = [("sample quality", "fid", True, "FID"), ("generation speed", "ms_per_sample", True, "ms/sample"),
                     ("likelihood", "bpd", True, "bits/dim (bound)"), ("representation", "probe_accuracy", False, "probe accuracy"),
                     ("interpolation", "midpoint_fid", True, "midpoint FID")]


def best_from_separate_intervals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``results["best"]``-shaped entries for results that have none (written before paired decisions):
    the best figure is decided only when its 95% interval and the runner-up's do not overlap
    (:func:`decide`, conservative); likelihood ranks bounds only."""
    best = {}
    for use, key, lower, label in FALLBACK_CRITERIA:
        figs = likelihood_figures(results)[0] if key == "bpd" else {f: figure(results, f, key) for f in results.get("families", {})}
        ranked = sorted(((f, v) for f, v in figs.items() if v is not None), key=lambda fv: fv[1].value if lower else -fv[1].value)
        if len(ranked) < 2:
            continue
        (top, a), (second, b) = ranked[0], ranked[1]
        decided = decide(a, b, lower) == "a"
        best[use] = {"family": top if decided else None, "metric": key, "label": label, "value": a.value,
                     "ci95": list(a.ci) if a.ci else None, "runner_up": second, "decided": decided, "p_value": None,
                     "confidence": "decided: separate 95% intervals (unpaired)" if decided
                     else f"{NOT_DECIDED}: {short(top)}'s and {short(second)}'s 95% intervals overlap"}
    return best


def glance_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per use, read from ``results["best"]`` (else :func:`best_from_separate_intervals`):
    {use, key, pick (a family or "not decided"), label, value, ci95, runner_up, confidence}. Controllability
    only when the compare was conditional; sharpness only when measured."""
    best = results.get("best") if isinstance(results.get("best"), dict) else best_from_separate_intervals(results)
    rows = []
    for key, use in USES:
        entry = best.get(key)
        if (key == "controllability" and not results.get("conditional")) or (key == "sharpness" and entry is None):
            continue
        entry = entry if isinstance(entry, dict) else {}
        fam = entry.get("family") if entry.get("decided") else None
        rows.append({"use": use, "key": key, "pick": title(fam) if fam else NOT_DECIDED, "label": entry.get("label") or "",
                     "value": entry.get("value"), "ci95": entry.get("ci95"),
                     "runner_up": title(entry["runner_up"]) if entry.get("runner_up") else "",
                     "confidence": entry.get("confidence") or (NOT_DECIDED if entry else f"{NOT_DECIDED}: not measured")})
    return rows


def _glance_value(row: dict[str, Any], as_html: bool) -> str:
    """"30.1 [28.2, 32]" with the numbers tagged by their path under ``best`` in the HTML."""
    if row["value"] is None:
        return "—"
    base = f"best.{row['key']}."
    text = _number(row["value"], base + "value", as_html)
    ci = row["ci95"]
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" [{_number(ci[0], base + 'ci95.0', as_html)}, {_number(ci[1], base + 'ci95.1', as_html)}]"
    return text


GLANCE_HEADER = ["Use", "Pick", "Measure (unit)", "Best value [95% interval]", "Runner-up", "Confidence"]


def glance_table(results: dict[str, Any], as_html: bool) -> list[list[str]]:
    """The at-a-glance table's rows (cells already escaped for HTML when ``as_html``)."""
    e = html.escape if as_html else (lambda t: t)
    return [[e(r["use"]), e(r["pick"]), e(r["label"]), _glance_value(r, as_html), e(r["runner_up"]), e(r["confidence"])]
            for r in glance_rows(results)]


def glance_notes(results: dict[str, Any]) -> list[str]:
    """Sentences under the table: class coverage on labelled data, and the ODE likelihood estimates, shown apart
    from the bounds."""
    coverage = coverage_note(results)
    notes = [coverage] if coverage else []
    estimates = likelihood_figures(results)[1]
    if not estimates:
        return notes
    return notes + ["Likelihood ranks variational bounds only. Probability-flow ODE estimates (biased by solver error; not "
                    f"bounds, not ranked against them), bits/dim: {estimates_text(estimates)}."]


def coverage_note(results: dict[str, Any]) -> str | None:
    """Class coverage of each family's samples (labelled data only), so a collapse shows as a number: the class
    histogram's entropy over its maximum (1 = every class equally often) and the share of classes generated
    below half their held-out frequency (0 = none)."""
    parts = []
    for fam, res in results.get("families", {}).items():
        if isinstance(res, dict) and res.get("class_entropy_ratio") is not None:
            below = res.get("classes_below_half")
            parts.append(f"{short(fam)} {fmt(res['class_entropy_ratio'])}"
                         + (f" ({fmt(below)} below half)" if below is not None else ""))
    if not parts:
        return None
    return ("Class coverage under the data's own classifier (class entropy / its maximum, 1 = every class as often; "
            f"share of classes below half their held-out frequency): {', '.join(parts)}.")


# ----------------------------------------------------------------------------- writing

def _images(results: dict[str, Any], figures: dict[str, str]) -> list[tuple[str, str]]:
    """(caption, relative path) of every image of the report that exists."""
    items = []
    for fam, r in results.get("families", {}).items():
        for kind, rel in (r.get("figures") or {}).items():
            items.append((f"{title(fam)}: {kind}", rel))
        for row in r.get("sweep") or []:
            items.append((f"{title(fam)}: {row['sampler']}, {row['steps']} steps (FID {fmt(row['fid'])})", row["figure"]))
    for fam, r in (results.get("control") or {}).items():
        w = r.get("guidance")
        for rel in (r.get("figures") or {}).values():
            items.append((f"{title(fam)}: a row per class" + (f" at guidance w = {fmt(w)}" if w is not None else ""), rel))

    captions = figure_captions(results)
    for name, rel in figures.items():
        items.append((captions.get(name, name), rel))
    return items


def decide_results(out: Path, results: dict[str, Any]):
    """The statistics step: every "best" and claim test from the evidence in ``out`` (``results["best"]``,
    ``results["claims"]``, ``results["comparisons"]``, the learning curves' crossover entries included);
    returns the crossover sentences."""
    evidence = load_evidence(out, [*results.get("families", {}), REFERENCE])
    plan = sequential_plan(results)  # α split over the refine stage's looks, when it was planned
    decider = decide_all(results, evidence, plan, look=min(plan.looks, int((results.get("sequential") or {}).get("looks", 1))))
    results["best"] = decider.best_entries
    results["comparisons"] = []  # the claims that test from stored figures (matched cost, collapse) add theirs here
    results["claims"] = claims(results, decider)
    entries, sentences = crossover_decisions(results)
    results["comparisons"] = decider.entries + results["comparisons"] + entries
    return sentences


def write_report(out: Path, results: dict[str, Any]) -> None:
    """The statistics step (:func:`decide_results`), then the report drawn from its entries."""
    render_report(out, results, decide_results(out, results))


def render_report(out: Path, results: dict[str, Any], crossovers: list[str] | None = None) -> None:
    """report.md, report.html and the figures from ``results`` as they are (its "best", claims and
    comparisons already decided), with the learning curves' crossover sentences."""
    figures = draw_all(out, results)
    results["figures"] = figures
    results["when_to_use"] = when_to_use(results) + list(crossovers or [])  # + where learning curves cross
    images = [(c, p) for c, p in _images(results, figures) if (out / p).exists()]
    atomic_write_text(out / "report.md", render_markdown(results, images))
    atomic_write_text(out / "report.html", render_html(results, images))


def _forecast_section(results: dict[str, Any]) -> tuple[str, list[str]]:
    """(heading, lines) of the forecast at a larger budget (:mod:`diffvae.compare.forecasts`), if any."""
    forecast = results.get("forecast")
    return (section_heading(forecast), section_lines(forecast)) if forecast else ("", [])


def _intro(results: dict[str, Any]) -> str:
    return (f"Data: {results.get('data')} ({results.get('train_size')} training / {results.get('test_size')} held-out images of "
            f"{'×'.join(map(str, results.get('image_shape', [])))}). Budget {fmt(results.get('budget_minutes'))} min, "
            f"used {fmt(results.get('elapsed_minutes'))} min. Sample-quality metrics use {results.get('feature_space', 'diffvae features')} "
            "(a locally trained network; not comparable to Inception FID). [low, high] is a 95% interval around the printed "
            "figure, for that figure: FID@N is FID at the sample count N every family shares, against the shared held-out "
            "reference (FID at finite N is biased upward, by an amount that depends on N: compare FIDs only at equal N). A "
            "verdict is a paired test of the difference (the same held-out images, the same reference), decided at 5% with "
            "Holm's correction where a claim or a 'best' rests on several families" + _looks_text(results)
            + "; results.json's \"comparisons\" holds every test.")


def _looks_text(results: dict[str, Any]) -> str:
    """How α was spent when the refine stage could look again (diffvae.compare.refine)."""
    sequential = results.get("sequential") or {}
    looks = int(sequential.get("max_looks", 1))
    if looks <= 1:
        return ""
    return (f", and split over up to {looks} looks at the evidence (each at 5%/{looks}: the refine stage added held-out "
            f"images or samples where a verdict was open; {int(sequential.get('looks', 1))} looks were taken)")


GLANCE_TITLE = "At a glance: the family to pick for each use (this data, this budget)"
TOP_FIGURE = "figures/pareto.png"  # shown under the at-a-glance table, not in the list of figures


def _split_top_figure(images: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the Pareto figure, if drawn; every other image)."""
    return [i for i in images if i[1] == TOP_FIGURE], [i for i in images if i[1] != TOP_FIGURE]


def _glance_html(results: dict[str, Any], top: list[tuple[str, str]]) -> list[str]:
    e = html.escape
    parts = [f"<h2>{e(GLANCE_TITLE)}</h2>", '<table id="at-a-glance">',
             "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in GLANCE_HEADER) + "</tr></thead>", "<tbody>"]
    for row in glance_table(results, as_html=True):
        pick_class = "pick undecided" if row[1] == NOT_DECIDED else "pick"
        parts.append(f"<tr><th>{row[0]}</th><td class=\"{pick_class}\">{row[1]}</td>" + "".join(f"<td>{c}</td>" for c in row[2:]) + "</tr>")
    parts += ["</tbody>", "</table>"] + [f"<p>{e(n)}</p>" for n in glance_notes(results)]
    parts += [f'<figure class="top"><img src="{e(p)}" alt="{e(c)}" /><figcaption>{e(c)}</figcaption></figure>' for c, p in top]
    return parts


def render_markdown(results: dict[str, Any], images: list[tuple[str, str]]) -> str:
    header, rows = table(results, as_html=False)
    top, images = _split_top_figure(images)
    lines = ["# diffvae compare report", "", _intro(results), "", f"## {GLANCE_TITLE}", "",
             "| " + " | ".join(GLANCE_HEADER) + " |", "|" + "---|" * len(GLANCE_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in glance_table(results, as_html=False)]
    notes = glance_notes(results)
    lines += ["", *notes] if notes else []
    lines += ["", *[f"![{c}]({p})" for c, p in top]] if top else []
    lines += ["", "## Measured comparison", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += ["", "## The classic claims, checked on this data", ""]
    lines += [f"- **{c['claim']}** — {c['verdict']}: {c['evidence']}" for c in results.get("claims", [])]
    lines += ["", "## When to use each (measured here)", ""] + [f"- {s}" for s in results.get("when_to_use", [])]
    heading, forecast = _forecast_section(results)
    lines += ["", f"## {heading}", "", *[f"- {s}" for s in forecast]] if forecast else []
    failed = {k: v for k, v in (results.get("stages") or {}).items() if v.get("status") != "done"}
    if failed:
        lines += ["", "## Stages that did not finish", ""] + [f"- {k}: {v.get('status')} — {v.get('error', '')}" for k, v in failed.items()]
    if results.get("figure_errors"):
        lines += ["", "## Figures that could not be drawn", ""] + [f"- {k}: {v}" for k, v in results["figure_errors"].items()]
    lines += ["", "## Figures", ""] + [f"![{c}]({p})" for c, p in images]
    return "\n".join(lines) + "\n"


def render_html(results: dict[str, Any], images: list[tuple[str, str]]) -> str:
    e = html.escape
    header, rows = table(results, as_html=True)
    top, images = _split_top_figure(images)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />', "<title>diffvae compare report</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:90%}th{background:#f3f3f3}"
             "figure{display:inline-block;margin:8px}img{image-rendering:pixelated;max-width:560px}"
             "#at-a-glance td,#at-a-glance th{font-size:100%}#at-a-glance td.pick{font-weight:bold}"
             "#at-a-glance td.undecided{color:#777;font-weight:normal}figure.top img{max-width:700px;image-rendering:auto}</style>",
             "</head>", "<body>", "<h1>diffvae compare report</h1>", f"<p>{e(_intro(results))}</p>",
             *_glance_html(results, top),
             "<h2>Measured comparison</h2>", '<table id="measured">', "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>",
             "<tbody>"]
    for row in rows:
        parts.append("<tr>" + f"<th>{e(row[0])}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>")
    parts += ["</tbody>", "</table>", "<h2>The classic claims, checked on this data</h2>", "<ul>"]
    parts += [f"<li><b>{e(c['claim'])}</b> — <i>{e(c['verdict'])}</i>: {e(c['evidence'])}</li>" for c in results.get("claims", [])]
    parts += ["</ul>", "<h2>When to use each (measured here)</h2>", "<ul>"]
    parts += [f"<li>{e(s)}</li>" for s in results.get("when_to_use", [])]
    parts.append("</ul>")
    heading, forecast = _forecast_section(results)
    if forecast:
        parts += [f"<h2>{e(heading)}</h2>", '<ul id="forecast">', *[f"<li>{e(s)}</li>" for s in forecast], "</ul>"]
    failed = {k: v for k, v in (results.get("stages") or {}).items() if v.get("status") != "done"}
    if failed:
        parts += ["<h2>Stages that did not finish</h2>", "<ul>"]
        parts += [f"<li>{e(k)}: {e(str(v.get('status')))} — {e(str(v.get('error', '')))}</li>" for k, v in failed.items()]
        parts.append("</ul>")
    if results.get("figure_errors"):
        parts += ["<h2>Figures that could not be drawn</h2>", "<ul>"]
        parts += [f"<li>{e(k)}: {e(v)}</li>" for k, v in results["figure_errors"].items()]
        parts.append("</ul>")
    parts.append("<h2>Figures</h2>")
    parts += [f'<figure><img src="{e(p)}" alt="{e(c)}" /><figcaption>{e(c)}</figcaption></figure>' for c, p in images]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
