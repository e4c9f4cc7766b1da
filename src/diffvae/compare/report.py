"""The comparison report: the measured table (the classic table's rows, each cell a measured
figure), the classic claims checked against the numbers, a data-driven "when to use each", and
the figures — as ``report.md`` and ``report.html`` (well-formed XHTML-style HTML5).

Every number in a table cell is rendered from ``results.json`` by :func:`fmt` and, in the HTML,
carries ``data-key`` with its path in ``results.json`` so the report can be checked against it.

A verdict ("best", "held", "did not hold") is printed only when the 95% intervals of the compared
figures (``<key>_ci95`` in ``results.json``) do not overlap (:func:`decide`); otherwise it is "not
decided at this budget", with the sample size that would decide it (:func:`samples_to_decide`).
Exact figures (e.g. the latent dimension) have no interval and keep a plain comparison.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffvae.runs import atomic_write_text


# A cell is a list of parts: plain text, (prefix, path) for a number, or (prefix, path, kind) for a
# rule of its own (:func:`_special`): "ci" = " [low, high]", the 95% interval of the figure at path;
# "mi" = mutual information with its estimator's ceiling; "images" = how many held-out images; "psnr" = a round
# trip's PSNR in dB ("exact" when its MSE is 0);
# "parts" = a note when the bound's parts (figure) come from fewer images than its total.
Part = str | tuple[str, ...]
UNDECIDED = "not decided at this budget"
MI_CEILING_TOLERANCE = 0.01  # MI within 1% of log N is at the estimator's ceiling


def fmt(value: Any) -> str:
    """How every number is printed: integers as they are, floats to 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.4g}"
    return str(value)


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

@dataclass(frozen=True)
class Figure:
    """A measured figure: its value, its 95% interval (None = exact, or not measured) and the sample
    size n the interval came from (None = unknown, or a fixed threshold)."""

    value: float
    ci: tuple[float, float] | None = None
    n: int | None = None


def _stored_interval(family_results: dict[str, Any], key: str) -> tuple[float, float] | None:
    ci = family_results.get(f"{key}_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        return (float(ci[0]), float(ci[1]))
    return None


def interval_of(family_results: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The 95% interval of ``key``: ``<key>_ci95``, else ``<key>`` ± 1.96 ``<key>_sem``, else None."""
    stored = _stored_interval(family_results, key)
    if stored is not None:
        return stored
    value, sem = family_results.get(key), family_results.get(f"{key}_sem")
    if isinstance(value, (int, float)) and isinstance(sem, (int, float)) and math.isfinite(sem):
        return (value - 1.959963984540054 * sem, value + 1.959963984540054 * sem)
    return None


def separated(a_ci: tuple[float, float], b_ci: tuple[float, float]) -> bool:
    """True when two closed intervals do not overlap."""
    return a_ci[1] < b_ci[0] or b_ci[1] < a_ci[0]


def decide(a: Figure, b: Figure, lower_is_better: bool) -> str:
    """"a" or "b" (the better figure) when the intervals separate — or by value when either figure
    has no interval — else "undecided". With intervals, the better one is the one whose interval
    lies on the better side (for FID that is the bias-corrected one, not always the lower value)."""
    if a.ci is None or b.ci is None:
        if a.value == b.value:
            return "undecided"
        return "a" if (a.value < b.value) == lower_is_better else "b"
    if not separated(a.ci, b.ci):
        return "undecided"
    return "a" if (a.ci[1] < b.ci[0]) == lower_is_better else "b"


def samples_to_decide(a: Figure, b: Figure) -> int | None:
    """Sample size per family at which the intervals would just separate, if the centres stay and
    the half-widths h shrink ∝ 1/√n:  h_a √(n_a / n) + h_b √(n_b / n) = |c_a − c_b|  ⇒

        n = ((h_a √n_a + h_b √n_b) / |c_a − c_b|)²,  rounded up

    (= n · ((h_a + h_b) / |c_a − c_b|)² for equal n). A figure with no interval or no n (a fixed
    threshold) contributes no width. None when the centres coincide or nothing has a size."""
    def width(f: Figure) -> float:
        return 0.0 if f.ci is None or f.n is None else (f.ci[1] - f.ci[0]) / 2.0 * math.sqrt(f.n)

    def centre(f: Figure) -> float:
        return f.value if f.ci is None else (f.ci[0] + f.ci[1]) / 2.0

    gap = abs(centre(a) - centre(b))
    total = width(a) + width(b)
    if gap == 0 or total == 0:
        return None
    return math.ceil((total / gap) ** 2 * (1 - 1e-12))  # the factor: 800.0000000001 is 800, not 801


def figure_text(f: Figure) -> str:
    """"412.3 [380.1, 450.2]" (or just the value without an interval)."""
    return fmt(f.value) + (f" [{fmt(f.ci[0])}, {fmt(f.ci[1])}]" if f.ci is not None else "")


def undecided_text(label: str, names: tuple[str, str], a: Figure, b: Figure, unit: str) -> str:
    """"not decided at this budget (FID: VAE 412 [380, 450] vs DDPM 430 [400, 470]; about 2,400
    samples per family would decide it)"."""
    n = samples_to_decide(a, b)
    need = f"; about {n:,} {unit} would decide it" if n is not None else ""
    return f"{UNDECIDED} ({label}: {names[0]} {figure_text(a)} vs {names[1]} {figure_text(b)}{need})"


def mi_ceiling_note(mutual_info: Any, ceiling: Any) -> str:
    """" (at the log N = 5.30 ceiling of the estimator: a lower bound)" when the MI estimate is within
    1% of its ceiling log N (the He et al. estimator can never exceed it), else ""."""
    if not isinstance(mutual_info, (int, float)) or not isinstance(ceiling, (int, float)) or ceiling <= 0:
        return ""
    if mutual_info < (1.0 - MI_CEILING_TOLERANCE) * ceiling:
        return ""
    return f" (at the log N = {ceiling:.2f} ceiling of the estimator: a lower bound)"


def title(fam: str) -> str:
    """The family's column title (its ``spec.title``; the name itself if it is not registered)."""
    from diffvae.compare.figures import spec_or_none

    spec = spec_or_none(fam)
    return spec.title if spec is not None else fam


def short(fam: str) -> str:
    """The family's name in sentences (``spec.short``)."""
    from diffvae.compare.figures import spec_or_none

    spec = spec_or_none(fam)
    return spec.short if spec is not None else fam


def _cells(fam: str) -> dict[str, list[Part]]:
    """The parts of each table cell of ``fam``: common rows, then the family's spec (its latent,
    interpolation, bound label and extras, and rows it fills itself: ``spec.report_cells``)."""
    from diffvae.compare.figures import spec_or_none
    from diffvae.contract import FamilySpec

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
                           (", sharpness ×", F + "sharpness_ratio"), ci("sharpness_ratio"), (", recognisable ", F + "confident_fraction")],
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
        from diffvae.compare.figures import bpd_stack

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
                from diffvae.compare.control import control_parts

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


