"""The pixel-diffusion family's spec (:class:`diffvae.contract.FamilySpec`): what the CLI, the
evaluation and ``compare`` know about DDPM. :class:`DiffusionSpec` is shared with latent diffusion."""

from __future__ import annotations

import time
from typing import Any

import torch

from diffvae.contract import BoundOptions, FamilySpec
from diffvae.diffusion import samplers
from diffvae.diffusion.export import check_pipeline, export_pipeline
from diffvae.diffusion.model import DDPM, DDPMConfig
from diffvae.evaluate import evaluation_cost
from diffvae.images import to_signed
from diffvae.ode_likelihood import continuous_eps_fn, probability_flow_bpd
from diffvae.presets import unet_compare_overrides, unet_preset
from diffvae.recipes import Recipe

# Compute-aware defaults (diffvae.recipes). Swept on mnist at 2 CPU-minutes on one core (bf16 on AMX, about
# 56,000 reference GFLOP: 120 s at 470 GFLOP/s): the 16-wide UNet at batch 32, lr 2e-3 trained 866 steps to
# the 32-wide default's 284 and reached FID 347 against 440, both with ancestral sampling on 100 steps
# (benchmarks/RESULTS.md). Where the 32-wide UNet overtakes it was not measured: its threshold assumes it
# needs the 4× compute that gives it as many optimizer steps.
DDPM_RECIPES = (
    Recipe("ddpm-small", 0.0, {"channels": 16}, {"batch_size": 32, "lr": 2e-3},
           "16-wide UNet, batch 32: more steps win at a few CPU-minutes"),
    Recipe("ddpm-default", 225_000.0, {}, {}, "32-wide UNet, batch 64"),
)
UNET_TRAIN_DEFAULTS = {"lr": 1e-3, "batch_size": 64, "ema_decay": 0.995, "warmup_steps": 200}  # also ldm's and flow's
SAMPLERS = tuple(samplers.SAMPLERS)  # the table of diffvae.diffusion.samplers
STOCHASTIC_SAMPLERS = tuple(name for name, s in samplers.SAMPLERS.items() if s.stochastic)  # dotted in plots
# compare's sampler sweep: (sampler, steps), cheapest first; settings with steps > T are skipped
SWEEP = (("ddim", 10), ("dpm++2m", 10), ("ddim", 20), ("dpm++2m", 20), ("ddim", 50), ("ddpm", 100), ("ddpm", 250), ("ddpm", 1000))


class DiffusionSpec(FamilySpec):
    """A family whose model has a ``denoiser`` (:class:`diffvae.diffusion.model.Denoiser`)."""

    def bound_kwargs(self, options: BoundOptions) -> dict[str, Any]:
        return {"timesteps": options.timesteps, "fit_data": options.fit_data}

    def sweep_settings(self, model) -> list[tuple[str, int]]:
        return [(sampler, steps) for sampler, steps in self.sweep if steps <= model.denoiser.schedule.T]

    def export(self, model, target: str, folder, **options: Any) -> None:
        """``--to diffusers`` (``--pipeline ddim|ddpm``, checked here), written by :meth:`export_diffusers`."""
        if target != "diffusers":
            return super().export(model, target, folder, **options)

        pipeline = options.get("pipeline", "ddim")
        check_pipeline(pipeline)
        self.export_diffusers(model, folder, pipeline, options.get("run_path", "run"))

    def export_diffusers(self, model, folder, pipeline: str, run_path) -> None:
        """Write the diffusers folder; a diffusion family without a mapping refuses, as the contract does."""
        FamilySpec.export(self, model, "diffusers", folder)

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
        """Denoiser evaluations of an evaluation (:func:`diffvae.evaluate.evaluation_cost`): a DDIM inversion or
        regeneration takes ``invert_steps``, the bound 2K per image for the K-draw estimate (else T), plus the
        reverse-variance fit and the probability-flow likelihood."""
        T = model.denoiser.schedule.T
        return evaluation_cost(model, c, invert=model.config.invert_steps, bound=2 * c.bound_timesteps or T,
                               extra=c.variance_fit_n * min(T, 128) + self.ode_cost(model, c))

    def ode_cost(self, model, c) -> float:
        """The probability-flow likelihood's evaluations: two per Heun step, each with a backward pass (~3×)."""
        return 0.0


class PixelDiffusionSpec(DiffusionSpec):
    def ode_cost(self, model, c) -> float:
        return c.ode_n * 2 * c.ode_steps * 3.0  # every prediction type (diffvae.ode_likelihood.continuous_eps_fn)

    def ode_likelihood(self, model, x_uint8: torch.Tensor, steps: int,
                       generator: torch.Generator | None = None) -> dict[str, Any] | None:
        """The probability-flow ODE's bits/dim (:func:`diffvae.ode_likelihood.probability_flow_bpd`: Heun, one
        Hutchinson probe, uniform dequantization) for every prediction type: the raw network (unconditional)
        turned into ε̂ with ᾱ at the continuous t it is given (:func:`diffvae.ode_likelihood.continuous_eps_fn`;
        an ε-network's output as it is)."""
        if steps <= 0:
            return None
        denoiser = model.denoiser
        eps_fn = continuous_eps_fn(denoiser.network, denoiser.schedule, denoiser.config.prediction)
        parts = probability_flow_bpd(eps_fn, to_signed(x_uint8, torch.float64), denoiser.schedule, steps, generator=generator)
        return {"ode_bpd": parts["bpd"], "ode_prior_bpd": parts["prior_bpd"], "ode_log_det_bpd": parts["log_det_bpd"]}

    def export_diffusers(self, model, folder, pipeline: str, run_path) -> None:
        """A DDIMPipeline / DDPMPipeline folder (:mod:`diffvae.diffusion.export`)."""
        export_pipeline(model, folder, pipeline, run_path)

    def preset_for(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """The UNet for the image size (:func:`diffvae.presets.unet_preset`)."""
        return unet_preset(image_shape, DDPMConfig.channel_mult)

    def compare_model_overrides(self, image_shape: tuple[int, int, int], seconds: float) -> dict[str, Any]:
        return unet_compare_overrides(image_shape, DDPMConfig.channel_mult)


SPEC = PixelDiffusionSpec(
    title="Pixel diffusion (DDPM)",
    short="DDPM",
    objective="noise-prediction MSE",
    latent_space="fixed Gaussian forward process (no encoder)",
    interpolation="DDIM inversion + slerp",
    bound_label="L0+ΣKL+L_T ",
    bound_parts=(("decoder_bpd", "L0 decoder", 1), ("diffusion_bpd", "Σ KL (t ≥ 2)", 1), ("prior_bpd", "L_T prior", 1)),
    bound_extras=((", reverse variance ", "variance"), ("; fixed-small ", "bpd_small"), (", fixed-large ", "bpd_large"),
                  ("; probability-flow ODE ", "ode_bpd")),
    iterative=True,
    invertible=True,
    has_encoder=False,
    samplers=SAMPLERS,
    stochastic_samplers=STOCHASTIC_SAMPLERS,
    sweep=SWEEP,
    conditional=True,
    color="#d62728",
    collapse_text="not applicable: the forward process is a fixed encoder",
    config_class=DDPMConfig,
    model_class=DDPM,
    summary="pixel-space diffusion: fixed Gaussian forward process, iterative denoising",
    train_defaults=UNET_TRAIN_DEFAULTS,
    recipes=DDPM_RECIPES,
)
