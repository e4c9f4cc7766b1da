"""The VAE family model, its decoders and the PixelCNN network."""

import dataclasses
import json
import math

import pytest
import torch

from diffvae.distributions import nats_to_bpd
from diffvae.errors import DiffvaeError
from diffvae.images import to_signed
from diffvae.nn.conv import downsample_sizes
from diffvae.nn.pixelcnn import PixelCNN, autoregressive_sample, causal_mask
from diffvae.vae.bounds import kl_per_dim
from diffvae.vae.model import VAE, VAEConfig, pixel_log_likelihood, pixel_median, pixel_sample


def random_images(n, shape, seed=0):
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "shape, architecture, decoder",
    [((1, 28, 28), "conv", "logistic"), ((3, 32, 32), "conv", "gaussian"), ((1, 8, 8), "mlp", "logistic"),
     ((1, 8, 8), "mlp", "pixelcnn"), ((3, 13, 12), "conv", "pixelcnn")],
)
def test_shapes_and_dtypes(shape, architecture, decoder):
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=5, width=8, decoder=decoder, pixelcnn_layers=2), shape)
    assert model.architecture == architecture  # "auto": mlp up to 12×12 pixels
    x = random_images(3, shape)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, 5) and mean.dtype == logvar.dtype == torch.float32
    decoded = model.decode(mean)
    assert decoded.shape == (3, *shape) and decoded.dtype == torch.uint8
    samples = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (4, *shape) and samples.dtype == torch.uint8
    assert model.log_likelihood(x, mean).shape == (3,)
    loss, logs = model.training_loss(x)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and set(logs) >= {"recon_nats", "kl_nats", "bpd"}
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_conv_sizes_round_trip_through_the_decoder():
    assert downsample_sizes(28, 28) == [(28, 28), (14, 14), (7, 7)]
    assert downsample_sizes(32, 32) == [(32, 32), (16, 16), (8, 8)]
    assert downsample_sizes(64, 48)[-1] == (8, 6)
    for shape in [(1, 28, 28), (3, 64, 48), (2, 15, 31)]:
        model = VAE(VAEConfig(latent_dim=3, width=4, architecture="conv"), shape)
        assert model.decoder(torch.zeros(2, 3)).shape == (2, 2 * shape[0], *shape[1:])


@pytest.mark.parametrize("depth", [1, 2])
def test_deeper_conv_networks_keep_the_sizes_and_add_exactly_their_convolutions(depth):
    shallow = VAE(VAEConfig(latent_dim=3, width=4, architecture="conv"), (2, 15, 31))
    deep = VAE(VAEConfig(latent_dim=3, width=4, architecture="conv", depth=depth), (2, 15, 31))
    assert deep.decoder(torch.zeros(2, 3)).shape == (2, 4, 15, 31)
    assert deep.encoder(torch.zeros(2, 2, 15, 31)).shape == (2, 6)
    levels = len(downsample_sizes(15, 31)) - 1

    def convs(module):
        return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and not isinstance(m, torch.nn.ConvTranspose2d)]

    assert len(convs(deep.encoder)) - len(convs(shallow.encoder)) == depth * levels
    assert len(convs(deep.decoder)) - len(convs(shallow.decoder)) == depth * levels + depth  # + the full-size refinement
    # depth 0 keeps the original layer layout, so checkpoints written before `depth` existed still load
    weights = {k for k in VAE(VAEConfig(), (1, 28, 28)).state_dict() if k.endswith("weight")}
    assert weights == {"encoder.features.0.weight", "encoder.features.2.weight", "encoder.head.weight",
                       "decoder.project.weight", "decoder.body.1.weight", "decoder.body.3.weight"}
    with pytest.raises(DiffvaeError, match="depth"):
        VAE(VAEConfig(depth=-1), (1, 28, 28))


