"""The latent-diffusion family's spec (:class:`diffvae.contract.FamilySpec`). Fitting runs two
engine runs (autoencoder, then diffusion on its latent): :mod:`diffvae.latent.fit`."""

from __future__ import annotations

from typing import Any

from diffvae.diffusion.family import SAMPLERS, STOCHASTIC_SAMPLERS, SWEEP, UNET_TRAIN_DEFAULTS, DiffusionSpec
from diffvae.latent.export import export_denoiser
from diffvae.latent import fit as stages
from diffvae.latent.model import LDMConfig, LatentDiffusion
from diffvae.presets import unet_channel_mult


# Colour images: the autoencoder needs many more small steps than a grey one, and a squared-error term. On `colours`
# (3×32×32) in the ldm's share of a 15-minute compare (175 s), stage 1 at the run's batch 64 and 30% of the time
# reached 15 dB and its reconstructions fell into 4 of the 10 classes, so the samples did too; at batch 16, lr 2e-3
# and 60% of the time it reached 27 dB once, but in 80 CPU-seconds (one core) it ended at 18–25 dB by chance, on a
# plateau it breaks out of late; with mse_weight 200 it ended at 29–30 dB on every seed (benchmarks/RESULTS.md).
COLOUR_AUTOENCODER = {"ae_batch_size": 16, "ae_lr": 2e-3, "ae_steps_fraction": 0.6, "mse_weight": 200.0}


class LatentDiffusionSpec(DiffusionSpec):
    def export_diffusers(self, model, folder, pipeline: str, run_path) -> None:
        """The denoiser only: ``unet/`` + ``scheduler/`` + ``latent.json`` (:mod:`diffvae.latent.export`)."""
        export_denoiser(model, folder, pipeline, run_path)

    def preset_for(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """The latent factor and the latent UNet for the image size: f = 4 up to 64 px (28 → 7×7, 32 → 8×8,
        64 → 16×16×4 latent: 12× fewer values than 3×64×64 pixels; f = 8 would leave 8×8×4, 48× fewer, too
        coarse for the decoder at 64 px), f = 8 above, so the latent stays at most 16 px; the latent UNet keeps
        its two levels (16 → 8, attention at 8×8) and gains one per halving beyond (:func:`unet_channel_mult`).
        Colour images train the autoencoder longer, at a smaller batch (:data:`COLOUR_AUTOENCODER`)."""
        size = max(image_shape[1:])
        downsample = 4 if size <= 64 else 8
        values: dict[str, Any] = {"downsample": downsample} if downsample != LDMConfig.downsample else {}
        if image_shape[0] > 1:
            values.update(COLOUR_AUTOENCODER)
        mult = unet_channel_mult(-(-size // downsample), LDMConfig.channel_mult)
        return {**values, "channel_mult": mult} if mult != LDMConfig.channel_mult else values

    def compare_model_overrides(self, image_shape: tuple[int, int, int], seconds: float) -> dict[str, Any]:
        return self.preset_for(image_shape)

    def report_cells(self, prefix: str) -> dict[str, list]:
        return {"Posterior collapse": ["not applicable to the diffusion stage; autoencoder round trip PSNR ",
                                       ("", prefix + "ae_psnr_db"), " dB"]}

    def check_fit(self, model, train_config, dataset) -> None:
        stages.check_fit(model, train_config, dataset)

    def fit(self, model, dataset, train_config, run, *, resume: bool, progress: bool):
        return stages.fit(model, dataset, train_config, run, resume=resume, progress=progress)


SPEC = LatentDiffusionSpec(
    title="Latent diffusion",
    short="LDM",
    objective="autoencoder ELBO, then latent noise-prediction MSE",
    latent_space="learned encoder + fixed forward process on its latent",
    interpolation="latent DDIM inversion + slerp",
    bound_label="LSGM bound ",
    # the entropy part is +H[q(z|x)], which the bound subtracts (diffvae.latent.bound)
    bound_parts=(("reconstruction_bpd", "reconstruction", 1), ("entropy_bpd", "−entropy H[q(z|x)]", -1),
                 ("latent_prior_bpd", "latent diffusion bound", 1), ("jacobian_bpd", "scale Jacobian", 1)),
    bound_extras=((", latent prior's reverse variance ", "variance"), ("; fixed-small ", "bpd_small"), (", fixed-large ", "bpd_large")),
    iterative=True,
    invertible=True,
    has_encoder=True,
    samplers=SAMPLERS,
    stochastic_samplers=STOCHASTIC_SAMPLERS,
    sweep=SWEEP,
    conditional=True,
    color="#2ca02c",
    config_class=LDMConfig,
    model_class=LatentDiffusion,
    summary="latent diffusion: a KL autoencoder compresses, diffusion models its latent",
    train_defaults=UNET_TRAIN_DEFAULTS,
    # its snapshots are of the prior's stage (RESULTS.md: the fits were never identifiable, the points spanning 2-3x)
    forecast_refusal=("its snapshots share the one autoencoder trained before them, so its curve measures a longer latent "
                      "prior only; a longer compare trains a longer autoencoder too, which the curve does not see"),
)
