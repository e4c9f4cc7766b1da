"""Model presets by image shape (diffvae.presets + each family's ``preset_for``): every family's preset for
1×28×28, 3×32×32 and 3×64×64 builds a model whose samples have that shape; the UNets end at ≤ 8 px with
attention there; ``diffvae train`` takes the preset under the flags given."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffvae.cli import main
from diffvae.families import FAMILIES
from diffvae.latent.family import COLOUR_AUTOENCODER
from diffvae.latent.fit import stage_train_configs
from diffvae.presets import levels_to, preset_config, unet_channel_mult
from diffvae.train import TrainConfig

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
CHEAP_SAMPLING = {"steps": 2}  # iterative families: two network steps are enough to check the shape


def preset_model(name: str, shape):
    fam = FAMILIES[name]
    config_class, model_class = fam.load()
    config = preset_config(fam.spec(), config_class(), shape)
    if hasattr(config, "latent_scale"):
        config.latent_scale = 1.0  # as after the autoencoder stage
    torch.manual_seed(0)
    return model_class(config, shape).eval()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_familys_preset_builds_a_model_that_samples_that_shape(name, shape):
    model = preset_model(name, shape)
    kw = CHEAP_SAMPLING if FAMILIES[name].spec().iterative else {}
    with torch.inference_mode():
        images = model.sample(2, generator=torch.Generator().manual_seed(0), **kw)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (2, *shape)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_familys_64_px_preset_trains_a_step_on_two_images(name):
    """Issue 24: a 64 px folder keeps its size, so every family's default model for 3×64×64 must train: one
    loss on 2 images is finite and its gradient reaches every trainable parameter used, finite."""
    model = preset_model(name, (3, 64, 64)).train()
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    torch.manual_seed(0)
    loss, _ = model.training_loss(images)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_levels_halve_down_to_8_px():
    for size, levels in ((8, 1), (16, 2), (28, 3), (32, 3), (48, 4), (64, 4), (65, 5), (128, 5)):
        assert levels_to(size) == levels, size
        lowest = size
        for _ in range(levels - 1):
            lowest = math.ceil(lowest / 2)
        assert lowest <= 8 and (levels == 1 or math.ceil(size / 2 ** (levels - 2)) > 8)
    assert unet_channel_mult(28) == (1, 2, 2) and unet_channel_mult(64) == (1, 2, 2, 2)


@pytest.mark.parametrize("name", [n for n in FAMILIES if hasattr(FAMILIES[n].load()[0](), "attention_levels")])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_unet_presets_attend_only_at_7_or_8_px(name, shape):
    """Self-attention runs where the feature map is 7×7 or 8×8 (pixel UNets at 28/32/64 px; the latent UNet
    on 7×7, 8×8 and 16×16 latents attends at its lower level), never at 16×16 or more."""
    model = preset_model(name, shape)
    seen = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
             for m in model.modules() if type(m).__name__ == "Attention"]
    with torch.inference_mode():
        model.sample(1, generator=torch.Generator().manual_seed(0), steps=1)
    for h in hooks:
        h.remove()
    assert seen and all(max(s) <= 8 for s in seen), seen


def test_vae_latent_grows_as_the_square_root_of_the_image_values():
    spec = FAMILIES["vae"].spec()
    for shape in [(1, 28, 28), (1, 32, 32), (3, 32, 32), (1, 64, 64), (3, 64, 64), (3, 128, 128)]:
        dims = shape[0] * shape[1] * shape[2]
        latent = spec.preset_for(shape).get("latent_dim", 16)
        assert latent == 16 * 2 ** max(0, round(math.log2(math.sqrt(dims / 1024)))), shape
        assert preset_model("vae", shape).latent_dims == latent


def test_ldm_keeps_a_16_px_latent_at_64_px():
    model = preset_model("ldm", (3, 64, 64))
    assert model.latent_dims == 4 * 16 * 16  # f = 4 (not 8: an 8×8×4 latent is 48× smaller than the image)
    assert FAMILIES["ldm"].spec().preset_for((3, 128, 128))["downsample"] == 8


def test_ldm_trains_a_colour_autoencoder_longer_at_a_smaller_batch_unless_told_otherwise():
    spec, config_class = FAMILIES["ldm"].spec(), FAMILIES["ldm"].load()[0]
    for shape in ((3, 32, 32), (3, 64, 64)):
        assert COLOUR_AUTOENCODER.items() <= spec.preset_for(shape).items()
    grey = preset_config(spec, config_class(), (1, 28, 28))
    assert (grey.ae_batch_size, grey.ae_lr, grey.ae_steps_fraction, grey.mse_weight) == (0, 0.0, 0.3, 0.0)  # mnist's sweep stands
    assert preset_config(spec, config_class(), (3, 32, 32)).mse_weight == 200.0  # the colour autoencoder's squared error
    colour = preset_config(spec, config_class(), (3, 32, 32))
    ae, prior = stage_train_configs(TrainConfig(budget_minutes=3.0, batch_size=64), colour)
    assert (ae.batch_size, ae.lr, prior.batch_size) == (16, 2e-3, 64) and ae.budget_minutes == pytest.approx(1.8)
    told = preset_config(spec, config_class(ae_batch_size=32), (3, 32, 32), {"ae_batch_size"})
    assert told.ae_batch_size == 32 and told.ae_lr == 2e-3  # a flag given wins; the rest of the preset stays


def _colour_folder(root, n=8, size=64):
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir()
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{k}.png")
    return root


def test_train_takes_the_preset_for_the_data_under_the_flags_given(tmp_path):
    data = f"folder:{_colour_folder(tmp_path / 'images')}"  # 64 px images: kept at 64 px without --size
    common = ["--data", data, "--steps", "1", "--batch", "4", "--precision", "fp32", "--device", "cpu", "--quiet"]
    tiny_unet = ["--channels", "8", "--timesteps", "10"]
    runs = {"preset": ["ddpm", *tiny_unet], "given": ["ddpm", *tiny_unet, "--channel-mult", "1,2,2"], "vae": ["vae"]}
    saved = {}
    for key, flags in runs.items():
        assert main(["train", *flags, *common, "--out", str(tmp_path / key)]) == 0
        saved[key] = json.loads((tmp_path / key / "config.json").read_text())["model"]
    assert saved["preset"]["channel_mult"] == [1, 2, 2, 2] and saved["preset"]["channels"] == 8
    assert saved["given"]["channel_mult"] == [1, 2, 2]  # a flag always wins, even when it equals the default
    assert saved["vae"]["latent_dim"] == 64
    assert main(["sample", str(tmp_path / "preset"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["images"].shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_compare_sizes_its_configs_from_the_same_preset(name):
    from diffvae.compare.stages import model_config_for

    spec = FAMILIES[name].spec()
    for shape in SHAPES:
        config = model_config_for(name, shape)
        for field, value in spec.preset_for(shape).items():
            assert getattr(config, field) == value, (name, shape, field)
    assert model_config_for(name, (3, 64, 64)) != model_config_for(name, (1, 28, 28)) or not spec.preset_for((3, 64, 64))
