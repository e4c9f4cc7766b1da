"""``diffvae export RUN --to diffusers OUT``: diffusers loads the folder and samples what diffvae samples."""

import argparse
import errno
import json
import os

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffvae.api import DataConfig, load, train_run  # noqa: E402
from diffvae.diffusion.model import DDPMConfig  # noqa: E402
from diffvae.diffusion.export import diffusers_state_dict, diffusers_unet_config  # noqa: E402
from diffvae.errors import DiffvaeError  # noqa: E402
from diffvae.export import add_arguments, export_diffusers, run  # noqa: E402
from diffvae.nn.unet import UNet, UNetConfig  # noqa: E402
from diffvae.train import TrainConfig  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only; never the network
RUNS = {  # prediction × schedule, incl. a short linear schedule that diffusers' named "linear" cannot express
    "eps-linear": dict(prediction="eps", schedule="linear", timesteps=100),
    "v-cosine": dict(prediction="v", schedule="cosine", timesteps=100),
    "x0-linear-short": dict(prediction="x0", schedule="linear", timesteps=10),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    for name, overrides in RUNS.items():
        config = DDPMConfig(channels=16, channel_mult=(1, 2), invert_steps=10, sample_steps=10, **overrides)
        train_run("ddpm", DataConfig("digits"), config, TrainConfig(steps=40, batch_size=64, lr=2e-3, precision="fp32",
                                                                    device="cpu"), out=root / name, progress=False)
    return root


def _export(run_dir, out, *extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(run_dir), "--to", "diffusers", str(out), *extra])) == 0
    return out


def _diffvae_images(model, sampler, steps, seed, n=6):
    with torch.no_grad():
        x = model.denoiser.generate(n, torch.Generator().manual_seed(seed), sampler=sampler, steps=steps, eta=0.0)
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # the pipelines' output_type="np"


@pytest.mark.parametrize("name", list(RUNS))
def test_ddim_samples_from_the_same_noise_match(runs, tmp_path, name):
    out = _export(runs / name, tmp_path / "pipe")
    assert {p.name for p in out.iterdir()} >= {"model_index.json", "unet", "scheduler"}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # safetensors only, never pickle
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    pipe = diffusers.DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, diffusers.DDIMPipeline)
    pipe.set_progress_bar_config(disable=True)
    steps = 10 if RUNS[name]["timesteps"] >= 10 else RUNS[name]["timesteps"]
    theirs = pipe(batch_size=6, generator=torch.Generator().manual_seed(5), num_inference_steps=steps,
                  use_clipped_model_output=True, output_type="np").images
    model = load(runs / name)
    ours = _diffvae_images(model, "ddim", steps, seed=5)
    assert theirs.shape == ours.shape == (6, 8, 8, 1)
    assert np.abs(theirs - ours).max() < 1e-3
    other = load(runs / next(n for n in RUNS if n != name))  # a different network gives visibly different samples
    assert np.abs(_diffvae_images(other, "ddim", steps, seed=5) - ours).max() > 0.05
    # the exported EMA weights are the run's EMA weights (not the raw model's)
    exported = diffusers.UNet2DModel.from_pretrained(out / "unet").state_dict()
    for key, value in diffusers_state_dict(model.denoiser.unet).items():
        assert torch.equal(exported[key], value), key


def test_ddpm_pipeline_matches_ancestral_sampling(runs, tmp_path):
    """DDPMPipeline draws x_T and then one noise per step but the last, as diffvae's ddpm sampler does."""
    out = _export(runs / "eps-linear", tmp_path / "pipe", "--pipeline", "ddpm")
    pipe = diffusers.DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, diffusers.DDPMPipeline)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=6, generator=torch.Generator().manual_seed(2), num_inference_steps=20, output_type="np").images
    ours = _diffvae_images(load(runs / "eps-linear"), "ddpm", 20, seed=2)
    assert np.abs(theirs - ours).max() < 1e-3


