"""Classifier-free guidance (diffvae.diffusion.guidance) and the class-conditional Denoiser/UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from diffvae.conditioning import drop_labels
from diffvae.diffusion.guidance import guided
from diffvae.diffusion.model import Denoiser, DiffusionConfig
from diffvae.errors import DiffvaeError
from diffvae.nn.unet import UNet, UNetConfig

K = 4


def conditional_denoiser(prediction: str = "eps", seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    config = DiffusionConfig(channels=8, channel_mult=(1,), timesteps=40, sample_steps=5, conditional=True, num_classes=K,
                             prediction=prediction, clip_x0=False)
    den = Denoiser(config, (1, 8, 8)).eval()
    with torch.no_grad():  # a trained-looking network: the zero-initialised output layer would hide the labels
        for p in den.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    return den


def test_w0_is_the_unconditional_and_w1_the_conditional_prediction_exactly():
    den = conditional_denoiser()
    x, t = torch.randn(6, 1, 8, 8), torch.tensor([0, 5, 10, 20, 30, 39])
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        unconditional = den.eps_fn(x, t, torch.full((6,), K))
        conditional = den.eps_fn(x, t, labels)
        assert not torch.equal(unconditional, conditional)  # the label matters
        assert torch.equal(den.guided_eps_fn(labels, 0.0)(x, t), unconditional)
        assert torch.equal(den.guided_eps_fn(labels, 1.0)(x, t), conditional)
        assert torch.equal(den.guided_eps_fn(None)(x, t), unconditional)  # no labels: unconditional sampling


@pytest.mark.parametrize("w", [0.5, 2.0, 3.0, 7.5])
def test_guidance_is_the_extrapolation_eps_u_plus_w_times_the_difference(w):
    den = conditional_denoiser(prediction="v")
    x, t = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 7, 13, 25, 38])
    labels = torch.tensor([3, 2, 1, 0, K])  # a null row stays unconditional for every w
    with torch.no_grad():
        eps_u = den.eps_fn(x, t, torch.full((5,), K)).numpy()
        eps_c = den.eps_fn(x, t, labels).numpy()
        got = den.guided_eps_fn(labels, w)(x, t).numpy()
    np.testing.assert_allclose(got, eps_u + w * (eps_c - eps_u), rtol=1e-5, atol=1e-5)  # separate calls vs one 2N batch
    np.testing.assert_allclose(got[4], eps_u[4], rtol=1e-5, atol=1e-5)


def test_the_wrapper_is_exact_at_w0_and_w1_on_its_batched_path_too():
    """On the 2N-batch branch (w ∉ {0,1} shortcuts bypassed by a per-row function) lerp hits the ends exactly."""
    fn = lambda x, t, y: torch.sin(x * (y[:, None] + 1.0) + t[:, None])  # noqa: E731  row-wise, deterministic
    x, t, y = torch.randn(7, 3), torch.arange(7.0), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    u, c = fn(x, t, torch.full((7,), K)), fn(x, t, y)
    assert torch.equal(guided(fn, y, K, 0.0)(x, t), u) and torch.equal(guided(fn, y, K, 1.0)(x, t), c)
    assert torch.equal(torch.lerp(u, c, 1.0), c) and torch.equal(torch.lerp(u, c, 0.0), u)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 6), ("ddim", 5), ("dpm++2m", 4)])
@pytest.mark.parametrize("w,rows", [(3.0, 2), (1.0, 1), (0.0, 1)])
def test_one_network_call_per_step_with_both_branches_in_one_batch(sampler, steps, w, rows, monkeypatch):
    den = conditional_denoiser()
    calls = []
    forward = den.unet.forward
    monkeypatch.setattr(den.unet, "forward", lambda x, t, labels=None: calls.append((x.shape[0], labels)) or forward(x, t, labels))
    n = 3
    with torch.no_grad():
        den.generate(n, torch.Generator().manual_seed(0), sampler=sampler, steps=steps, labels=torch.tensor([0, 1, 2]), guidance=w)
    assert len(calls) == steps == den.nfe(sampler, steps)
    assert all(batch == rows * n for batch, _ in calls)
    if rows == 2:
        assert calls[0][1].tolist() == [K, K, K, 0, 1, 2]  # the null branch first, then the real labels


def test_label_dropout_rate_is_binomial():
    labels = torch.randint(0, K, (20_000,), generator=torch.Generator().manual_seed(1))
    for p in (0.1, 0.5):
        dropped = drop_labels(labels, p, K, torch.Generator().manual_seed(2))
        nulls = int((dropped == K).sum())
        assert binomtest(nulls, labels.numel(), p).pvalue > 1e-4
        kept = dropped != K
        assert torch.equal(dropped[kept], labels[kept])  # the others are untouched
    assert torch.equal(drop_labels(labels, 0.0, K), labels)
    assert bool((drop_labels(labels, 1.0, K) == K).all())


def test_the_training_loss_drops_labels_at_p_uncond(monkeypatch):
    den = conditional_denoiser()
    den.config.p_uncond = 0.25
    seen = []
    forward = den.unet.forward
    monkeypatch.setattr(den.unet, "forward", lambda x, t, labels=None: seen.append(labels) or forward(x, t, labels))
    torch.manual_seed(3)
    for _ in range(40):
        den.loss(torch.randn(100, 1, 8, 8), torch.randint(0, K, (100,)))
    labels = torch.cat(seen)
    assert binomtest(int((labels == K).sum()), labels.numel(), 0.25).pvalue > 1e-4


def test_unconditional_unet_is_unchanged_and_refuses_labels():
    torch.manual_seed(0)
    plain = UNet(UNetConfig(channels=8, channel_mult=(1,), groups=4), in_channels=1)
    torch.manual_seed(0)
    zero = UNet(UNetConfig(channels=8, channel_mult=(1,), groups=4, num_classes=0), in_channels=1)
    assert not any("class_embed" in k for k in plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))
    with pytest.raises(DiffvaeError, match="unconditional"):
        plain(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_conditional_unet_has_a_null_class_and_none_means_null():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=8, channel_mult=(1,), groups=4, num_classes=K), in_channels=1)
    assert net.class_embed.num_embeddings == K + 1
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 4])
    with torch.no_grad():
        torch.nn.init.normal_(net.conv_out.weight)
        assert torch.equal(net(x, t), net(x, t, torch.full((2,), K)))
        assert not torch.equal(net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1])))


def test_bad_labels_and_guidance_are_one_line_errors():
    den = conditional_denoiser()
    with pytest.raises(DiffvaeError, match="guidance"):
        den.guided_eps_fn(torch.tensor([0]), -1.0)
    with pytest.raises(DiffvaeError, match="class labels must be in"):
        den.guided_eps_fn(torch.tensor([K + 1]), 2.0)
    with pytest.raises(DiffvaeError, match="labels must be 2 integers"):
        den.generate(2, labels=torch.tensor([0.5, 1.0]))