def test_sampling_is_reproducible_with_a_generator():
    model = VAE(VAEConfig(latent_dim=4, width=8), (1, 8, 8))
    first = model.sample(6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, model.sample(6, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, model.sample(6, generator=torch.Generator().manual_seed(4)))


def test_config_round_trips_through_json_and_bad_settings_are_refused():
    config = VAEConfig(latent_dim=7, decoder="pixelcnn", free_bits=0.25)
    assert VAEConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    for bad in [dict(latent_dim=0), dict(architecture="resnet"), dict(decoder="poisson"), dict(beta=-1.0),
                dict(free_bits=-0.1), dict(kl_warmup_steps=-5), dict(width=0), dict(pixelcnn_layers=0), dict(beta=float("nan"))]:
        with pytest.raises(DiffvaeError):
            VAE(VAEConfig(**bad), (1, 8, 8))


def test_bernoulli_is_refused_on_grey_data_unless_binarized():
    grey = random_images(4, (1, 8, 8))
    with pytest.raises(DiffvaeError, match="binarize"):
        VAE(VAEConfig(decoder="bernoulli", width=8), (1, 8, 8)).training_loss(grey)
    binary = torch.where(grey >= 128, 255, 0).to(torch.uint8)
    model = VAE(VAEConfig(decoder="bernoulli", width=8), (1, 8, 8))
    loss, logs = model.training_loss(binary)
    assert math.isfinite(loss.item())
    binarizing = VAE(VAEConfig(decoder="bernoulli", binarize=True, width=8), (1, 8, 8))
    binarizing.load_state_dict(model.state_dict())
    gen = torch.Generator
    assert torch.equal(binarizing.bound(grey, generator=gen().manual_seed(0))["bpd"], model.bound(binary, generator=gen().manual_seed(0))["bpd"])
    assert set(binarizing.sample(3).unique().tolist()) <= {0, 255}


def test_bad_images_are_refused():
    model = VAE(VAEConfig(width=8), (1, 8, 8))
    with pytest.raises(DiffvaeError):
        model.training_loss(random_images(2, (1, 8, 8)).float())
    with pytest.raises(DiffvaeError):
        model.bound(random_images(2, (3, 8, 8)))


def test_pixelcnn_masks_are_causal():
    torch.manual_seed(0)
    assert causal_mask(3, "A").tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert causal_mask(3, "B").tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    channels, height, width = 3, 5, 6
    network = PixelCNN(channels, 2 * channels, hidden_channels=8, layers=3, cond_channels=4)
    cond = torch.randn(1, 4, height, width)
    for position in range(height * width):
        row, col = divmod(position, width)
        x = torch.randn(1, channels, height, width, requires_grad=True)
        network(x, cond)[0, :, row, col].sum().backward()
        influence = x.grad.abs().sum(1).flatten()  # per input pixel, raster order
        assert influence[position:].max() == 0, f"output pixel {position} sees input pixels at or after it"
        if position > 0:
            assert influence[:position].max() > 0  # and it does see the past
        # the latent's feature map is seen everywhere, including the current pixel
    cond = cond.clone().requires_grad_(True)
    network(torch.randn(1, channels, height, width), cond)[0, :, 0, 0].sum().backward()
    assert cond.grad[0, :, 0, 0].abs().sum() > 0


def test_autoregressive_sampling_uses_the_teacher_forced_conditionals():
    # 2 layers reach 3 + 1 = 4 pixels: on 7×11 images the sampler's windows are real crops
    torch.manual_seed(0)
    shape = (2, 7, 11)
    network = PixelCNN(2, 4, hidden_channels=8, layers=2, cond_channels=3)
    assert network.receptive_field == 4
    cond = torch.randn(3, 3, 7, 11)
    seen = []

    def sample_pixel(params):
        seen.append(params.clone())
        return to_signed(pixel_sample("logistic", params[:, :, None, None], 2)[:, :, 0, 0])

    images = autoregressive_sample(network, cond, shape, sample_pixel)
    assert len(seen) == 7 * 11
    assert torch.equal(images, to_signed(((images + 1) * 127.5).round().to(torch.uint8)))  # on the 8-bit grid
    with torch.no_grad():
        teacher_forced = network(images, cond)
    for position, params in enumerate(seen):
        row, col = divmod(position, 11)
        torch.testing.assert_close(params, teacher_forced[:, :, row, col], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["logistic", "gaussian"])
def test_pixel_sample_draws_from_the_discretized_distribution(kind):
    # empirical histogram of 200k draws vs the exact 256-bin masses: total variation ~ sampling noise
    mean, log_scale = 0.9, -2.5  # mass piles up in the clamped right edge bin too
    params = torch.tensor([mean, log_scale]).view(1, 2, 1, 1).expand(200_000, 2, 1, 1)
    draws = pixel_sample(kind, params, 1, generator=torch.Generator().manual_seed(0)).flatten()
    empirical = torch.bincount(draws.long(), minlength=256).double() / draws.numel()
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    exact = pixel_log_likelihood(kind, levels, torch.tensor([mean, log_scale]).view(1, 2, 1, 1).expand(256, 2, 1, 1)).exp().flatten().double()
    assert exact[255] > 0.05
    assert 0.5 * (empirical - exact).abs().sum() < 0.01
    # decode() shows the median bin: at most half the mass strictly below it, at least half up to it
    median = pixel_median(kind, params[:1], 1).item()
    assert exact[:median].sum() <= 0.5 <= exact[: median + 1].sum()
    assert median != int(exact.argmax())  # here the right edge bin is the mode, not the median


def test_bernoulli_pixel_sample_and_median():
    logits = torch.tensor([-1.0, 0.5, 3.0]).view(1, 3, 1, 1).expand(100_000, 3, 1, 1)
    draws = pixel_sample("bernoulli", logits, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((draws == 255).double().mean(0).flatten(), torch.sigmoid(logits[0].flatten()).double(), atol=0.01, rtol=0)
    assert pixel_median("bernoulli", logits[:1], 3).flatten().tolist() == [0, 255, 255]


def test_training_loss_weights_kl_but_logs_the_true_elbo():
    x = random_images(16, (1, 8, 8))
    reference = VAE(VAEConfig(latent_dim=4, width=8), (1, 8, 8))
    results = {}
    for name, overrides, step in [("plain", {}, 0), ("beta", dict(beta=4.0), 0), ("warmup", dict(beta=4.0, kl_warmup_steps=10), 5),
                                  ("free_bits", dict(free_bits=100.0), 0)]:
        model = VAE(VAEConfig(latent_dim=4, width=8, **overrides), (1, 8, 8))
        model.load_state_dict(reference.state_dict())
        model.set_step(step)
        torch.manual_seed(0)
        results[name] = model.training_loss(x)
    dims = 64
    bpd = {name: logs["bpd"] for name, (_, logs) in results.items()}
    assert max(bpd.values()) - min(bpd.values()) < 1e-6  # same z, same true −ELBO whatever the objective
    loss, logs = results["plain"]
    assert logs["bpd"] == pytest.approx((logs["recon_nats"] + logs["kl_nats"]) / (dims * math.log(2)), rel=1e-6)
    assert loss.item() * dims == pytest.approx(logs["recon_nats"] + logs["kl_nats"], rel=1e-5)  # nats per dimension
    assert results["beta"][0].item() * dims == pytest.approx(logs["recon_nats"] + 4.0 * logs["kl_nats"], rel=1e-5)
    assert results["warmup"][0].item() * dims == pytest.approx(logs["recon_nats"] + 2.0 * logs["kl_nats"], rel=1e-5)
    assert results["free_bits"][0].item() * dims == pytest.approx(logs["recon_nats"] + 4 * 100.0, rel=1e-5)


def test_bound_parts_add_up_and_use_the_generator():
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=3, width=8), (1, 8, 8))
    x = random_images(5, (1, 8, 8))
    result = model.bound(x, iwae_samples=4, generator=torch.Generator().manual_seed(7))
    assert set(result) == {"bpd", "elbo_bpd", "recon_bpd", "kl_bpd", "iwae_bpd", "iwae_gap_bpd"}
    torch.testing.assert_close(result["elbo_bpd"], result["recon_bpd"] + result["kl_bpd"])
    # the headline is the tightest bound asked for (IWAE), and the parts still add up to it
    torch.testing.assert_close(result["bpd"], result["iwae_bpd"])
    torch.testing.assert_close(result["bpd"], result["recon_bpd"] + result["kl_bpd"] + result["iwae_gap_bpd"])
    # recompute the same single-sample bound by hand from the same generator
    mean, logvar = model.encode(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(result["recon_bpd"], nats_to_bpd(-model.log_likelihood(x, z), 64))
    torch.testing.assert_close(result["kl_bpd"], nats_to_bpd(kl_per_dim(mean, logvar).sum(1), 64).detach())
    again = model.bound(x, iwae_samples=4, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(result[k], again[k]) for k in result)


def test_training_under_bf16_autocast_keeps_likelihoods_in_float32():
    model = VAE(VAEConfig(latent_dim=4, width=8), (1, 8, 8))
    x = random_images(8, (1, 8, 8))
    torch.manual_seed(0)
    _, exact_logs = model.training_loss(x)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = model.training_loss(x)
    assert loss.dtype == torch.float32
    assert logs["bpd"] == pytest.approx(exact_logs["bpd"], rel=0.02)


def templates_dataset(binary=False, repeats=16, seed=0):
    """4 random 8×8 templates, each repeated: the data entropy is log 4 = 2 bits per image."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=generator)
    if binary:
        templates = torch.where(templates >= 128, 255, 0).to(torch.uint8)
    return templates.repeat(repeats, 1, 1, 1)


@pytest.mark.parametrize("decoder", ["logistic", "gaussian", "bernoulli", "pixelcnn"])
def test_a_trained_vae_never_reports_a_bound_below_the_data_entropy(decoder):
    torch.manual_seed(0)
    data = templates_dataset(binary=decoder == "bernoulli")
    floor = 2.0 / 64  # 2 bits per image over D = 64 dimensions: no model can do better on average
    model = VAE(VAEConfig(latent_dim=4, width=16, decoder=decoder, pixelcnn_layers=3), (1, 8, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = model.bound(data, generator=torch.Generator().manual_seed(0))["bpd"].mean().item()
    for step in range(150):
        model.set_step(step)
        loss, logs = model.training_loss(data)  # the full balanced dataset each step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert logs["bpd"] >= floor, (step, logs)
    after = model.bound(data, iwae_samples=50, generator=torch.Generator().manual_seed(0))
    assert after["bpd"].mean().item() >= floor and after["iwae_bpd"].mean().item() >= floor
    assert after["iwae_bpd"].mean().item() <= after["elbo_bpd"].mean().item() + 1e-3
    assert after["elbo_bpd"].mean().item() < 0.7 * before, (before, after["elbo_bpd"].mean().item())


def test_diagnostics_state_the_mutual_information_ceiling_and_the_kl_interval():
    model = VAE(VAEConfig(latent_dim=3, width=8), (1, 8, 8))
    x = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    diag = model.diagnostics(x, generator=torch.Generator().manual_seed(1))
    assert diag["mutual_info_max"] == pytest.approx(math.log(37)) and diag["mutual_info"] <= diag["mutual_info_max"] + 1e-9
    with torch.no_grad():
        mean, logvar = model.encode(x)
    per_image = kl_per_dim(mean, logvar).double().sum(1)  # the interval is the mean's: ± 1.96 SEM over the 37 images
    half = 1.96 * float(per_image.std()) / math.sqrt(37)
    assert diag["kl_nats_ci95"] == pytest.approx([float(per_image.mean()) - half, float(per_image.mean()) + half], rel=1e-9)
    assert diag["kl_n"] == 37
