"""The VAE family's spec (:class:`diffvae.contract.FamilySpec`): what the CLI, the evaluation and
``compare`` know about it, including its own compare stage (the posterior-collapse study: a VAE
with a PixelCNN decoder without and with free bits), its plots and its claim."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from diffvae.compare.style import pyplot, save_figure
from diffvae.compare.verdicts import Figure, UNDECIDED, decide, figure_text, fmt, interval_of, mi_ceiling_note
from diffvae.contract import BoundOptions, CompareContext, ExtraFigure, ExtraStage, FamilySpec
from diffvae.vae.model import VAE, VAEConfig

COLLAPSE_FREE_BITS = 0.5  # nats per latent dimension for the cured run
COLLAPSE_TRAIN_SHARE = 0.45  # of the collapse stage's time, for each of its two runs
COLLAPSE_SHARE = 0.08  # of the compare budget


def collapse_study(ctx: CompareContext, seconds: float) -> dict[str, Any]:
    """A VAE with a powerful autoregressive (PixelCNN) decoder, without and with free bits:
    collapse diagnostics and the bound of each (``results["collapse"]``)."""
    study: dict[str, Any] = {"decoder": "pixelcnn", "free_bits": COLLAPSE_FREE_BITS}
    for name, free_bits in (("without_free_bits", 0.0), ("with_free_bits", COLLAPSE_FREE_BITS)):
        run_dir = Path(ctx.out) / "runs" / f"collapse-{name}"
        config = ctx.model_config("vae", decoder="pixelcnn", free_bits=free_bits)
        ctx.train("vae", run_dir, config, ctx.train_config("vae", seconds * COLLAPSE_TRAIN_SHARE))
        model = ctx.load(run_dir)
        x = ctx.dataset.test[:500]
        with torch.no_grad():
            diag = model.diagnostics(x, generator=torch.Generator().manual_seed(ctx.config.seed))
            bound = model.bound(x[:200], generator=torch.Generator().manual_seed(ctx.config.seed))
        study[name] = {**diag, "bpd": float(bound["bpd"].mean()), "kl_bpd": float(bound["kl_bpd"].mean())}
    return study


def draw_kl_per_dim(results: dict[str, Any], name: str, path: Path) -> bool:
    vae = results.get("families", {}).get(name, {})
    kl = vae.get("kl_per_dim")
    if not kl:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    order = sorted(range(len(kl)), key=lambda i: -kl[i])
    ax.bar(range(len(kl)), [kl[i] for i in order], color=SPEC.color)
    ax.set_xlabel("latent dimension (sorted)")
    ax.set_ylabel("KL, nats")
    ax.set_title(f"VAE: KL per latent dimension — {vae.get('active_units')} active of {len(kl)}")
    save_figure(fig, path)
    return True


def draw_collapse(results: dict[str, Any], name: str, path: Path) -> bool:
    study = results.get("collapse")
    if not study or "without_free_bits" not in study or "with_free_bits" not in study:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, key, offset in (("no free bits", "without_free_bits", -0.2), (f"free bits {study['free_bits']}", "with_free_bits", 0.2)):
        kl = sorted(study[key].get("kl_per_dim") or [], reverse=True)
        ax.bar([i + offset for i in range(len(kl))], kl, width=0.4, label=f"{label}: {study[key].get('active_units')} active")
    ax.set_xlabel("latent dimension (sorted)")
    ax.set_ylabel("KL, nats")
    ax.set_title("Posterior collapse with a PixelCNN decoder, and its cure")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def collapse_verdict(study: dict[str, Any]) -> tuple[str, str]:
    """Collapse held if the run without free bits has fewer active units, or a KL below half the cured
    run's (decided on their intervals when the study stored ``kl_nats_ci95``). Not decided when the
    cured run's KL is still far below its free-bits floor λ·L: free bits make KL below λ per
    dimension free, so a run that trained enough to use its latent sits at or above the floor —
    one far below it trained too little to show the cure (or the collapse)."""
    a, b = study["without_free_bits"], study["with_free_bits"]
    kl_a = Figure(a.get("kl_nats", 0.0), interval_of(a, "kl_nats"), a.get("kl_n"))
    ci_b = interval_of(b, "kl_nats")
    half_b = Figure(0.5 * b.get("kl_nats", 0.0), (0.5 * ci_b[0], 0.5 * ci_b[1]) if ci_b else None, b.get("kl_n"))
    kl_outcome = decide(kl_a, half_b, True)
    fewer_units = a.get("active_units", 0) < b.get("active_units", 0)
    verdict = "held" if fewer_units or kl_outcome == "a" else "did not hold" if kl_outcome == "b" else UNDECIDED
    floor = float(study.get("free_bits") or 0.0) * len(b.get("kl_per_dim") or [])
    too_little = floor > 0 and b.get("kl_nats", 0.0) < 0.5 * floor
    if too_little:
        verdict = UNDECIDED
    mi = lambda arm: fmt(arm.get("mutual_info")) + mi_ceiling_note(arm.get("mutual_info"), arm.get("mutual_info_max"))
    evidence = (f"PixelCNN decoder: {a.get('active_units')} active units, KL {figure_text(kl_a)} nats, MI {mi(a)} nats "
                f"without free bits; {b.get('active_units')} active, KL {figure_text(Figure(b.get('kl_nats', 0.0), ci_b))} nats, "
                f"MI {mi(b)} nats with free bits λ = {study.get('free_bits')} nats per latent dimension")
    if too_little:
        evidence += (f"; the free-bits run's KL is far below its floor λ·L = {fmt(floor)} nats: the study trained too little "
                     "to show the collapse or its cure")
    return verdict, evidence


class VAESpec(FamilySpec):
    def bound_kwargs(self, options: BoundOptions) -> dict[str, Any]:
        return {"iwae_samples": options.importance_samples}

    def preset_for(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """The latent size for the image: 16 (the default) up to 1,024 values (1×28×28, 1×32×32), then doubled
        each time the values quadruple, L = 16·2^round(log₄(D/1024)) (D = C·H·W; 3×32×32 and 1×64×64 → 32,
        3×64×64 → 64). The conv encoder/decoder already deepen with the size (stride-2 levels until 8 px:
        2 at 28/32 px, 3 at 64 px; :func:`diffvae.nn.conv.downsample_sizes`)."""
        dims = image_shape[0] * image_shape[1] * image_shape[2]
        latent = 16 * 2 ** max(0, round(math.log(dims / 1024, 4))) if dims > 1024 else 16
        return {"latent_dim": latent} if latent != VAEConfig.latent_dim else {}

    def compare_model_overrides(self, image_shape: tuple[int, int, int], seconds: float) -> dict[str, Any]:
        return self.preset_for(image_shape)

    def report_cells(self, prefix: str) -> dict[str, list]:
        F = prefix
        return {"Posterior collapse": [
            ("active units ", F + "active_units"), ("/", F + "latent_dims"), (", KL ", F + "kl_nats"), " nats",
            (", MI ", F + "mutual_info", "mi"), "; PixelCNN decoder: ", ("", "collapse.without_free_bits.active_units"),
            " active without free bits → ", ("", "collapse.with_free_bits.active_units"), " with"]}

    def claims(self, results: dict[str, Any], name: str) -> list[dict[str, str]]:
        study = results.get("collapse") or {}
        if "without_free_bits" not in study or "with_free_bits" not in study:
            return []
        verdict, evidence = collapse_verdict(study)
        return [{"claim": "Posterior collapse is a common issue with powerful decoders (VAE only)", "verdict": verdict,
                 "evidence": evidence}]


SPEC = VAESpec(
    title="VAE",
    short="VAE",
    objective="ELBO = reconstruction + KL",
    latent_space="learned encoder, N(0, I) prior",
    interpolation="direct in latent",
    bound_label="bound ",
    # iwae_gap_bpd (IWAE − ELBO) is ≤ 0 and enters with +
    bound_parts=(("recon_bpd", "reconstruction", 1), ("kl_bpd", "KL", 1), ("iwae_gap_bpd", "IWAE gain over the ELBO", 1)),
    bound_extras=((", ELBO ", "elbo_bpd"), (", IWAE ", "iwae_bpd")),
    iterative=False,
    invertible=False,
    has_encoder=True,
    conditional=True,
    color="#1f77b4",
    extra_stages=(ExtraStage("collapse", COLLAPSE_SHARE, collapse_study),),
    extra_figures=(ExtraFigure("kl_per_dim", "VAE KL per latent dimension", draw_kl_per_dim),
                   ExtraFigure("collapse", "Posterior-collapse study", draw_collapse)),
    config_class=VAEConfig,
    model_class=VAE,
    summary="variational autoencoder: learned encoder, compressed latent, single decode",
    train_defaults={"lr": 2e-3, "batch_size": 64, "ema_decay": 0.995},  # swept: benchmarks/RESULTS.md, recipe sweep
)
