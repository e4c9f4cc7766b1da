"""The report's plots, drawn from ``results.json`` alone (so a report can be redrawn from it)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffvae.runs import atomic_write_bytes

COLORS = {"vae": "#1f77b4", "ddpm": "#d62728", "ldm": "#2ca02c"}
# (key, label, sign): bpd = Σ sign · part. The LDM's entropy_bpd is +H[q(z|x)], which the bound
# subtracts (bpd = reconstruction − entropy + latent prior + Jacobian, diffvae.latent.bound); the VAE's
# iwae_gap_bpd (IWAE − ELBO) is ≤ 0 and enters with +.
BPD_PARTS = {
    "vae": [("recon_bpd", "reconstruction", 1), ("kl_bpd", "KL", 1), ("iwae_gap_bpd", "IWAE gain over the ELBO", 1)],
    "ddpm": [("decoder_bpd", "L0 decoder", 1), ("diffusion_bpd", "Σ KL (t ≥ 2)", 1), ("prior_bpd", "L_T prior", 1)],
    "ldm": [("reconstruction_bpd", "reconstruction", 1), ("entropy_bpd", "−entropy H[q(z|x)]", -1),
            ("latent_prior_bpd", "latent diffusion bound", 1), ("jacobian_bpd", "scale Jacobian", 1)],
}
PARTS_TOLERANCE = 1e-6  # relative: parts that miss their total by more get an explicit remainder


@dataclass
class BpdStack:
    """A family's bound split into signed parts that add up to ``total``, the bound on the same images."""

    parts: list[tuple[str, float]]  # (label, signed bits/dim), Σ = total
    total: float
    images: int | None  # how many held-out images the parts (and total) average over
    note: str | None  # set when the parts are not over all the images of the headline bpd


def bpd_stack(results: dict[str, Any], fam: str) -> BpdStack | None:
    """The signed parts of a family's bound (``BPD_PARTS``), over the same images as their total.

    If the evaluation gave the parts on a subset only (``bound_parts_n`` of ``bpd_n`` images, with
    their own total ``bpd_full_subset``), the total is that subset's and ``note`` says so. Parts
    that do not add up to the total (a part not listed here) get a "remainder" part, so the bars
    always sum to the total they are drawn against."""
    r = (results.get("families") or {}).get(fam) or {}
    if r.get("bpd") is None:
        return None
    n, k = r.get("bpd_n"), r.get("bound_parts_n")
    total, images, note = float(r["bpd"]), n, None
    if k is not None and k != n and r.get("bpd_full_subset") is not None:
        total, images = float(r["bpd_full_subset"]), k
        note = f"parts from {k} of the {n if n is not None else '?'} images (their bound {total:.4g})"
    parts = [(label, sign * float(r[key])) for key, label, sign in BPD_PARTS.get(fam, []) if r.get(key) is not None]
    remainder = total - sum(v for _, v in parts)
    if parts and abs(remainder) > PARTS_TOLERANCE * max(1.0, abs(total)):
        parts.append(("remainder (not itemised)", remainder))
    return BpdStack(parts, total, images, note)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw_all(out: Path, results: dict[str, Any]) -> dict[str, str]:
    """Draw every plot the results allow; returns {name: relative path}."""
    from diffvae.compare.curves import bpd_vs_compute, fid_vs_compute  # the learning curves at equal compute

    drawn = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, fn in (("quality_vs_nfe", quality_vs_nfe), ("bpd_bars", bpd_bars), ("training_curves", training_curves),
                     ("kl_per_dim", kl_per_dim), ("collapse", collapse), ("fid_vs_compute", fid_vs_compute),
                     ("bpd_vs_compute", bpd_vs_compute)):
        rel = f"figures/{name}.png"
        if fn(results, out / rel):
            drawn[name] = rel
    return drawn


