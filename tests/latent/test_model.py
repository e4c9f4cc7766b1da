"""The latent-diffusion family: two stages in one run, the scale factor, reuse of the pixel-diffusion
functions, the whole-model bound, resumption and the CLI end to end."""

import dataclasses
import json
import math

import pytest
import torch

from diffvae import cli
from diffvae.api import DataConfig, load, train_run
from diffvae.data import ImageDataset
from diffvae.diffusion import likelihood, samplers
from diffvae.diffusion.model import DiffusionConfig, saved_run_groups
from diffvae.errors import DiffvaeError
from diffvae.latent.autoencoder import AutoencoderKL, latent_scale_from
from diffvae.latent.fit import stage_train_configs
from diffvae.latent.model import LatentDiffusion, LDMConfig
from diffvae.runs import RunDir, load_tensors, split_prefixed
from diffvae.train import TrainConfig

TINY = dict(ae_width=8, latent_channels=2, downsample=2, channels=32, channel_mult=(1,), timesteps=50,
            sample_steps=4, invert_steps=4)


def tiny_config(**kw) -> LDMConfig:
    return LDMConfig(**{**TINY, **kw})


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=20, batch_size=32, lr=2e-3, warmup_steps=2, precision="fp32", device="cpu", checkpoint_every=4,
                log_every=5, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run on digits: (run path, the EMA model fit returned)."""
    path = tmp_path_factory.mktemp("ldm") / "run"
    model = train_run("ldm", DataConfig("digits"), tiny_config(), tiny_train(), out=path, progress=False)
    return path, model


# ----------------------------------------------------------------------------- config and stages

def test_config_carries_every_diffusion_field_to_the_denoiser():
    missing = {f.name for f in dataclasses.fields(DiffusionConfig)} - {f.name for f in dataclasses.fields(LDMConfig)}
    assert not missing, f"LDMConfig lacks DiffusionConfig fields {missing} (they would not reach the CLI)"
    model = LatentDiffusion(tiny_config(timesteps=77, prediction="v"), (1, 28, 28))
    assert model.denoiser.schedule.T == 77 and model.denoiser.config.prediction == "v"
    assert model.latent_shape == (2, 14, 14) and model.denoiser.shape == (2, 14, 14)
    assert LatentDiffusion(tiny_config(downsample=4), (1, 28, 28)).latent_shape == (2, 7, 7)


OLD_LDM_KEYS = {"downsample", "latent_channels", "ae_width", "ae_res_blocks", "kl_weight", "perceptual_weight", "ae_steps_fraction",
                "ae_steps", "ae_run", "latent_scale", "schedule", "timesteps", "prediction", "loss_weight", "min_snr_gamma",
                "channels", "channel_mult", "num_res_blocks", "attention_levels", "dropout", "sampler", "sample_steps", "eta",
                "invert_steps", "clip_x0"}


def test_ldm_config_is_a_diffusion_config_with_the_same_flat_keys_and_defaults():
    """LDMConfig reuses DiffusionConfig; config.json keeps its flat keys, so existing runs still load."""
    from diffvae.configs import config_from_dict

    config = LDMConfig()
    assert isinstance(config, DiffusionConfig)
    assert set(dataclasses.asdict(config)) == OLD_LDM_KEYS | {"conditional", "num_classes", "p_uncond", "norm_groups", "ae_batch_size", "ae_lr", "mse_weight"}  # + issues 16, 27, 24
    old = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(tiny_config()))).items() if k in OLD_LDM_KEYS}
    loaded = LDMConfig.from_saved(old)  # a run saved before conditioning and norm_groups still loads, with its group count
    assert loaded == dataclasses.replace(tiny_config(), norm_groups=saved_run_groups(loaded.channels, loaded.channel_mult))
    assert (config.channel_mult, config.clip_x0, config.channels, config.sampler, config.sample_steps, config.schedule,
            config.prediction) == ((1, 2), False, 64, "ddpm", 100, "cosine", "v")  # the recipe sweep's winner (issue 13)
    saved = json.loads(json.dumps(dataclasses.asdict(tiny_config(latent_scale=0.7))))
    assert config_from_dict(LDMConfig, saved) == tiny_config(latent_scale=0.7)
    with pytest.raises(DiffvaeError, match="unknown LDMConfig field"):
        config_from_dict(LDMConfig, {**saved, "ae_widht": 8})


@pytest.mark.parametrize("bad", [dict(downsample=3), dict(ae_steps_fraction=1.0), dict(ae_steps=-1), dict(latent_scale=0.0),
                                 dict(kl_weight=float("nan")), dict(sampler="euler"), dict(mse_weight=-1.0),
                                 dict(mse_weight=float("inf"))])
def test_bad_settings_raise_one_clear_error(bad):
    with pytest.raises(DiffvaeError):
        LatentDiffusion(tiny_config(**bad), (1, 8, 8))


def test_steps_and_budget_split_between_the_stages():
    ae, diffusion = stage_train_configs(TrainConfig(steps=100), LDMConfig(ae_steps_fraction=0.3))
    assert (ae.steps, diffusion.steps) == (30, 70)
    ae, diffusion = stage_train_configs(TrainConfig(steps=100), LDMConfig(ae_steps=12))
    assert (ae.steps, diffusion.steps) == (12, 88)
    ae, diffusion = stage_train_configs(TrainConfig(budget_minutes=10.0), LDMConfig(ae_steps_fraction=0.25))
    assert (ae.budget_minutes, diffusion.budget_minutes) == (2.5, 7.5) and ae.steps is None
    ae, diffusion = stage_train_configs(TrainConfig(steps=100), LDMConfig(), train_autoencoder=False)
    assert ae is None and diffusion.steps == 100
    with pytest.raises(DiffvaeError):
        stage_train_configs(TrainConfig(steps=10), LDMConfig(ae_steps=10))


def test_the_autoencoder_stage_may_train_at_its_own_batch_and_learning_rate():
    run = TrainConfig(budget_minutes=3.0, batch_size=64, lr=1e-3)
    ae, diffusion = stage_train_configs(run, LDMConfig(ae_batch_size=16, ae_lr=2e-3))
    assert (ae.batch_size, ae.lr, diffusion.batch_size, diffusion.lr) == (16, 2e-3, 64, 1e-3)
    ae, diffusion = stage_train_configs(run, LDMConfig())  # 0 = the run's
    assert (ae.batch_size, ae.lr) == (64, 1e-3)
    for bad in (dict(ae_batch_size=-1), dict(ae_batch_size=True), dict(ae_batch_size=2.5), dict(ae_lr=float("nan")), dict(ae_lr=3.0)):
        with pytest.raises(DiffvaeError, match="ldm ae_"):
            LDMConfig(**bad)


# ----------------------------------------------------------------------------- one home per equation

def test_sampling_inversion_and_bound_go_through_the_pixel_diffusion_functions(monkeypatch):
    torch.manual_seed(0)
    model = LatentDiffusion(tiny_config(latent_scale=2.0), (1, 8, 8)).eval()
    calls = []

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls.append((name, args, kwargs))
            return fn(*args, **kwargs)
        monkeypatch.setattr(samplers if name != "diffusion_bounds" else likelihood, name, wrapper)

    spy("sample", samplers.sample)
    spy("ddim_invert", samplers.ddim_invert)
    spy("diffusion_bounds", likelihood.diffusion_bounds)
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    model.sample(3, generator=torch.Generator().manual_seed(0))
    x_T = model.to_latent(x)
    model.from_latent(x_T)
    model.bound(x, generator=torch.Generator().manual_seed(0))
    names = [c[0] for c in calls]
    assert names == ["sample", "ddim_invert", "sample", "diffusion_bounds"]
    (_, sample_args, _), (_, invert_args, _), (_, _, regen_kwargs), (_, bound_args, bound_kwargs) = calls
    assert sample_args[1] == (3, *model.latent_shape) and sample_args[2] is model.denoiser.schedule
    assert invert_args[2] is model.denoiser.schedule and invert_args[1].shape == (3, *model.latent_shape)
    torch.testing.assert_close(invert_args[1], 2.0 * model.encode(x)[0])  # the scaled posterior mean
    assert regen_kwargs["sampler"] == "ddim" and regen_kwargs["eta"] == 0.0
    assert bound_kwargs["decoder"] == "continuous" and bound_args[2] is model.denoiser.schedule


def test_bound_combines_autoencoder_terms_with_the_scaled_latent_prior(monkeypatch):
    torch.manual_seed(0)
    scale = 2.5
    model = LatentDiffusion(tiny_config(latent_scale=scale), (1, 8, 8)).eval()
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    seen = {}

    def fake_bound_nats(x0, decoder="discretized", timesteps=0, generator=None, progress=False, fit_x=None, labels=None):
        seen.update(x0=x0, decoder=decoder, fit_x=fit_x)
        total = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
        return {"total": total, "prior": total * 0, "decoder": total / 2, "diffusion": total / 2,
                "total_small": total + 7.0, "variance": "npr"}

    monkeypatch.setattr(model.denoiser, "bound_nats", fake_bound_nats)
    out = model.bound(x, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mean, logvar = model.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
        reconstruction = -model.autoencoder.reconstruction_log_likelihood(x, z).double()
    entropy = (0.5 * torch.log(2 * math.pi * math.e * logvar.double().exp())).flatten(1).sum(1)
    d = model.latent_dims
    expected = (reconstruction - entropy + torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64) - d * math.log(scale)) / (64 * math.log(2))
    assert seen["decoder"] == "continuous"
    torch.testing.assert_close(seen["x0"].float(), scale * z)
    torch.testing.assert_close(out["bpd"], expected)
    torch.testing.assert_close(out["latent_prior_decoder_bpd"], torch.tensor([5.0, 10.0, 15.0], dtype=torch.float64) / (64 * math.log(2)))
    # every variance choice gets the whole-model bound; the fit sees the scaled latents of the fit images only
    torch.testing.assert_close(out["bpd_small"], expected + 7.0 / (64 * math.log(2)))
    assert out["variance"] == "npr" and seen["fit_x"] is None
    fit_images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    model.bound(x, generator=torch.Generator().manual_seed(7), fit_data=fit_images)
    assert seen["fit_x"].shape == (5, *model.latent_shape)
    torch.testing.assert_close(seen["fit_x"].float().mean(), scale * model.encode(fit_images)[0].mean(), atol=0.5, rtol=0)


# ----------------------------------------------------------------------------- the run: scale, checkpoint, resume

def test_scale_is_measured_saved_in_config_and_used_by_sampling(trained):
    path, fitted = trained
    saved = json.loads((path / "config.json").read_text())["model"]["latent_scale"]
    assert isinstance(saved, float) and saved == fitted.config.latent_scale
    model = load(path)
    assert model.config.latent_scale == saved
    # it is 1/std of z ~ q(z|x) over the training set, drawn as fit draws it
    from diffvae.api import run_data

    moments = model.latent_moments(run_data(model).train)
    mean, logvar = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert saved == pytest.approx(latent_scale_from(mean + torch.exp(0.5 * logvar) * noise), rel=1e-6)
    # sampling decodes z'/s
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    z_scaled = model.denoiser.generate(4, torch.Generator().manual_seed(3))
    assert torch.equal(a, model.decode(z_scaled / saved))
    model.config.latent_scale = 3 * saved
    assert not torch.equal(a, model.sample(4, generator=torch.Generator().manual_seed(3)))


def test_checkpoint_is_the_complete_composed_model_and_stage_one_is_kept(trained):
    path, fitted = trained
    tensors, meta = RunDir(path).load_checkpoint()
    ema, raw = split_prefixed(tensors, "ema"), split_prefixed(tensors, "model")
    assert set(ema) == set(fitted.state_dict()) == set(raw)
    ae_tensors, ae_meta = load_tensors(path / "autoencoder.safetensors")
    ae_ema = split_prefixed(ae_tensors, "ema")
    for key, value in ae_ema.items():  # the frozen EMA autoencoder of stage 1, unchanged by stage 2
        assert torch.equal(ema[f"autoencoder.{key}"], value) and torch.equal(raw[f"autoencoder.{key}"], value)
    assert ae_meta["step"] == 6 and meta["step"] == 14 and meta["autoencoder_steps"] == 6  # 30 % of 20 steps
    assert len(RunDir(path).read_metrics()) > 0 and (path / "autoencoder_metrics.jsonl").is_file()


@pytest.mark.parametrize("crash_in", ["autoencoder", "diffusion"])
def test_an_interrupted_run_resumes_bit_identical(trained, tmp_path, monkeypatch, crash_in):
    reference, _ = trained
    out = tmp_path / "run"
    cls = AutoencoderKL if crash_in == "autoencoder" else LatentDiffusion
    original = cls.training_loss
    count = {"n": 0}

    def crashing(self, x):
        count["n"] += 1
        if count["n"] == 5:  # after the step-4 checkpoint of that stage
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(cls, "training_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_run("ldm", DataConfig("digits"), tiny_config(), tiny_train(), out=out, progress=False)
    monkeypatch.setattr(cls, "training_loss", original)
    train_run("ldm", DataConfig("digits"), out=out, resume=True, progress=False)
    resumed, _ = RunDir(out).load_checkpoint()
    expected, _ = RunDir(reference).load_checkpoint()
    for key in expected:
        if key.startswith(("model/", "ema/")):
            assert torch.equal(resumed[key], expected[key]), key
    assert json.loads((out / "config.json").read_text())["model"]["latent_scale"] == \
        json.loads((reference / "config.json").read_text())["model"]["latent_scale"]


# ----------------------------------------------------------------------------- the whole-model bound

def test_whole_model_bound_stays_above_the_entropy_of_four_templates(tmp_path):
    # black-and-white templates, so the discretized decoder learns them within a short run
    g = torch.Generator().manual_seed(0)
    templates = (torch.randint(0, 2, (4, 1, 8, 8), generator=g) * 255).to(torch.uint8)
    dataset = ImageDataset("templates", templates.repeat(16, 1, 1, 1), templates, None, None, None)
    config = tiny_config(kl_weight=1e-2, schedule="linear", timesteps=1000, ae_steps_fraction=0.6)
    model = train_run("ldm", DataConfig("templates"), config, tiny_train(steps=100, batch_size=16, lr=1e-2, checkpoint_every=1000),
                      out=tmp_path / "run", progress=False, dataset=dataset)
    x = templates.repeat(4, 1, 1, 1)  # the data distribution: each template equally often
    bound = model.bound(x, generator=torch.Generator().manual_seed(1), fit_data=dataset.train)
    bits_per_image = {k: float(v.mean()) * 64 for k, v in bound.items() if torch.is_tensor(v)}
    for choice in ("bpd", "bpd_small", "bpd_large", "bpd_analytic", "bpd_npr"):  # fitted variances included
        assert bits_per_image[choice] >= math.log2(4), bits_per_image  # the true entropy: 2 bits per image
    assert bits_per_image["bpd"] == min(bits_per_image[c] for c in ("bpd_small", "bpd_large", "bpd_analytic", "bpd_npr")) \
        or bound["variance"] in ("small", "large", "analytic", "npr")
    assert bool((bound["reconstruction_bpd"] >= 0).all())  # a probability of the 8-bit image, not a density
    untrained_reconstruction = 64 * 8.0  # about 8 bits per pixel before training
    assert bits_per_image["reconstruction_bpd"] < 0.25 * untrained_reconstruction, bits_per_image


# ----------------------------------------------------------------------------- the CLI end to end

def test_cli_trains_samples_interpolates_inverts_and_reuses_an_autoencoder(tmp_path, capsys):
    tiny_flags = ["--ae-width", "8", "--latent-channels", "2", "--downsample", "2", "--channels", "32", "--channel-mult", "1",
                  "--timesteps", "50", "--sample-steps", "4", "--invert-steps", "4"]
    common = ["--data", "digits", "--batch", "32", "--precision", "fp32", "--device", "cpu", "--quiet"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["train", "ldm", *common, "--out", str(first), "--steps", "12", "--ae-steps", "5", *tiny_flags]) == 0
    assert load_tensors(first / "autoencoder.safetensors")[1]["step"] == 5
    assert cli.main(["sample", str(first), "--n", "6", "--out", str(tmp_path / "grid.png")]) == 0
    assert cli.main(["sample", str(first), "--n", "3", "--out", str(tmp_path / "s.npz"), "--sampler", "ddim", "--steps", "3"]) == 0
    import numpy as np

    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (3, 1, 8, 8) and images.dtype == np.uint8
    assert cli.main(["interpolate", str(first), "--out", str(tmp_path / "strip.png"), "--pairs", "2", "--frames", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["invert", str(first), "--n", "4"]) == 0
    assert "psnr_db" in json.loads(capsys.readouterr().out)
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[0] > 8 and Image.open(tmp_path / "strip.png").size[0] > 3 * 8
    # a second run reuses the first's autoencoder and scale, and trains only the diffusion stage
    assert cli.main(["train", "ldm", *common, "--out", str(second), "--steps", "6", "--ae-run", str(first), *tiny_flags]) == 0
    a, b = load(first), load(second)
    assert b.config.latent_scale == a.config.latent_scale and not (second / "autoencoder.safetensors").exists()
    for (key, value), other in zip(a.autoencoder.state_dict().items(), b.autoencoder.state_dict().values()):
        assert torch.equal(value, other), key
    assert RunDir(second).load_checkpoint()[1]["step"] == 6
    # bad input: one line, exit 2
    capsys.readouterr()
    assert cli.main(["train", "ldm", *common, "--out", str(tmp_path / "bad"), "--steps", "5", "--downsample", "3"]) == 2
    assert cli.main(["train", "ldm", *common, "--out", str(tmp_path / "bad2"), "--steps", "5", "--ae-run", str(tmp_path / "nope")]) == 2
    assert cli.main(["train", "ldm", *common, "--out", str(tmp_path / "bad3"), "--steps", "6", "--ae-run", str(first),
                     *tiny_flags, "--latent-channels", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("diffvae: error:") for line in err), err
