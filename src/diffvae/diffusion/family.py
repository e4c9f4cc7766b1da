"""The pixel-diffusion family's spec (:class:`diffvae.contract.FamilySpec`): what the CLI, the
evaluation and ``compare`` know about DDPM. :class:`DiffusionSpec` is shared with latent diffusion."""

from __future__ import annotations

import time
from typing import Any

import torch

from diffvae.contract import BoundOptions, FamilySpec
from diffvae.diffusion.model import DDPMConfig
from diffvae.presets import unet_channel_mult

SAMPLERS = ("ddpm", "ddim", "dpm++2m")
# compare's sampler sweep: (sampler, steps), cheapest first; settings with steps > T are skipped
SWEEP = (("ddim", 10), ("dpm++2m", 10), ("ddim", 20), ("dpm++2m", 20), ("ddim", 50), ("ddpm", 100), ("ddpm", 250), ("ddpm", 1000))


class DiffusionSpec(FamilySpec):
    """A family whose model has a ``denoiser`` (:class:`diffvae.diffusion.model.Denoiser`)."""

    def bound_kwargs(self, options: BoundOptions) -> dict[str, Any]:
        return {"timesteps": options.timesteps, "fit_data": options.fit_data}

    def sweep_settings(self, model) -> list[tuple[str, int]]:
        return [(sampler, steps) for sampler, steps in self.sweep if steps <= model.denoiser.schedule.T]

    def unit_cost_seconds(self, model, batch: int = 64) -> float:
        """Seconds per image of one denoiser evaluation at t = T/2, after a warm-up."""
        denoiser = model.denoiser
        with torch.inference_mode():
            x = torch.randn(batch, *denoiser.shape)
            t = torch.full((batch,), denoiser.schedule.T // 2, dtype=torch.long)
            denoiser.eps_fn(x, t)
            t0 = time.perf_counter()
            denoiser.eps_fn(x, t)
            return (time.perf_counter() - t0) / batch

    def evaluation_cost(self, model, c) -> float:
        """Denoiser evaluations of an evaluation: sampling, DDIM inversions/regenerations (probe,
        midpoints, round trips, strips), the bound (2K per image for the K-draw estimate, else T)
        and the reverse-variance fit; a conditional model's accuracy and guidance sweep too."""
        from diffvae.evaluate import conditional_evaluation_cost

        invert, T = model.config.invert_steps, model.denoiser.schedule.T
        return conditional_evaluation_cost(model, c) + (c.n_samples * model.nfe() + (c.probe_train + c.probe_test + 3 * c.midpoints + 2 * c.roundtrip_n
                + c.strips * c.frames) * invert + c.bound_n * (2 * c.bound_timesteps or T) + c.variance_fit_n * min(T, 128))


class PixelDiffusionSpec(DiffusionSpec):
    def export(self, model, target: str, folder, **options: Any) -> None:
        """``--to diffusers``: a DDIMPipeline / DDPMPipeline folder (:mod:`diffvae.diffusion.export`)."""
        if target != "diffusers":
            return super().export(model, target, folder, **options)
        from diffvae.diffusion.export import check_pipeline, export_pipeline

        check_pipeline(options.get("pipeline", "ddim"))
        export_pipeline(model, folder, options.get("pipeline", "ddim"), options.get("run_path", "run"))

    def preset_for(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """The UNet for the image size (:func:`diffvae.presets.unet_channel_mult`): the default three levels
        up to 32 px (28 → 7, 32 → 8 px, attention there), one more per halving above (64 px: (1, 2, 2, 2),
        64 → 8 px with attention at 8×8, not 16×16: 4× fewer attention tokens). Grey or colour alike."""
        mult = unet_channel_mult(max(image_shape[1:]))
        return {"channel_mult": mult} if mult != DDPMConfig.channel_mult else {}

    def compare_model_overrides(self, image_shape: tuple[int, int, int], seconds: float) -> dict[str, Any]:
        """The preset; tiny images (≤ 16 px) get a smaller UNet: 32 wide, two levels."""
        return {"channels": 32, "channel_mult": (1, 2)} if image_shape[1] <= 16 else self.preset_for(image_shape)


SPEC = PixelDiffusionSpec(
    title="Pixel diffusion (DDPM)",
    short="DDPM",
    objective="noise-prediction MSE",
    latent_space="fixed Gaussian forward process (no encoder)",
    interpolation="DDIM inversion + slerp",
    bound_label="L0+ΣKL+L_T ",
    bound_parts=(("decoder_bpd", "L0 decoder", 1), ("diffusion_bpd", "Σ KL (t ≥ 2)", 1), ("prior_bpd", "L_T prior", 1)),
    bound_extras=((", reverse variance ", "variance"), ("; fixed-small ", "bpd_small"), (", fixed-large ", "bpd_large")),
    iterative=True,
    invertible=True,
    has_encoder=False,
    samplers=SAMPLERS,
    stochastic_samplers=("ddpm",),
    sweep=SWEEP,
    conditional=True,
    color="#d62728",
    collapse_text="not applicable: the forward process is a fixed encoder",
)
