"""The flow-matching family's spec (:class:`diffvae.contract.FamilySpec`): what the CLI, the evaluation and
``compare`` know about it."""

from __future__ import annotations

import time
from typing import Any

import torch

from diffvae.contract import FamilySpec
from diffvae.flow.model import FlowConfig
from diffvae.flow.samplers import SAMPLERS
from diffvae.presets import unet_compare_overrides, unet_preset

# compare's sampler sweep: (sampler, steps), cheapest first in velocity evaluations (10, 10, 20, 20, 50, 50, 100)
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
        """Velocity evaluations of an evaluation: sampling, ODE inversions/regenerations (probe, midpoints,
        round trips, strips) and the likelihood (each of its evaluations plus one backward pass, about two
        evaluations, per Hutchinson probe); a conditional model's accuracy and guidance sweep too."""
        from diffvae.conditioning import num_classes
        from diffvae.evaluate import conditional_evaluation_cost

        bounds = 2 if num_classes(model) else 1  # a conditional model's bound is also computed given the labels (cond_bpd)

        config = model.config
        invert = model.nfe(steps=config.invert_steps)
        likelihood = model.nfe(sampler=config.likelihood_solver, steps=config.likelihood_steps) * (1 + 2 * config.likelihood_probes)
        return conditional_evaluation_cost(model, c) + (c.n_samples * model.nfe() + (c.probe_train + c.probe_test + 3 * c.midpoints + 2 * c.roundtrip_n
                + c.strips * c.frames) * invert + c.bound_n * likelihood * bounds)

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
    bpd_is_bound=False,  # a probability-flow ODE estimate (solver error biases it), not a bound
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
)
