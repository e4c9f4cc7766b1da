"""The latent-diffusion autoencoder: spatial shapes, a normalised pixel likelihood, the loss's
weights, the scale factor, and that it learns."""

import math

import pytest
import torch
from torch import nn

from diffvae.errors import DiffvaeError
from diffvae.latent.autoencoder import AutoencoderKL, latent_scale_from
from diffvae.nn.autoencoder import SpatialDecoder, SpatialEncoder, level_sizes


@pytest.mark.parametrize("downsample", [2, 4, 8])
@pytest.mark.parametrize("size", [(28, 28), (8, 8), (7, 9)])
def test_latent_is_spatial_and_the_decoder_restores_the_exact_size(downsample, size):
    h, w = size
    encoder = SpatialEncoder(1, 3, downsample, width=8)
    decoder = SpatialDecoder(3, 2, (h, w), downsample, width=8)
    mean, logvar = encoder(torch.zeros(2, 1, h, w))
    expected = (h, w)
    for _ in range(int(math.log2(downsample))):
        expected = (math.ceil(expected[0] / 2), math.ceil(expected[1] / 2))
    assert mean.shape == logvar.shape == (2, 3, *expected)
    assert level_sizes(h, w, downsample)[-1] == expected
    assert decoder(mean).shape == (2, 2, h, w)


def test_mnist_with_factor_4_gives_7x7_latents():
    assert AutoencoderKL((1, 28, 28), latent_channels=3, downsample=4, width=8).latent_shape == (3, 7, 7)


@pytest.mark.parametrize("bad", [dict(downsample=3), dict(width=12), dict(kl_weight=-1.0), dict(mse_weight=-0.5),
                                 dict(mse_weight=float("nan"))])
def test_bad_settings_raise_one_clear_error(bad):
    with pytest.raises(DiffvaeError):
        AutoencoderKL((1, 8, 8), **{"width": 8, **bad})


def test_reconstruction_likelihood_is_a_normalised_distribution_over_the_256_levels():
    torch.manual_seed(0)
    ae = AutoencoderKL((1, 1, 1), latent_channels=2, downsample=2, width=16)
    z = torch.randn(1, 2, 1, 1)
    levels = torch.arange(256, dtype=torch.uint8).reshape(256, 1, 1, 1)
    with torch.no_grad():  # a sharp, off-centre decoder so the outer bins matter
        ae.decoder.conv_out.bias.copy_(torch.tensor([0.9, -3.0]))
        log_p = ae.reconstruction_log_likelihood(levels, z.expand(256, -1, -1, -1))
    assert float(torch.logsumexp(log_p.double(), 0)) == pytest.approx(0.0, abs=1e-5)
    assert int(log_p.argmax()) == int(ae.decode(z)[0, 0, 0, 0])  # decode() is the most likely level


def test_loss_is_reconstruction_plus_weighted_analytic_kl_per_dimension():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    ae = AutoencoderKL((1, 8, 8), latent_channels=2, downsample=2, width=8, kl_weight=0.3)
    torch.manual_seed(5)
    loss, logs = ae.training_loss(x)
    with torch.no_grad():
        mean, logvar = ae.posterior(x)
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()  # KL(N(μ,σ²) ‖ N(0,1))
    torch.manual_seed(5)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    with torch.no_grad():
        recon = -ae.reconstruction_log_likelihood(x, z).mean()
    assert logs["kl_nats"] == pytest.approx(float(kl), rel=1e-5)
    assert logs["recon_nats"] == pytest.approx(float(recon), rel=1e-5)
    assert float(loss.detach()) * 64 == pytest.approx(float(recon + 0.3 * kl), rel=1e-5)
    assert logs["recon_bpd"] == pytest.approx(float(recon) / (64 * math.log(2)), rel=1e-5)


