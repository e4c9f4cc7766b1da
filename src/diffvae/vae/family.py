"""The VAE family's spec (:class:`diffvae.contract.FamilySpec`): what the CLI, the evaluation and
``compare`` know about it, including its own compare stage (the posterior-collapse study: a VAE
with a PixelCNN decoder without and with free bits), its plots and its claim."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from diffvae.compare.style import pyplot, save_figure
from diffvae.compare.verdicts import (UNDECIDED, Figure, comparison_entry, comparison_text, figure_text, fmt, interval_of,
                                      mi_ceiling_note, store_comparisons)
from diffvae.contract import BoundOptions, CompareContext, ExtraFigure, ExtraStage, FamilySpec
from diffvae.vae.model import VAE, VAEConfig

COLLAPSE_FREE_BITS = 0.5  # nats per latent dimension for the cured run
COLLAPSE_TRAIN_SHARE = 0.45  # of the collapse stage's time, for each of its two runs
COLLAPSE_SHARE = 0.08  # of the compare budget
# compare's VAE keeps its best weights by held-out bound (diffvae.holdout): on the 5,000-image mnist its held-out
# bound turned up within 60 CPU-minutes while the training loss still fell (benchmarks/RESULTS.md, issue 25)
COMPARE_EARLY_STOP_EVERY = 200


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


COLLAPSE_CLAIM = "Posterior collapse is a common issue with powerful decoders (VAE only)"


def collapse_comparison(study: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any] | None:
    """The KL drop a powerful decoder causes: the VAE's KL with its own decoder (``reference``, the
    compare's evaluation) minus the PixelCNN-decoder VAE's without free bits, nats, with its 95% interval
    (a ``results["comparisons"]`` entry, metric ``kl_nats``; "a" decided = the PixelCNN decoder's KL is lower:
    the posterior collapsed towards the prior). None when either KL was not measured."""
    a, b = reference, study["without_free_bits"]
    if a.get("kl_nats") is None or b.get("kl_nats") is None:
        return None
    kl = lambda arm: Figure(float(arm["kl_nats"]), interval_of(arm, "kl_nats"), arm.get("kl_n"))
    return comparison_entry(f"claim:{COLLAPSE_CLAIM}", "kl_nats", ("vae", "vae:pixelcnn"), kl(a), kl(b), False)


def collapse_verdict(study: dict[str, Any], reference: dict[str, Any] | None = None) -> tuple[str, str, dict[str, Any] | None]:
    """Collapse held when the PixelCNN decoder's KL (without free bits) is decided below the VAE's own
    decoder's (``reference``): the KL drop's 95% interval excludes 0 (:func:`collapse_comparison`); did not
    hold when it is decided above; not decided when the interval allows no drop, or without both KLs.
    Active units and the mutual information are shown, not decided on (MI has no interval). Not decided
    either when the cured run's KL is still far below its free-bits floor λ·L: free bits make KL below λ
    per dimension free, so a run that trained enough to use its latent sits at or above the floor — one far
    below it trained too little to show the cure (or the collapse)."""
    a, b = study["without_free_bits"], study["with_free_bits"]
    entry = collapse_comparison(study, reference or {})
    verdict = UNDECIDED if entry is None or entry["decided"] is None else "held" if entry["decided"] == "a" else "did not hold"
    floor = float(study.get("free_bits") or 0.0) * len(b.get("kl_per_dim") or [])
    too_little = floor > 0 and b.get("kl_nats", 0.0) < 0.5 * floor
    if too_little:
        verdict = UNDECIDED
    mi = lambda arm: fmt(arm.get("mutual_info")) + mi_ceiling_note(arm.get("mutual_info"), arm.get("mutual_info_max"))
    kl = lambda arm: figure_text(Figure(arm.get("kl_nats", 0.0), interval_of(arm, "kl_nats")))
    evidence = ""
    if entry is not None:
        r = reference or {}
        evidence = (f"KL (nats) with the VAE's own decoder {kl(r)} → with a PixelCNN decoder {kl(a)}: drop "
                    f"{comparison_text(entry)}; MI (nats, no interval) {mi(r)} → {mi(a)}. ")
    evidence += (f"PixelCNN decoder: {a.get('active_units')} active units, KL {kl(a)} nats, MI {mi(a)} nats "
                 f"without free bits; {b.get('active_units')} active, KL {kl(b)} nats, "
                 f"MI {mi(b)} nats with free bits λ = {study.get('free_bits')} nats per latent dimension")
    if entry is None:
        evidence += "; the VAE's own KL was not measured, so the drop is not known"
    if too_little:
        evidence += (f"; the free-bits run's KL is far below its floor λ·L = {fmt(floor)} nats: the study trained too little "
                     "to show the collapse or its cure")
    return verdict, evidence, entry


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

    def compare_train_overrides(self, seconds: float) -> dict[str, Any]:
        return {"early_stop_every": COMPARE_EARLY_STOP_EVERY}

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
        verdict, evidence, entry = collapse_verdict(study, (results.get("families") or {}).get(name))
        if entry is not None:
            entry["a"], entry["b"] = name, f"{name}:pixelcnn"
            store_comparisons(results, [entry])
        return [{"claim": COLLAPSE_CLAIM, "verdict": verdict, "evidence": evidence}]


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
