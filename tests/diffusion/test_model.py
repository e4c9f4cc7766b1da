"""The DDPM family: a UNet composed with the diffusion functions, uint8 in and out."""

import dataclasses

import pytest
import torch

from diffvae.compare.stages import model_config_for
from diffvae.diffusion import samplers
from diffvae.diffusion.model import DDPM, DDPMConfig, Denoiser, DiffusionConfig
from diffvae.errors import DiffvaeError
from diffvae.nn.unet import ResBlock, UNet

SMALL = dict(channels=16, channel_mult=(1, 2), timesteps=50, sample_steps=5, invert_steps=5)


def templates(n=64, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (4, 1, size, size), generator=g, dtype=torch.uint8)
    return base[torch.arange(n) % 4]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_lowers_the_loss_and_the_bound(prediction):
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(prediction=prediction, **SMALL), (1, 8, 8))
    x = templates()
    g = torch.Generator().manual_seed(0)
    before = model.bound(x[:4], generator=g)["bpd"].mean()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    losses = []
    for _ in range(60):
        loss, _ = model.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    after = model.bound(x[:4], generator=torch.Generator().manual_seed(0))
    assert after["bpd"].mean() < before
    parts = after["decoder_bpd"] + after["diffusion_bpd"] + after["prior_bpd"]
    assert torch.allclose(parts, after["bpd"])


def test_eps_fn_converts_every_prediction_type_to_the_same_noise():
    """An x0- or v-network whose output is the exact target of a known eps gives that eps back."""
    torch.manual_seed(0)
    den = Denoiser(DiffusionConfig(prediction="v", **SMALL), (1, 4, 4))
    x0, eps = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 20, 45])
    x_t = den.schedule.q_sample(x0, t, eps)
    from diffvae.diffusion.targets import v_target
    den.network = lambda x, tt: v_target(x0, eps, tt, den.schedule)
    assert torch.allclose(den.eps_fn(x_t, t), eps, atol=1e-8)


def test_samples_are_uint8_and_every_sampler_is_the_shared_function(monkeypatch):
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(**SMALL), (1, 8, 8)).eval()
    calls = []
    original = samplers.sample
    monkeypatch.setattr(samplers, "sample", lambda *a, **k: calls.append(k["sampler"]) or original(*a, **k))
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        out = model.sample(3, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=4)
        assert out.dtype == torch.uint8 and out.shape == (3, 1, 8, 8)
    assert calls == ["ddpm", "ddim", "dpm++2m"]
    assert model.config.sampler == "dpm++2m" and model.config.prediction == "v" and model.config.schedule == "cosine"
    assert model.nfe() == 5 and model.nfe(sampler="ddpm") == 50  # ancestral, not configured: every step
    other = DDPM(DDPMConfig(**SMALL, sampler="ddpm"), (1, 8, 8))
    assert other.nfe(sampler="ddpm") == 5 and other.nfe() == 5  # the configured steps
    a = model.sample(2, generator=torch.Generator().manual_seed(1))
    b = model.sample(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_inversion_round_trip_and_latent_has_the_data_dimension():
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(**SMALL, prediction="eps"), (1, 8, 8)).eval()  # ε̂ ≡ 0 untrained (v̂ ≡ 0 is not ε̂ ≡ 0)
    x = templates(4)
    z = model.to_latent(x)
    assert z.shape == x.shape and model.latent_dims == 64
    rec = model.from_latent(z)
    assert (rec.float() - x.float()).abs().max() <= 2  # ε̂ ≡ 0 before training (zero-initialised output): the DDIM map is exactly invertible


@pytest.mark.parametrize("bad", [dict(prediction="score"), dict(loss_weight="snr"), dict(sampler="euler"),
                                 dict(timesteps=1), dict(eta=2.0), dict(schedule="quadratic")])
def test_bad_settings_raise_one_clear_error(bad):
    with pytest.raises(DiffvaeError):
        DDPM(DDPMConfig(**{**SMALL, **bad}), (1, 8, 8))


def test_steps_beyond_T_are_refused_at_sampling():
    model = DDPM(DDPMConfig(**SMALL), (1, 8, 8))
    with pytest.raises(DiffvaeError, match="exceeds"):
        model.sample(1, sampler="ddim", steps=51)


def test_sampling_clamps_x0_but_regeneration_stays_the_exact_reverse_of_inversion(monkeypatch):
    model = DDPM(DDPMConfig(**SMALL), (1, 8, 8)).eval()
    seen = []
    original = samplers.sample
    monkeypatch.setattr(samplers, "sample", lambda *a, **k: seen.append(k["clip_x0"]) or original(*a, **k))
    model.sample(2)
    model.from_latent(torch.randn(2, 1, 8, 8))
    assert seen == [True, False]


def test_fitted_bound_is_tighter_than_fixed_small_and_never_beats_the_entropy_of_four_templates():
    """4 equally likely templates: −log₂ p(x) ≥ 2 bits per image, whatever variance the bound uses."""
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(**SMALL), (1, 8, 8))
    x = templates()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(80):
        loss, _ = model.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        full = model.bound(x[:8], generator=torch.Generator().manual_seed(1), fit_data=x)
        estimate = model.bound(x[:8], timesteps=8, generator=torch.Generator().manual_seed(2), fit_data=x)
    choices = ("bpd_small", "bpd_large", "bpd_analytic", "bpd_npr", "bpd_analytic_levels", "bpd_npr_levels")
    for bound in (full, estimate):
        assert all(float(bound[c].mean()) * 64 >= 2.0 for c in choices), {c: float(bound[c].mean()) for c in choices}
        torch.testing.assert_close(bound["bpd"], bound[f"bpd_{bound['variance']}"])
        torch.testing.assert_close(bound["bpd"], bound["decoder_bpd"] + bound["diffusion_bpd"] + bound["prior_bpd"])
    assert full["variance"] != "small" and float(full["bpd"].mean()) < float(full["bpd_small"].mean())


