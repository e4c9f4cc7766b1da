"""The flow-matching family model: the contract's members, its loss against the path's definition, ODE
inversion round trips, the bound's parts, and Hutchinson against the exact divergence on the real UNet."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from diffvae.contract import FamilyModel, spec_of
from diffvae.errors import DiffvaeError
from diffvae.flow import paths
from diffvae.flow.model import FlowConfig, FlowMatching
from diffvae import ode_likelihood

TINY = dict(channels=8, channel_mult=(1,), attention_levels=())


def _trained_like(model: FlowMatching, seed: int = 0) -> FlowMatching:
    """Random weights everywhere (the zero-initialised output layer makes an untrained velocity 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _images(n: int = 4, shape=(1, 8, 8), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_config_round_trips_through_json_and_refuses_bad_values():
    config = FlowConfig(**TINY)
    assert FlowConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    for bad in [dict(sampler="ddim"), dict(sample_steps=0), dict(time_sampling="beta"), dict(logit_std=0.0),
                dict(likelihood_probes=0), dict(likelihood_solver="dopri5"), dict(invert_steps=-1)]:
        with pytest.raises(DiffvaeError):
            FlowConfig(**{**TINY, **bad})


def test_the_model_meets_the_family_contract():
    model = FlowMatching(FlowConfig(**TINY), (1, 8, 8))
    assert isinstance(model, FamilyModel) and model.family == "flow"
    spec = spec_of(model)
    assert spec.iterative and spec.invertible and not spec.has_encoder
    assert set(spec.samplers) == {"euler", "heun", "midpoint", "rk4"}
    assert all(s in spec.samplers for s, _ in spec.sweep)
    nfes = [model.nfe(sampler=s, steps=n) for s, n in spec.sweep]
    assert nfes == sorted(nfes)  # the sweep runs cheapest first
    assert model.latent_dims == 64 and model.nfe() == 50 and model.nfe(sampler="euler", steps=7) == 7


def test_the_training_loss_is_the_flow_matching_loss_of_the_network_under_the_global_rng():
    model = _trained_like(FlowMatching(FlowConfig(**TINY, time_sampling="uniform"), (1, 8, 8)))
    x = _images()
    torch.manual_seed(5)
    loss, logs = model.training_loss(x)
    torch.manual_seed(5)  # the same draws, by hand: t ~ U(0, 1), then ε
    x0 = x.float() / 127.5 - 1
    t = torch.rand(4)
    noise = torch.randn_like(x0)
    velocity = model.velocity.velocity(paths.interpolate(x0, noise, t), t).detach()
    assert float(loss.detach()) == pytest.approx(float(((velocity - (noise - x0)) ** 2).mean()), rel=1e-5)
    assert logs == {"mse": pytest.approx(float(loss.detach()))}


def test_sampling_is_reproducible_uint8_and_refuses_bad_sampling_keywords():
    model = _trained_like(FlowMatching(FlowConfig(**TINY), (1, 8, 8)))
    with torch.inference_mode():
        a = model.sample(3, torch.Generator().manual_seed(0), sampler="euler", steps=4)
        b = model.sample(3, torch.Generator().manual_seed(0), sampler="euler", steps=4)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    for bad in [dict(sampler="ddim"), dict(steps=0), dict(steps=-3), dict(eta=0.5)]:
        with pytest.raises(DiffvaeError):
            model.sample(2, **bad)
        with pytest.raises(DiffvaeError):
            model.to_latent(_images(2), **bad)


def test_inversion_then_generation_returns_the_images():
    model = _trained_like(FlowMatching(FlowConfig(**TINY), (1, 8, 8)))
    x = _images(4)
    with torch.inference_mode():
        z = model.to_latent(x, steps=40)
        back = model.from_latent(z, steps=40)
    assert z.shape == (4, 1, 8, 8) and z.dtype == torch.float32
    assert int((back.int() - x.int()).abs().max()) <= 1


def test_the_bound_adds_up_and_hutchinson_on_the_unet_agrees_with_the_exact_divergence():
    model = _trained_like(FlowMatching(FlowConfig(**TINY, likelihood_steps=4, likelihood_probes=16), (1, 4, 4)))
    x = _images(3, (1, 4, 4))
    with torch.inference_mode():  # as the CLI calls it: the divergence still gets its gradients
        bound = model.bound(x, generator=torch.Generator().manual_seed(2))
    parts = sum(sign * bound[key] for key, _, sign in spec_of(model).bound_parts)
    torch.testing.assert_close(parts, bound["bpd"])
    assert bound["dequantization_bpd"][0] == pytest.approx(math.log2(127.5))
    assert bool((bound["log_det_bpd"] != 0).all()) and bool((bound["bpd_stderr"] > 0).all())
    exact = ode_likelihood.flow_bpd(model.velocity.velocity, x.double() / 127.5 - 1, 4, divergence="exact",
                                    generator=torch.Generator().manual_seed(2))  # the same dequantization draw
    assert float(((bound["bpd"] - exact["bpd"]) / bound["bpd_stderr"]).abs().max()) < 4.5


def test_a_conditional_flow_guides_its_velocity_and_refuses_bad_labels():
    model = _trained_like(FlowMatching(FlowConfig(**TINY, conditional=True, num_classes=3), (1, 8, 8)))
    field = model.velocity
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([0.3, 0.7])
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        conditional, unconditional = field.velocity(x, t, labels), field.velocity(x, t, torch.full((2,), 3))
        guided = field.guided_velocity(labels, 2.5)(x, t)
        torch.testing.assert_close(guided, unconditional + 2.5 * (conditional - unconditional), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(field.guided_velocity()(x, t), unconditional)  # no labels: the null label
        assert not torch.allclose(conditional, unconditional)
        a = model.sample(2, torch.Generator().manual_seed(0), steps=3, labels=labels, guidance=2.0)
        b = model.sample(2, torch.Generator().manual_seed(0), steps=3, labels=labels, guidance=2.0)
        assert torch.equal(a, b)
    loss, _ = model.training_loss(_images(2), labels=labels)
    assert torch.isfinite(loss)
    with pytest.raises(DiffvaeError):
        model.training_loss(_images(2), labels=torch.tensor([0, 7]))
    with pytest.raises(DiffvaeError):
        FlowMatching(FlowConfig(**TINY), (1, 8, 8)).sample(2, guidance=2.0)  # guidance needs a conditional run
