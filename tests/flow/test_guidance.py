"""Class-conditional flow matching: the same UNet option and the same guidance wrapper as diffusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffvae.flow.model import FlowConfig, FlowMatching, VelocityField

K = 3


def conditional_field() -> VelocityField:
    torch.manual_seed(0)
    field = VelocityField(FlowConfig(channels=8, channel_mult=(1,), sample_steps=3, conditional=True, num_classes=K),
                          (1, 8, 8)).eval()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    return field


def test_velocity_guidance_is_exact_at_w0_w1_and_the_extrapolation_between():
    field = conditional_field()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0.1, 0.4, 0.7, 0.9]), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        v_u, v_c = field.velocity(x, t, torch.full((4,), K)), field.velocity(x, t, y)
        assert not torch.equal(v_u, v_c)
        assert torch.equal(field.guided_velocity(y, 0.0)(x, t), v_u)
        assert torch.equal(field.guided_velocity(y, 1.0)(x, t), v_c)
        got = field.guided_velocity(y, 4.0)(x, t)
    np.testing.assert_allclose(got.numpy(), (v_u + 4.0 * (v_c - v_u)).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_one_batched_network_call_per_velocity_evaluation(sampler, monkeypatch):
    field = conditional_field()
    calls = []
    forward = field.unet.forward
    monkeypatch.setattr(field.unet, "forward", lambda x, t, labels=None: calls.append(x.shape[0]) or forward(x, t, labels))
    with torch.no_grad():
        field.generate(2, torch.Generator().manual_seed(0), sampler=sampler, steps=3, labels=torch.tensor([1, 2]), guidance=2.0)
    assert len(calls) == field.nfe(sampler, 3) and set(calls) == {4}


def test_the_flow_family_trains_on_labels_and_samples_a_class():
    torch.manual_seed(0)
    model = FlowMatching(FlowConfig(channels=8, channel_mult=(1,), sample_steps=2, conditional=True, num_classes=K, p_uncond=0.5),
                         (1, 8, 8))
    loss, _ = model.training_loss(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    assert model.velocity.unet.class_embed.weight.grad is not None
    images = model.sample(3, torch.Generator().manual_seed(1), labels=torch.tensor([0, 1, 2]), guidance=3.0)
    assert images.shape == (3, 1, 8, 8) and images.dtype == torch.uint8