def _need(pairs: list[tuple[str, Figure, Figure]], key: str) -> str:
    """"; about N samples per family would decide it" for the undecided comparisons, else ""."""
    sizes = [samples_to_decide(a, b) for outcome, a, b in pairs if outcome == "undecided"]
    sizes = [n for n in sizes if n is not None]
    return f"; about {max(sizes):,} {SAMPLE_SIZES.get(key, ('', 'samples per family'))[1]} would decide it" if sizes else ""


def _compared(results, key, better, others, lower) -> tuple[list[str], str, Figure | None, dict[str, Figure]]:
    """decide(better, other) for each measured other family; (outcomes, the '; about N ...' text, figures)."""
    a = figure(results, better, key)
    figs = {f: figure(results, f, key) for f in others}
    figs = {f: v for f, v in figs.items() if v is not None}
    if a is None:
        return [], "", None, figs
    pairs = [(decide(a, b, lower), a, b) for b in figs.values()]
    return [p[0] for p in pairs], _need(pairs, key), a, figs


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
    from diffvae.compare.figures import spec_or_none

    specs = {f: spec_or_none(f) for f in _family_names(results)}
    specs = {f: s for f, s in specs.items() if s is not None}
    one_pass = [f for f, s in specs.items() if not s.iterative and s.has_encoder]
    return Roles(one_pass[0] if one_pass else None,
                 tuple(f for f, s in specs.items() if s.iterative and not s.has_encoder),
                 tuple(f for f, s in specs.items() if s.iterative and s.has_encoder))


def claims(results: dict[str, Any]) -> list[dict[str, str]]:
    """Each classic claim with a verdict (held / did not hold / not decided at this budget / not
    measured) and the evidence: held or did not hold only when the intervals separate. The families
    are picked by their traits (:func:`roles`); a family's own claims come from its spec."""
    from diffvae.compare.figures import spec_or_none

    r = roles(results)
    out: list[dict[str, str]] = []

    def claim(text: str, verdict: str | None, evidence: str) -> None:
        out.append({"claim": text, "verdict": verdict or "not measured", "evidence": evidence})

    _claim_sample_quality(results, r, claim)
    if r.autoencoder is not None:
        _claim_blur_speed_dimension(results, r, claim)
        _claim_interpolation(results, r, claim)
    for fam in _family_names(results):
        spec = spec_or_none(fam)
        out.extend(spec.claims(results, fam) if spec is not None else [])
    if r.autoencoder is not None:
        _claim_representation(results, r, claim)
        _claim_latent_diffusion(results, r, claim)
    if results.get("conditional"):
        from diffvae.compare.control import claim_follows_conditions

        checked = claim_follows_conditions(results, r.autoencoder, r.iterative)
        claim(*checked) if checked else claim("Conditioning: diffusion follows conditions better than a VAE", None,
                                              "needs a conditional VAE and a conditional iterative family")
    return out