def test_squared_error_term_adds_the_decoders_mean_error_and_leaves_the_likelihood_alone():
    """mse_weight adds w·‖x − x̂‖² (x and the decoder mean x̂ on [−1, 1], summed per image) to the loss, computed
    here by hand from the decoder's parameters; p(x|z), which every bound uses, is the logistic either way."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    ae = AutoencoderKL((1, 8, 8), latent_channels=2, downsample=2, width=8, mse_weight=200.0)
    plain = AutoencoderKL((1, 8, 8), latent_channels=2, downsample=2, width=8)
    plain.load_state_dict(ae.state_dict())
    torch.manual_seed(5)
    loss, logs = ae.training_loss(x)
    torch.manual_seed(5)
    base, base_logs = plain.training_loss(x)
    with torch.no_grad():
        mean, logvar = ae.posterior(x)
        torch.manual_seed(5)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        dec_mean, _ = ae.decoder_params(z)
        by_hand = (dec_mean - (x.float() / 127.5 - 1.0)).square().flatten(1).sum(1).mean()
    assert logs["squared_error"] == pytest.approx(float(by_hand), rel=1e-5) and "squared_error" not in base_logs
    assert float(loss.detach()) * 64 == pytest.approx(float(base.detach()) * 64 + 200.0 * float(by_hand), rel=1e-5)
    assert logs["recon_nats"] == pytest.approx(base_logs["recon_nats"], rel=1e-6)  # the same likelihood
    with torch.no_grad():
        assert torch.equal(ae.reconstruction_log_likelihood(x, z), plain.reconstruction_log_likelihood(x, z))
    (grad,) = torch.autograd.grad(64 * (loss - base), ae.decoder.conv_out.bias)
    assert float(grad.abs().sum()) > 0  # the term reaches the decoder


def test_perceptual_term_adds_feature_distance_with_gradient_to_the_decoder():
    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def features(self, x):
            return self.conv(x).flatten(1)

    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    ae = AutoencoderKL((1, 8, 8), latent_channels=2, downsample=2, width=8, perceptual_weight=2.0)
    torch.manual_seed(1)
    plain, _ = ae.training_loss(x)
    ae.set_perceptual_network(Features())
    torch.manual_seed(1)
    loss, logs = ae.training_loss(x)
    assert float(loss.detach()) * 64 == pytest.approx(float(plain.detach()) * 64 + 2.0 * logs["perceptual"], rel=1e-5)
    assert logs["perceptual"] > 0
    (grad,) = torch.autograd.grad(64 * (loss - plain), ae.decoder.conv_out.weight)
    assert float(grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in ae._perceptual[0].parameters())  # frozen
    assert not any(k.startswith("_perceptual") or "conv.weight" == k for k in ae.state_dict())  # not saved


def test_latent_scale_is_one_over_the_standard_deviation():
    g = torch.Generator().manual_seed(0)
    z = 3.0 + 0.2 * torch.randn(20000, generator=g)
    assert latent_scale_from(z) == pytest.approx(5.0, rel=0.02)
    with pytest.raises(DiffvaeError):
        latent_scale_from(torch.ones(10))


def test_autoencoder_learns_to_reconstruct_a_few_templates():
    g = torch.Generator().manual_seed(0)
    templates = torch.randint(0, 256, (4, 1, 8, 8), generator=g, dtype=torch.uint8)
    data = templates.repeat(8, 1, 1, 1)
    torch.manual_seed(0)
    ae = AutoencoderKL((1, 8, 8), latent_channels=4, downsample=2, width=16, kl_weight=1e-3)

    def nll_at_mean():
        with torch.no_grad():
            return float(-ae.reconstruction_log_likelihood(templates, ae.posterior(templates)[0]).mean())

    before = nll_at_mean()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(80):
        loss, _ = ae.training_loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert nll_at_mean() < 0.6 * before
    error = (ae.reconstruct(templates).float() - templates.float()).abs().mean()
    assert float(error) < 15  # levels; an untrained decoder is ~70 off