def _old_groups_for(channels, channel_mult):  # the rule before issue 27: the largest count <= 32 dividing every width
    widths = [channels * m for m in channel_mult]
    return max(g for g in range(1, 33) if all(w % g == 0 for w in widths))


@pytest.mark.parametrize("channels, mult", [(32, (1, 2, 2)), (32, (1, 2, 2, 2)), (64, (1, 2)), (16, (1, 2)), (48, (1, 2, 3)),
                                            (64, (1,)), (128, (1, 1, 2))])
def test_runs_saved_before_norm_groups_keep_their_group_count(channels, mult):
    """Old checkpoints load and compute as before: a config.json without ``norm_groups`` gets the group count it was
    trained with (every configuration whose widest level already had two channels per group)."""
    from diffvae.diffusion.model import saved_run_groups

    assert saved_run_groups(channels, mult) == _old_groups_for(channels, mult)
    saved = dataclasses.asdict(DDPMConfig(channels=channels, channel_mult=mult, timesteps=50))
    del saved["norm_groups"]
    assert DDPMConfig.from_saved(saved).unet_config().groups == _old_groups_for(channels, mult)
    saved["norm_groups"] = 0  # a run saved since: the automatic count, as it was trained
    assert DDPMConfig.from_saved(saved).unet_config().groups == DDPMConfig(channels=channels, channel_mult=mult).unet_config().groups


def _family_configs():
    """Every UNet family's config as compare and train build it for 1×28×28 and 3×32×32 at 2 and 200 CPU-minutes."""
    for family in ("ddpm", "ldm", "flow"):
        for shape in ((1, 28, 28), (3, 32, 32)):
            for seconds in (120.0, 12000.0):
                yield family, shape, model_config_for(family, shape, seconds)
    yield "ddpm-small", (1, 28, 28), DDPMConfig(channels=16)
    yield "default", (1, 28, 28), DDPMConfig()


def test_every_residual_block_of_the_default_networks_sees_the_timestep():
    """Issue 27: the embedding is added one constant per channel just before a GroupNorm; with one channel per group
    (the 16- and 32-wide UNets' full-resolution blocks before norm_groups) that block's output ignores t exactly.
    Each ResBlock of each default network is fed two different embeddings: its output must move."""
    torch.manual_seed(0)
    for name, shape, config in _family_configs():
        unet_config = config.unet_config()
        widths = [unet_config.channels * m for m in unet_config.channel_mult]
        assert min(widths) >= 2 * unet_config.groups, (name, shape, widths, unet_config.groups)
        unet = UNet(unet_config, in_channels=4, image_size=8)
        blocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
        assert blocks
        with torch.no_grad():
            for block in blocks:
                torch.nn.init.normal_(block.conv_out.weight, std=0.1)  # zero-initialised: the block would be the identity
                x = torch.randn(2, block.norm_in.num_channels, 8, 8)
                e1, e2 = torch.randn(2, 2, block.time_proj.in_features)
                moved = (block(x, e1) - block(x, e2)).abs().mean()
                assert moved > 1e-3 * block(x, e1).abs().mean(), (name, shape, block.norm_out.num_channels, block.norm_out.num_groups)


def test_norm_groups_that_would_hide_the_embedding_are_refused():
    with pytest.raises(DiffvaeError, match="two channels per GroupNorm group at the 16-wide level"):
        DDPMConfig(channels=16, norm_groups=16)
    with pytest.raises(DiffvaeError, match="norm_groups must be an integer"):
        DDPMConfig(norm_groups=2.5)
    assert DDPMConfig(channels=16, norm_groups=4).unet_config().groups == 4
    assert DDPMConfig(channels=16).unet_config().groups == 8


@pytest.mark.parametrize("family", ["ddpm", "flow"])
@pytest.mark.parametrize("channels", [8, 16, 32])
def test_a_one_level_network_sees_the_timestep_and_the_label(family, channels):
    """Regression (issue 27): ``--channels C --channel-mult 1`` (C <= 32) gave GroupNorm one channel per group,
    which removed the time/label embedding exactly; the output moved by float rounding only (~1e-7)."""
    from diffvae.flow.model import FlowConfig, VelocityField
    from diffvae.nn.unet import UNet

    torch.manual_seed(0)
    if family == "ddpm":
        unet = Denoiser(DDPMConfig(channels=channels, channel_mult=(1,), timesteps=50, conditional=True, num_classes=3), (1, 8, 8)).unet
    else:
        unet = VelocityField(FlowConfig(channels=channels, channel_mult=(1,), conditional=True, num_classes=3), (1, 8, 8)).unet
    assert isinstance(unet, UNet) and unet.config.channels // unet.config.groups >= 2
    with torch.no_grad():
        torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
        x = torch.randn(2, 1, 8, 8)
        base = unet(x, torch.tensor([3, 3]), torch.tensor([0, 0]))
        moved = (unet(x, torch.tensor([40, 40]), torch.tensor([0, 0])) - base).abs().mean()
        relabelled = (unet(x, torch.tensor([3, 3]), torch.tensor([2, 2])) - base).abs().mean()
    assert moved > 1e-3 * base.abs().mean() and relabelled > 1e-3 * base.abs().mean()