def _claim_sample_quality(results, r: Roles, claim) -> None:
    fid_vae = figure(results, r.autoencoder, "fid") if r.autoencoder else None
    diffusion = {f: figure(results, f, "fid") for f in r.iterative}
    diffusion = {f: v for f, v in diffusion.items() if v is not None}
    if fid_vae is not None and diffusion:
        pairs = [(decide(v, fid_vae, True), v, fid_vae) for v in diffusion.values()]
        outcomes = [p[0] for p in pairs]
        verdict = "held" if "a" in outcomes else "did not hold" if all(o == "b" for o in outcomes) else UNDECIDED
        ahead = [short(f) for f, outcome in zip(diffusion, outcomes) if outcome == "a"]  # say which family carried it
        claim("Sample quality: diffusion is state of the art, VAEs lag", verdict,
              f"FID {_listing(diffusion)} vs {short(r.autoencoder)} {figure_text(fid_vae)}"
              + (f"; ahead of the {short(r.autoencoder)}: {', '.join(ahead)} only" if verdict == "held" and len(ahead) < len(pairs) else "")
              + (_need(pairs, "fid") if verdict == UNDECIDED else ""))
    else:
        claim("Sample quality: diffusion is state of the art, VAEs lag", None, "needs the VAE and a diffusion family")