def quality_vs_nfe(results: dict[str, Any], path: Path) -> bool:
    fams = results.get("families", {})
    curves = {f: r.get("sweep") for f, r in fams.items() if r.get("sweep")}
    if not curves and "vae" not in fams:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    markers = {"ddpm": "o", "ddim": "s", "dpm++2m": "^"}
    for fam, rows in curves.items():
        for sampler in sorted({r["sampler"] for r in rows}):
            pts = sorted((r["nfe"], r["fid"]) for r in rows if r["sampler"] == sampler and r.get("fid") is not None)
            if pts:
                ax.plot(*zip(*pts), marker=markers.get(sampler, "o"), color=COLORS.get(fam), label=f"{fam} {sampler}",
                        linestyle="-" if sampler != "ddpm" else ":")
    vae = fams.get("vae", {})
    if vae.get("fid") is not None:
        ax.scatter([1], [vae["fid"]], color=COLORS["vae"], marker="*", s=150, label="vae (1 decode)", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(f"FID ({results.get('feature_space', 'diffvae features')})")
    ax.set_title("Sample quality against generation cost")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def bpd_bars(results: dict[str, Any], path: Path) -> bool:
    """Per family: the positive parts stacked up from 0 (left), the negative ones stacked down from
    there (right, hatched), ending at the total; the bound's 95% interval as an error bar."""
    stacks = {f: bpd_stack(results, f) for f in results.get("families", {})}
    stacks = {f: st for f, st in stacks.items() if st is not None}
    if not stacks:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(stacks)
    for i, fam in enumerate(names):
        stack, r = stacks[fam], results["families"][fam]
        top = 0.0
        for label, value in [p for p in stack.parts if p[1] >= 0] + [p for p in stack.parts if p[1] < 0]:
            negative = value < 0
            ax.bar(i + (0.18 if negative else -0.18), value, width=0.36, bottom=top, label=f"{fam}: {label}" + (" (−)" if negative else ""),
                   alpha=0.85, hatch="//" if negative else None)
            top += value
        ax.scatter([i], [stack.total], color="black", marker="_", s=600, zorder=5)
        ci = r.get("bpd_ci95")
        if stack.note is None and isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            ax.errorbar([i], [r["bpd"]], yerr=[[r["bpd"] - ci[0]], [ci[1] - r["bpd"]]], color="black", capsize=4, zorder=6)
        text = f"{stack.total:.3f}" + (f"\n{stack.note}" if stack.note else "")
        ax.annotate(text, (i, stack.total), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    totals = [stacks[f].total for f in names]
    if min(totals) > 0 and max(totals) / min(totals) > 20:
        ax.set_yscale("log")  # an undertrained bound can be orders of magnitude above the others
    ax.margins(y=0.15)
    ax.set_ylabel("bits/dim (upper bound on −log₂ p(x) / D)")
    ax.set_title("Likelihood bounds and their parts (held-out; hatched parts are subtracted)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    _save(fig, path)
    return True


def training_curves(results: dict[str, Any], path: Path) -> bool:
    curves = {f: t.get("curve") for f, t in results.get("training", {}).items() if t.get("curve")}
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (fam, curve) in zip(axes[0], curves.items()):
        steps, losses = zip(*curve)
        ax.plot(steps, losses, color=COLORS.get(fam))
        ax.set_title(f"{fam}: {results['training'][fam].get('objective', '')}", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def kl_per_dim(results: dict[str, Any], path: Path) -> bool:
    vae = results.get("families", {}).get("vae", {})
    kl = vae.get("kl_per_dim")
    if not kl:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    order = sorted(range(len(kl)), key=lambda i: -kl[i])
    ax.bar(range(len(kl)), [kl[i] for i in order], color=COLORS["vae"])
    ax.set_xlabel("latent dimension (sorted)")
    ax.set_ylabel("KL, nats")
    ax.set_title(f"VAE: KL per latent dimension — {vae.get('active_units')} active of {len(kl)}")
    _save(fig, path)
    return True


def collapse(results: dict[str, Any], path: Path) -> bool:
    study = results.get("collapse")
    if not study or "without_free_bits" not in study or "with_free_bits" not in study:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, key, offset in (("no free bits", "without_free_bits", -0.2), (f"free bits {study['free_bits']}", "with_free_bits", 0.2)):
        kl = sorted(study[key].get("kl_per_dim") or [], reverse=True)
        ax.bar([i + offset for i in range(len(kl))], kl, width=0.4, label=f"{label}: {study[key].get('active_units')} active")
    ax.set_xlabel("latent dimension (sorted)")
    ax.set_ylabel("KL, nats")
    ax.set_title("Posterior collapse with a PixelCNN decoder, and its cure")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True
