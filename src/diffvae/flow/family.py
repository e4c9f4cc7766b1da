"""The flow-matching family's spec (:class:`diffvae.contract.FamilySpec`): what the CLI, the evaluation and
``compare`` know about it."""

from __future__ import annotations

import time
import dataclasses
from typing import Any

import torch

from diffvae.contract import FamilySpec
from diffvae.diffusion.family import DDPM_RECIPES, UNET_TRAIN_DEFAULTS
from diffvae.evaluate import evaluation_cost
from diffvae.flow.model import FlowConfig, FlowMatching
from diffvae.flow.samplers import SAMPLERS
from diffvae.presets import unet_compare_overrides, unet_preset

# compare's sampler sweep: (sampler, steps), cheapest first in velocity evaluations (10, 10, 20, 20, 50, 50, 100)
# the same UNet and cost per step as pixel diffusion, so its recipes (flow-small measured: FID 96 on mnist
# after 2 CPU-min, heun 25)
RECIPES = tuple(dataclasses.replace(r, name=r.name.replace("ddpm", "flow")) for r in DDPM_RECIPES)
SWEEP = (("euler", 10), ("heun", 5), ("euler", 20), ("heun", 10), ("euler", 50), ("heun", 25), ("heun", 50))


class FlowSpec(FamilySpec):
    def unit_cost_seconds(self, model, batch: int = 64) -> float:
        """Seconds per image of one velocity evaluation at t = 1/2, after a warm-up."""
        field = model.velocity
        with torch.inference_mode():
            x, t = torch.randn(batch, *field.shape), torch.full((batch,), 0.5)
            field.velocity(x, t)
            t0 = time.perf_counter()
            field.velocity(x, t)
            return (time.perf_counter() - t0) / batch

    def evaluation_cost(self, model, c) -> float:
        """Velocity evaluations of an evaluation (:func:`diffvae.evaluate.evaluation_cost`): an ODE inversion or
        regeneration takes ``invert_steps`` solver steps; the likelihood each of its evaluations plus one
        backward pass (about two evaluations) per Hutchinson probe."""
        config = model.config
        likelihood = model.nfe(sampler=config.likelihood_solver, steps=config.likelihood_steps) * (1 + 2 * config.likelihood_probes)
        return evaluation_cost(model, c, invert=model.nfe(steps=config.invert_steps), bound=likelihood)

    def preset_for(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """The UNet for the image size (:func:`diffvae.presets.unet_preset`)."""
        return unet_preset(image_shape, FlowConfig.channel_mult)

    def compare_model_overrides(self, image_shape: tuple[int, int, int], seconds: float) -> dict[str, Any]:
        return unet_compare_overrides(image_shape, FlowConfig.channel_mult)


SPEC = FlowSpec(
    title="Flow matching (rectified flow)",
    short="flow matching",
    objective="velocity-regression MSE (conditional flow matching)",
    latent_space="noise of a deterministic ODE (no encoder)",
    interpolation="ODE inversion + slerp",
    bound_label="ODE likelihood, dequantized ",
    bpd_is_bound=False,  # the probability-flow ODE's estimate, biased low by solver error: not ranked against bounds
    bound_parts=(("prior_bpd", "prior N(0, I) at t = 1", 1), ("log_det_bpd", "∫ div v dt (log-volume change)", -1),
                 ("dequantization_bpd", "dequantization log₂ 127.5", 1)),
    iterative=True,
    invertible=True,
    has_encoder=False,
    samplers=SAMPLERS,
    sweep=SWEEP,
    color="#ff7f0e",
    conditional=True,
    collapse_text="not applicable: the noise-to-data map is a fixed ODE, not an encoder",
    config_class=FlowConfig,
    model_class=FlowMatching,
    summary="flow matching: straight noise-to-data paths, ODE sampling and ODE likelihood",
    train_defaults=UNET_TRAIN_DEFAULTS,
    recipes=RECIPES,
)