def _claim_blur_speed_dimension(results, r: Roles, claim) -> None:
    vae = r.autoencoder
    outcomes, need, sharp_vae, others = _compared(results, "sharpness_ratio", vae, r.iterative, True)
    if sharp_vae is not None:
        threshold = decide(sharp_vae, Figure(0.8), True)
        verdict = _outcome([threshold, *outcomes])
        claim("VAE samples are often blurry", verdict, f"sharpness vs real data (blurry: below ×0.8 and below the others): "
              f"{short(vae)} ×{figure_text(sharp_vae)}" + "".join(f", {f} ×{figure_text(v)}" for f, v in others.items())
              + (need if verdict == UNDECIDED else ""))
    outcomes, need, ms_vae, ms = _compared(results, "ms_per_sample", vae, r.pixel, True)
    nfe = {f: _get(results, f, "nfe") for f in (vae, *r.iterative)}
    if ms_vae is not None and ms:
        verdict = _outcome(outcomes)
        claim("Generation: a VAE decodes once, diffusion denoises iteratively (slower)", verdict,
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


def _claim_interpolation(results, r: Roles, claim) -> None:
    vae = r.autoencoder
    rt = {f: _get(results, f, "roundtrip_psnr_db") for f in (vae, *r.iterative)}
    outcomes, need, mid_vae, mid = _compared(results, "midpoint_fid", vae, r.iterative, True)
    if mid_vae is not None and mid:
        verdict = _outcome(outcomes)
        claim("Interpolation: direct in a VAE's latent (better for latent manipulation) vs via DDIM inversion", verdict,
              f"midpoint FID (lower = more realistic midpoints): {short(vae)} " + figure_text(mid_vae) +
              "".join(f", {f} {figure_text(v)}" for f, v in mid.items()) + f"; round trip PSNR: {short(vae)} " + fmt(rt[vae]) +
              " dB (encode→decode)" + "".join(f", {f} {fmt(rt[f])} dB (invert→regenerate)" for f in mid if rt[f] is not None)
              + (need if verdict == UNDECIDED else ""))


def _claim_representation(results, r: Roles, claim) -> None:
    vae = r.autoencoder
    outcomes, need, probe_vae, probe = _compared(results, "probe_accuracy", vae, r.pixel, False)
    if probe_vae is not None and probe:
        verdict = _outcome(outcomes)
        latent_probes = {f: figure(results, f, "probe_accuracy") for f in r.latent}
        claim("VAEs learn representations (diffusion's latent is just noise)", verdict,
              f"linear probe: {short(vae)} {figure_text(probe_vae)}" + "".join(
                  f", {short(f)} inverted noise {figure_text(v)}" for f, v in probe.items()) +
              "".join(f", {short(f)} {figure_text(v)}" for f, v in latent_probes.items() if v is not None)
              + (need if verdict == UNDECIDED else ""))


def _claim_latent_diffusion(results, r: Roles, claim) -> None:
    vae = r.autoencoder
    for ldm in r.latent[:1]:
        fid_out, fid_need, fid_ldm, fid_vs = _compared(results, "fid", ldm, (vae,), True)
        ms_out, ms_need, ms_ldm, ms_vs = _compared(results, "ms_per_sample", ldm, r.pixel, True)
        if fid_ldm is not None and vae in fid_vs and ms_ldm is not None and ms_vs:
            verdict = _outcome(fid_out + ms_out)
            claim("Latent diffusion combines the strengths of both", verdict,
                  f"{short(ldm)} FID {figure_text(fid_ldm)} vs {short(vae)} {figure_text(fid_vs[vae])}{fid_need}; "
                  f"{short(ldm)} {figure_text(ms_ldm)} ms/sample vs "
                  + ", ".join(f"{short(f)} {figure_text(v)}" for f, v in ms_vs.items()) + ms_need)


CRITERIA = [
    ("sample quality", "fid", True, "FID"),
    ("generation speed", "ms_per_sample", True, "ms/sample"),
    ("likelihood", "bpd", True, "bits/dim"),
    ("representation", "probe_accuracy", False, "linear-probe accuracy"),
    ("interpolation realism", "midpoint_fid", True, "midpoint FID"),
    ("sharpness closest to real data", "sharpness_gap", True, "|log sharpness ratio|"),
]


def when_to_use(results: dict[str, Any]) -> list[str]:
    """Statements derived from the measured numbers: who was best at what, by how much — or that
    the best and the runner-up are not decided at this budget (their intervals overlap)."""
    lines = []
    for name, key, lower, label in CRITERIA:
        figs = {fam: figure(results, fam, key) for fam in results.get("families", {})}
        ranked = sorted(((f, v) for f, v in figs.items() if v is not None), key=lambda fv: fv[1].value if lower else -fv[1].value)
        if len(ranked) < 2:
            continue
        (best, a), (second, b) = ranked[0], ranked[1]
        outcome = decide(a, b, lower)
        if outcome == "undecided":
            unit = SAMPLE_SIZES.get(key, ("", "samples per family"))[1]
            lines.append(f"Best {name}: {undecided_text(label, (title(best), title(second)), a, b, unit)}.")
            continue
        if outcome == "b":  # the intervals say the other way round (FID's are bias-corrected)
            (best, a), (second, b) = (second, b), (best, a)
        ratio = (b.value / a.value if lower else a.value / b.value) if a.value and b.value else float("nan")
        lines.append(f"Best {name}: {title(best)} ({label} {figure_text(a)}; next {title(second)} "
                     f"{figure_text(b)}, {fmt(ratio)}× {'better' if ratio >= 1 else 'worse'}).")
    return lines


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
    from diffvae.compare.figures import captions as figure_captions

    captions = figure_captions(results)
    for name, rel in figures.items():
        items.append((captions.get(name, name), rel))
    return items


def write_report(out: Path, results: dict[str, Any]) -> None:
    from diffvae.compare.curves import crossover_sentences
    from diffvae.compare.figures import draw_all

    figures = draw_all(out, results)
    results["figures"] = figures
    results["claims"] = claims(results)
    results["when_to_use"] = when_to_use(results) + crossover_sentences(results)  # + where learning curves cross
    images = [(c, p) for c, p in _images(results, figures) if (out / p).exists()]
    atomic_write_text(out / "report.md", render_markdown(results, images))
    atomic_write_text(out / "report.html", render_html(results, images))


def _forecast_section(results: dict[str, Any]) -> tuple[str, list[str]]:
    """(heading, lines) of the forecast at a larger budget (:mod:`diffvae.compare.forecasts`), if any."""
    from diffvae.compare.forecasts import section_heading, section_lines

    forecast = results.get("forecast")
    return (section_heading(forecast), section_lines(forecast)) if forecast else ("", [])


def _intro(results: dict[str, Any]) -> str:
    return (f"Data: {results.get('data')} ({results.get('train_size')} training / {results.get('test_size')} held-out images of "
            f"{'×'.join(map(str, results.get('image_shape', [])))}). Budget {fmt(results.get('budget_minutes'))} min, "
            f"used {fmt(results.get('elapsed_minutes'))} min. Sample-quality metrics use {results.get('feature_space', 'diffvae features')} "
            "(a locally trained network; not comparable to Inception FID). [low, high] is a 95% interval; FID's is for the "
            "population value, corrected for the upward bias of FID at finite sample size, so it can lie below the printed "
            "FID. A verdict is given only when the intervals of the compared figures do not overlap.")


def render_markdown(results: dict[str, Any], images: list[tuple[str, str]]) -> str:
    header, rows = table(results, as_html=False)
    lines = ["# diffvae compare report", "", _intro(results), "", "## Measured comparison", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />', "<title>diffvae compare report</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:90%}th{background:#f3f3f3}"
             "figure{display:inline-block;margin:8px}img{image-rendering:pixelated;max-width:560px}</style>",
             "</head>", "<body>", "<h1>diffvae compare report</h1>", f"<p>{e(_intro(results))}</p>",
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
