"""The comparison report: the measured table (the classic table's rows, each cell a measured
figure), the classic claims checked against the numbers, a data-driven "when to use each", and
the figures — as ``report.md`` and ``report.html`` (well-formed XHTML-style HTML5).

Every number in a table cell is rendered from ``results.json`` by :func:`fmt` and, in the HTML,
carries ``data-key`` with its path in ``results.json`` so the report can be checked against it.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from diffvae.runs import atomic_write_text

FAMILY_TITLES = {"vae": "VAE", "ddpm": "Pixel diffusion (DDPM)", "ldm": "Latent diffusion"}

# A cell is a list of parts: plain text, or (key in the family's results, optional prefix) for a number.
Part = str | tuple[str, ...]


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


def _cells(fam: str) -> dict[str, list[Part]]:
    F = f"families.{fam}."
    T = f"training.{fam}."
    interp = {"vae": "direct in latent", "ddpm": "DDIM inversion + slerp", "ldm": "latent DDIM inversion + slerp"}[fam]
    space = {"vae": "learned encoder, N(0, I) prior", "ddpm": "fixed Gaussian forward process (no encoder)",
             "ldm": "learned encoder + fixed forward process on its latent"}[fam]
    bound = {"vae": [("bound ", F + "bpd"), (", IWAE ", F + "iwae_bpd")],
             "ddpm": [("L0+ΣKL+L_T ", F + "bpd"), (" ± ", F + "bpd_stderr")],
             "ldm": [("LSGM bound ", F + "bpd"), (" ± ", F + "bpd_stderr")]}[fam]
    collapse: list[Part]
    if fam == "vae":
        collapse = [("active units ", F + "active_units"), ("/", F + "latent_dims"), (", KL ", F + "kl_nats"), (" nats, MI ", F + "mutual_info"),
                    " nats; PixelCNN decoder: ", ("", "collapse.without_free_bits.active_units"), " active without free bits → ",
                    ("", "collapse.with_free_bits.active_units"), " with"]
    else:
        collapse = ["not applicable: the forward process is a fixed encoder" if fam == "ddpm"
                    else "not applicable to the diffusion stage; autoencoder round trip PSNR ", *(
                        [("", F + "ae_psnr_db"), " dB"] if fam == "ldm" else [])]
    return {
        "Latent space": [space, ("; latent std ", F + "latent_std")],
        "Latent dimension": [("", F + "latent_dims"), (" for ", F + "data_dims"), (" pixel values (ratio ", F + "latent_ratio"), ")"],
        "Generation": [("", F + "nfe"), " network evaluations, ", ("", F + "ms_per_sample"), " ms/sample"],
        "Sample quality": [("FID ", F + "fid"), (", KID ", F + "kid"), (", precision ", F + "precision"), (", recall ", F + "recall"),
                           (", sharpness ×", F + "sharpness_ratio"), (", recognisable ", F + "confident_fraction")],
        "Training": [("", T + "objective"), (": ", T + "minutes"), (" min, ", T + "steps"), (" steps, final loss ", T + "final_loss")],
        "Interpolation": [interp, ("; round trip PSNR ", F + "roundtrip_psnr_db"), (" dB, smoothness ", F + "path_smoothness"),
                          (", midpoint FID ", F + "midpoint_fid")],
        "Posterior collapse": collapse,
        "Bits/dim (ELBO view)": bound,
        "Representation (linear probe)": [("accuracy ", F + "probe_accuracy"), (" (chance ", F + "probe_chance"), ")"],
    }


ROWS = ["Latent space", "Latent dimension", "Generation", "Sample quality", "Training", "Interpolation",
        "Posterior collapse", "Bits/dim (ELBO view)", "Representation (linear probe)"]


def _render_cell(parts: list[Part], results: dict[str, Any], as_html: bool) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(html.escape(part) if as_html else part)
            continue
        prefix, path = part
        value = lookup(results, path)
        if value is None:
            continue
        text = fmt(value)
        if as_html:
            out.append(html.escape(prefix) + (f'<span data-key="{html.escape(path)}">{html.escape(text)}</span>'
                                               if isinstance(value, (int, float)) else html.escape(text)))
        else:
            out.append(prefix + text)
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
    header = ["Aspect"] + [FAMILY_TITLES.get(f, f) for f in fams]
    rows = []
    for row in ROWS:
        cells = [row]
        for fam in fams:
            status = _family_status(results, fam)
            if status is not None and not (row == "Training" and fam in results.get("training", {})):
                cells.append(html.escape(status) if as_html else status)
            else:
                cells.append(_render_cell(_cells(fam)[row], results, as_html))
        rows.append(cells)
    return header, rows


# ----------------------------------------------------------------------------- claims and advice

def _get(results, fam, key):
    return lookup(results, f"families.{fam}.{key}")


def _get_derived(results, fam, key):
    if key == "sharpness_gap":  # blur (< 1) and noise (> 1) both move the ratio away from 1
        ratio = _get(results, fam, "sharpness_ratio")
        return abs(math.log(ratio)) if isinstance(ratio, (int, float)) and ratio > 0 else None
    return _get(results, fam, key)


def _best(results: dict[str, Any], key: str, lower_is_better: bool) -> list[tuple[str, float]]:
    values = [(fam, _get_derived(results, fam, key)) for fam in results.get("families", {})]
    values = [(f, v) for f, v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sorted(values, key=lambda fv: fv[1] if lower_is_better else -fv[1])


def claims(results: dict[str, Any]) -> list[dict[str, str]]:
    """Each classic claim with a verdict (held / did not hold / not measured) and the evidence."""
    out = []

    def claim(text: str, verdict: str | None, evidence: str) -> None:
        out.append({"claim": text, "verdict": verdict or "not measured", "evidence": evidence})

    fid = {f: _get(results, f, "fid") for f in ("vae", "ddpm", "ldm")}
    if fid["vae"] is not None and (fid["ddpm"] is not None or fid["ldm"] is not None):
        diff = [f for f in ("ddpm", "ldm") if fid[f] is not None]
        best = min(diff, key=lambda f: fid[f])
        claim("Sample quality: diffusion is state of the art, VAEs lag", "held" if fid[best] < fid["vae"] else "did not hold",
              f"FID {best} {fmt(fid[best])} vs VAE {fmt(fid['vae'])}")
    else:
        claim("Sample quality: diffusion is state of the art, VAEs lag", None, "needs the VAE and a diffusion family")
    sharp = {f: _get(results, f, "sharpness_ratio") for f in ("vae", "ddpm", "ldm")}
    if sharp["vae"] is not None:
        others = [f for f in ("ddpm", "ldm") if sharp[f] is not None]
        held = sharp["vae"] < 0.8 and all(sharp["vae"] < sharp[f] for f in others)
        claim("VAE samples are often blurry", "held" if held else "did not hold",
              f"sharpness vs real data: VAE ×{fmt(sharp['vae'])}" + "".join(f", {f} ×{fmt(sharp[f])}" for f in others))
    ms = {f: _get(results, f, "ms_per_sample") for f in ("vae", "ddpm", "ldm")}
    nfe = {f: _get(results, f, "nfe") for f in ("vae", "ddpm", "ldm")}
    if ms["vae"] is not None and ms["ddpm"] is not None:
        claim("Generation: a VAE decodes once, diffusion denoises iteratively (slower)",
              "held" if ms["vae"] < ms["ddpm"] else "did not hold",
              f"VAE {fmt(ms['vae'])} ms/sample ({nfe['vae']} NFE) vs DDPM {fmt(ms['ddpm'])} ms/sample ({nfe['ddpm']} NFE): "
              f"{fmt(ms['ddpm'] / max(ms['vae'], 1e-9))}× ")
    lat = {f: _get(results, f, "latent_ratio") for f in ("vae", "ddpm", "ldm")}
    if lat["vae"] is not None and lat["ddpm"] is not None:
        claim("Latent dimension: VAE compressed, diffusion the same as the data",
              "held" if lat["vae"] < 1 and lat["ddpm"] == 1 else "did not hold",
              f"latent/data dimension: VAE {fmt(lat['vae'])}, DDPM {fmt(lat['ddpm'])}" + (f", LDM {fmt(lat['ldm'])}" if lat["ldm"] else ""))
    rt = {f: _get(results, f, "roundtrip_psnr_db") for f in ("vae", "ddpm", "ldm")}
    mid = {f: _get(results, f, "midpoint_fid") for f in ("vae", "ddpm", "ldm")}
    if mid["vae"] is not None and (mid["ddpm"] is not None or mid["ldm"] is not None):
        diff = [f for f in ("ddpm", "ldm") if mid[f] is not None]
        held = all(mid["vae"] < mid[f] for f in diff)
        claim("Interpolation: direct in a VAE's latent (better for latent manipulation) vs via DDIM inversion",
              "held" if held else "did not hold",
              "midpoint FID (lower = more realistic midpoints): VAE " + fmt(mid["vae"]) +
              "".join(f", {f} {fmt(mid[f])}" for f in diff) + "; round trip PSNR: VAE " + fmt(rt["vae"]) + " dB (encode→decode)" +
              "".join(f", {f} {fmt(rt[f])} dB (invert→regenerate)" for f in diff if rt[f] is not None))
    study = results.get("collapse") or {}
    if "without_free_bits" in study and "with_free_bits" in study:
        a, b = study["without_free_bits"], study["with_free_bits"]
        collapsed = a.get("active_units", 0) < b.get("active_units", 0) or a.get("kl_nats", 0) < 0.5 * b.get("kl_nats", 0)
        claim("Posterior collapse is a common issue with powerful decoders (VAE only)", "held" if collapsed else "did not hold",
              f"PixelCNN decoder: {a.get('active_units')} active units, KL {fmt(a.get('kl_nats'))} nats, MI {fmt(a.get('mutual_info'))} "
              f"without free bits; {b.get('active_units')} active, KL {fmt(b.get('kl_nats'))} nats with {study.get('free_bits')} free bits/dim")
    probe = {f: _get(results, f, "probe_accuracy") for f in ("vae", "ddpm", "ldm")}
    if probe["vae"] is not None and probe["ddpm"] is not None:
        claim("VAEs learn representations (diffusion's latent is just noise)", "held" if probe["vae"] > probe["ddpm"] else "did not hold",
              f"linear probe: VAE {fmt(probe['vae'])}, DDPM inverted noise {fmt(probe['ddpm'])}" +
              (f", LDM {fmt(probe['ldm'])}" if probe["ldm"] is not None else ""))
    if fid["ldm"] is not None and fid["vae"] is not None and ms["ldm"] is not None and ms["ddpm"] is not None:
        held = fid["ldm"] < fid["vae"] and ms["ldm"] < ms["ddpm"]
        claim("Latent diffusion combines the strengths of both", "held" if held else "did not hold",
              f"LDM FID {fmt(fid['ldm'])} vs VAE {fmt(fid['vae'])}; LDM {fmt(ms['ldm'])} ms/sample vs DDPM {fmt(ms['ddpm'])}")
    return out


CRITERIA = [
    ("sample quality", "fid", True, "FID"),
    ("generation speed", "ms_per_sample", True, "ms/sample"),
    ("likelihood", "bpd", True, "bits/dim"),
    ("representation", "probe_accuracy", False, "linear-probe accuracy"),
    ("interpolation realism", "midpoint_fid", True, "midpoint FID"),
    ("sharpness closest to real data", "sharpness_gap", True, "|log sharpness ratio|"),
]


def when_to_use(results: dict[str, Any]) -> list[str]:
    """Statements derived from the measured numbers: who was best at what, by how much."""
    lines = []
    for name, key, lower, label in CRITERIA:
        ranked = _best(results, key, lower)
        if len(ranked) < 2:
            continue
        (best, bv), (second, sv) = ranked[0], ranked[1]
        ratio = (sv / bv if lower else bv / sv) if bv and sv else float("nan")
        lines.append(f"Best {name}: {FAMILY_TITLES.get(best, best)} ({label} {fmt(bv)}; next {FAMILY_TITLES.get(second, second)} "
                     f"{fmt(sv)}, {fmt(ratio)}× {'better' if ratio >= 1 else 'worse'}).")
    return lines


# ----------------------------------------------------------------------------- writing

def _images(results: dict[str, Any], figures: dict[str, str]) -> list[tuple[str, str]]:
    """(caption, relative path) of every image of the report that exists."""
    items = []
    for fam, r in results.get("families", {}).items():
        for kind, rel in (r.get("figures") or {}).items():
            items.append((f"{FAMILY_TITLES.get(fam, fam)}: {kind}", rel))
        for row in r.get("sweep") or []:
            items.append((f"{FAMILY_TITLES.get(fam, fam)}: {row['sampler']}, {row['steps']} steps (FID {fmt(row['fid'])})", row["figure"]))
    captions = {"quality_vs_nfe": "Quality against NFE", "bpd_bars": "Bits/dim and the bound's parts",
                "training_curves": "Training curves", "kl_per_dim": "VAE KL per latent dimension",
                "collapse": "Posterior-collapse study"}
    for name, rel in figures.items():
        items.append((captions.get(name, name), rel))
    return items


def write_report(out: Path, results: dict[str, Any]) -> None:
    from diffvae.compare.figures import draw_all

    figures = draw_all(out, results)
    results["figures"] = figures
    results["claims"] = claims(results)
    results["when_to_use"] = when_to_use(results)
    images = [(c, p) for c, p in _images(results, figures) if (out / p).exists()]
    atomic_write_text(out / "report.md", render_markdown(results, images))
    atomic_write_text(out / "report.html", render_html(results, images))


def _intro(results: dict[str, Any]) -> str:
    return (f"Data: {results.get('data')} ({results.get('train_size')} training / {results.get('test_size')} held-out images of "
            f"{'×'.join(map(str, results.get('image_shape', [])))}). Budget {fmt(results.get('budget_minutes'))} min, "
            f"used {fmt(results.get('elapsed_minutes'))} min. Sample-quality metrics use {results.get('feature_space', 'diffvae features')} "
            "(a locally trained network; not comparable to Inception FID).")


def render_markdown(results: dict[str, Any], images: list[tuple[str, str]]) -> str:
    header, rows = table(results, as_html=False)
    lines = ["# diffvae compare report", "", _intro(results), "", "## Measured comparison", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += ["", "## The classic claims, checked on this data", ""]
    lines += [f"- **{c['claim']}** — {c['verdict']}: {c['evidence']}" for c in results.get("claims", [])]
    lines += ["", "## When to use each (measured here)", ""] + [f"- {s}" for s in results.get("when_to_use", [])]
    failed = {k: v for k, v in (results.get("stages") or {}).items() if v.get("status") != "done"}
    if failed:
        lines += ["", "## Stages that did not finish", ""] + [f"- {k}: {v.get('status')} — {v.get('error', '')}" for k, v in failed.items()]
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
    failed = {k: v for k, v in (results.get("stages") or {}).items() if v.get("status") != "done"}
    if failed:
        parts += ["<h2>Stages that did not finish</h2>", "<ul>"]
        parts += [f"<li>{e(k)}: {e(str(v.get('status')))} — {e(str(v.get('error', '')))}</li>" for k, v in failed.items()]
        parts.append("</ul>")
    parts.append("<h2>Figures</h2>")
    parts += [f'<figure><img src="{e(p)}" alt="{e(c)}" /><figcaption>{e(c)}</figcaption></figure>' for c, p in images]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