def test_scheduler_reproduces_the_forward_process(runs, tmp_path):
    for name, overrides in RUNS.items():
        out = _export(runs / name, tmp_path / name)
        config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
        scheduler = diffusers.DDIMScheduler.from_pretrained(out / "scheduler")
        schedule = load(runs / name).denoiser.schedule
        assert torch.allclose(scheduler.alphas_cumprod.double(), schedule.alphas_cumprod, atol=1e-6)
        assert config["prediction_type"] == {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[overrides["prediction"]]
        assert config["num_train_timesteps"] == overrides["timesteps"] and config["clip_sample"] is True
        expected = {"eps-linear": "linear", "v-cosine": "squaredcos_cap_v2"}.get(name)
        if expected:
            assert config["beta_schedule"] == expected and config["trained_betas"] is None
        else:
            assert config["trained_betas"] is not None  # β capped at 0.999: not diffusers' linear


def test_latent_diffusion_denoiser_exports_and_decodes_with_diffvae(tmp_path):
    from diffvae.latent.model import LDMConfig

    run_dir = tmp_path / "ldm"
    config = LDMConfig(channels=16, timesteps=100, invert_steps=10, sample_steps=10)
    train_run("ldm", DataConfig("digits"), config, TrainConfig(steps=40, batch_size=64, lr=2e-3, precision="fp32",
                                                               device="cpu"), out=run_dir, progress=False)
    out = _export(run_dir, tmp_path / "denoiser")
    assert not (out / "model_index.json").exists()  # no diffusers pipeline holds diffvae's autoencoder
    info = json.loads((out / "latent.json").read_text())
    unet = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.clip_sample is False  # latents are not bounded
    model = load(run_dir)
    scheduler.set_timesteps(10)
    x = torch.randn(6, *info["latent_shape"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        ours = model.denoiser.generate(6, torch.Generator().manual_seed(4), sampler="ddim", steps=10, eta=0.0)
        images = model.decode(x / info["latent_scale"])
        expected = model.sample(6, torch.Generator().manual_seed(4), sampler="ddim", steps=10, eta=0.0)
    assert float(ours.abs().max()) > 0.1 and float((x - ours).abs().max()) < 1e-3
    assert int((images.int() - expected.int()).abs().max()) <= 1  # uint8 rounding of a float difference


@pytest.mark.parametrize("config, channels, side", [
    (UNetConfig(channels=32, channel_mult=(1, 2, 2), groups=32), 1, 28),
    (UNetConfig(channels=64, channel_mult=(1, 2), attention_levels=(0, 1), num_res_blocks=2, groups=32), 3, 16),
    (UNetConfig(channels=32, channel_mult=(1, 2, 2, 2), attention_levels=(0, -1), groups=8), 3, 32),
])
def test_unet_maps_weight_for_weight(config, channels, side):
    """Random (not trained, not zero) weights: diffusers' UNet2DModel computes diffvae's function."""
    torch.manual_seed(0)
    unet = UNet(config, channels, image_size=side)
    for parameter in unet.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    theirs = diffusers.UNet2DModel(**diffusers_unet_config(unet))
    theirs.load_state_dict(diffusers_state_dict(unet), strict=True)
    x, t = torch.randn(2, channels, side, side), torch.tensor([3, 700])
    with torch.no_grad():
        ours, out = unet.eval()(x, t), theirs.eval()(x, t).sample
    assert float(ours.abs().max()) > 0.01
    assert torch.allclose(ours, out, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config, side, message", [
    (UNetConfig(channels=32, channel_mult=(1, 2, 2, 2), groups=32), 28, "halve"),
    (UNetConfig(channels=96, channel_mult=(1, 2), attention_levels=(0,), groups=32), 16, "head widths"),
])
def test_unets_diffusers_cannot_hold_are_refused(config, side, message):
    with pytest.raises(DiffvaeError, match=message):
        diffusers_unet_config(UNet(config, 1, image_size=side))


def test_bad_input_is_one_line_and_touches_nothing(runs, tmp_path):
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    vae = tmp_path / "vae"
    train_run("vae", DataConfig("digits"), None, TrainConfig(steps=2, batch_size=16, precision="fp32", device="cpu"),
              out=vae, progress=False)
    cases = {
        "exists": ((runs / "eps-linear", existing), {}, "already exists"),
        "vae": ((vae, tmp_path / "a"), {}, "does not support VAE runs"),
        "pipeline": ((runs / "eps-linear", tmp_path / "b"), {"pipeline": "dpm"}, "--pipeline"),
        "inside a run": ((runs / "eps-linear", runs / "eps-linear" / "export"), {}, "inside a diffvae run"),
        "no parent": ((runs / "eps-linear", tmp_path / "no" / "such"), {}, "does not exist"),
        "no run": ((tmp_path / "missing", tmp_path / "c"), {}, ""),
    }
    for name, (args, kwargs, expected) in cases.items():
        with pytest.raises(DiffvaeError) as caught:
            export_diffusers(*args, **kwargs)
        assert expected in str(caught.value) and "\n" not in str(caught.value), (name, str(caught.value))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    with pytest.raises(DiffvaeError, match="not a diffvae export folder"):
        export_diffusers(runs / "eps-linear", existing, force=True)  # someone's folder: --force never replaces it
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    earlier = export_diffusers(runs / "eps-linear", tmp_path / "earlier")
    (earlier / "stale.txt").write_text("x")
    out = export_diffusers(runs / "eps-linear", earlier, force=True)  # --force replaces an earlier export
    assert (out / "model_index.json").is_file() and not (out / "stale.txt").exists()


def test_diffvae_export_is_a_cli_command(runs, tmp_path, capsys):
    from diffvae.cli import main

    out = tmp_path / "cli"
    assert main(["export", str(runs / "eps-linear"), "--to", "diffusers", str(out), "--pipeline", "ddpm"]) == 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert "DDPMPipeline" in capsys.readouterr().err
    assert main(["export", str(runs / "eps-linear"), "--to", "onnx", str(tmp_path / "x")]) == 2
    assert main(["export", str(runs / "eps-linear"), "--to", "diffusers", str(out)]) == 2  # exists: --force
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("diffvae: error:") for line in err)
    assert not (tmp_path / "x").exists()


def test_a_place_where_no_folder_can_be_made_is_one_line(tmp_path, monkeypatch):
    """Regression (issue 27, hostile pass): OUT under /sys (EPERM even for root, whom os.access lets through) was an
    internal error."""
    import diffvae.export as export_module

    def forbidden(*args, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(export_module.tempfile, "mkdtemp", forbidden)
    with pytest.raises(DiffvaeError, match=r"cannot write .*e: Operation not permitted"):
        export_module._write_atomically(tmp_path / "e", False, lambda folder: None)
    assert list(tmp_path.iterdir()) == []


def test_a_safetensors_write_error_is_one_line_and_leaves_nothing(tmp_path):
    """Regression (issue 27, hostile pass): on a full disk diffusers' safetensors write raises SafetensorError, not
    OSError: it was an internal error."""
    from safetensors import SafetensorError

    import diffvae.export as export_module

    def write(folder):
        (folder / "unet").mkdir()
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    with pytest.raises(DiffvaeError, match=r"cannot write .*e: Error while serializing: I/O error: File too large"):
        export_module._write_atomically(tmp_path / "e", False, write)
    assert list(tmp_path.iterdir()) == []
