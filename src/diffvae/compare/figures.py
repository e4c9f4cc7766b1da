"""The report's plots, drawn from ``results.json`` alone (so a report can be redrawn from it)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from diffvae.runs import atomic_write_bytes

COLORS = {"vae": "#1f77b4", "ddpm": "#d62728", "ldm": "#2ca02c"}
BPD_PARTS = {
    "vae": [("recon_bpd", "reconstruction"), ("kl_bpd", "KL")],
    "ddpm": [("decoder_bpd", "L0 decoder"), ("diffusion_bpd", "Σ KL (t ≥ 2)"), ("prior_bpd", "L_T prior")],
    "ldm": [("reconstruction_bpd", "reconstruction"), ("entropy_bpd", "−entropy q(z|x)"),
            ("latent_prior_bpd", "latent diffusion bound"), ("jacobian_bpd", "scale Jacobian")],
}


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
    drawn = {}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, fn in (("quality_vs_nfe", quality_vs_nfe), ("bpd_bars", bpd_bars), ("training_curves", training_curves),
                     ("kl_per_dim", kl_per_dim), ("collapse", collapse)):
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
    fams = {f: r for f, r in results.get("families", {}).items() if r.get("bpd") is not None}
    if not fams:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(fams)
    for i, fam in enumerate(names):
        bottom = 0.0
        for key, label in BPD_PARTS.get(fam, []):
            value = fams[fam].get(key)
            if value is None:
                continue
            ax.bar(i, value, bottom=bottom, label=f"{fam}: {label}", alpha=0.85)
            bottom += value
        ax.scatter([i], [fams[fam]["bpd"]], color="black", marker="_", s=400, zorder=5)
        ax.annotate(f"{fams[fam]['bpd']:.3f}", (i, fams[fam]["bpd"]), textcoords="offset points", xytext=(0, 5), ha="center")
    ax.set_xticks(range(len(names)), names)
    totals = [fams[f]["bpd"] for f in names]
    if min(totals) > 0 and max(totals) / min(totals) > 20:
        ax.set_yscale("log")  # an undertrained bound can be orders of magnitude above the others
    ax.margins(y=0.15)
    ax.set_ylabel("bits/dim (upper bound on −log₂ p(x) / D)")
    ax.set_title("Likelihood bounds and their parts (held-out)")
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
