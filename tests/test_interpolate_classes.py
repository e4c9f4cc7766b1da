"""``diffvae interpolate RUN --classes A,B`` (issue 16): a conditional run moves its condition from class A to
class B with the noise fixed (the UNet mixes class embeddings, the conditional VAE decodes a soft one-hot), its
ends are exactly ``model.sample`` with labels A and B; an unconditional run walks between held-out images of
A and B; bad input is one line before anything is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_conditional_bound import _perturbed  # random weights, class embeddings far apart
from diffvae.api import load, run_data
from diffvae.cli import main
from diffvae.diffusion.model import DDPM, DDPMConfig
from diffvae.errors import DiffvaeError
from diffvae.flow.model import FlowConfig, FlowMatching
from diffvae.interpolation import class_endpoints, class_strip, class_weights, interpolation_strip, parse_class_pair
from diffvae.nn.unet import UNet, UNetConfig
from diffvae.vae.model import VAE, VAEConfig, pixel_median

K = 4
SHAPE = (1, 8, 8)
COMMON = ["--data", "digits", "--precision", "fp32", "--device", "cpu", "--quiet"]
TINY_DDPM = ["--channels", "8", "--channel-mult", "1,2", "--timesteps", "20", "--sample-steps", "3", "--invert-steps", "3",
             "--batch", "16"]
SMALL_VAE = ["--width", "16", "--latent-dim", "4", "--batch", "32"]




def cvae() -> VAE:
    return _perturbed(VAE(VAEConfig(width=16, latent_dim=4, conditional=True, num_classes=K), SHAPE))


def cddpm(sampler: str = "ddpm") -> DDPM:
    return _perturbed(DDPM(DDPMConfig(channels=8, channel_mult=(1, 2), timesteps=20, sample_steps=4, sampler=sampler,
                                      conditional=True, num_classes=K), SHAPE))


def cflow() -> FlowMatching:
    return _perturbed(FlowMatching(FlowConfig(channels=8, channel_mult=(1, 2), sample_steps=3, conditional=True, num_classes=K),
                                   SHAPE))


def gen(seed: int = 5) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- the strip of a conditional model

@pytest.mark.parametrize("make,guidance", [(cvae, None), (cddpm, None), (cddpm, 2.5), (lambda: cddpm("dpm++2m"), 0.0),
                                           (cflow, 3.0)])
def test_the_ends_of_a_class_strip_are_the_samples_of_the_two_classes(make, guidance):
    model = make()
    extra = {} if guidance is None else {"guidance": guidance}
    with torch.no_grad():
        strip = class_strip(model, 1, 3, pairs=3, frames=4, generator=gen(), guidance=guidance)
        first = model.sample(3, generator=gen(), labels=torch.full((3,), 1), **extra)
        last = model.sample(3, generator=gen(), labels=torch.full((3,), 3), **extra)
    assert strip.shape == (3, 4, *SHAPE) and strip.dtype == torch.uint8
    assert torch.equal(strip[:, 0], first) and torch.equal(strip[:, -1], last)
    if guidance != 0.0:  # w = 0 is the unconditional model: every frame is the same image
        assert not torch.equal(first, last) and not torch.equal(strip[:, 1], first)


def test_the_vae_decodes_the_soft_one_hot_with_its_noise_fixed():
    """Frame λ of the conditional VAE is the decoder on [z, (1−λ)·onehot(A) + λ·onehot(B)], z ~ N(0, I) the
    same for every frame (the first draw of the generator, as in sample())."""
    model = cvae()
    with torch.no_grad():
        strip = class_strip(model, 0, 2, pairs=2, frames=3, generator=gen())
        z = torch.randn(2, 4, generator=gen())
        soft = torch.tensor([[0.5, 0.0, 0.5, 0.0]]).expand(2, -1)
        expected = pixel_median("logistic", model.decoder(torch.cat([z, soft], dim=1)), 1)
    assert torch.equal(strip[:, 1], expected)


def test_the_unet_mixes_class_embeddings_and_keeps_int_labels_bit_for_bit():
    unet = _perturbed(UNet(UNetConfig(channels=8, channel_mult=(1, 2), groups=8, num_classes=K), in_channels=1, image_size=8))
    x, t = torch.randn(4, *SHAPE), torch.tensor([0, 3, 7, 19])
    labels = torch.tensor([0, 3, K, 1])
    with torch.no_grad():
        one_hot = torch.nn.functional.one_hot(labels, K + 1).float()
        assert torch.equal(unet(x, t, one_hot), unet(x, t, labels))
        weights = class_weights(0, 2, 0.25, 4, K)  # 0.75·e(0) + 0.25·e(2)
        mixed = unet(x, t, weights)
        # independent: the mixed embedding written into the null row, then the null label
        unet.class_embed.weight[K] = 0.75 * unet.class_embed.weight[0] + 0.25 * unet.class_embed.weight[2]
        reference = unet(x, t, torch.full((4,), K))
    torch.testing.assert_close(mixed, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixed, unet(x, t, torch.zeros(4, dtype=torch.long)))


def test_class_weights_are_checked_in_one_line():
    model = cddpm()
    for weights, message in ((torch.full((2, K + 1), 0.5), "sum to 1"), (torch.ones(2, K), r"\(2, 5\)"),
                             (torch.tensor([[1.5, -0.5, 0, 0, 0]] * 2), ">= 0")):
        with pytest.raises(DiffvaeError, match=message):
            model.sample(2, generator=gen(), labels=weights)
    plain = _perturbed(DDPM(DDPMConfig(channels=8, channel_mult=(1, 2), timesteps=20, sample_steps=2), SHAPE))
    with pytest.raises(DiffvaeError, match="unconditionally"):
        plain.sample(2, generator=gen(), labels=class_weights(0, 1, 0.5, 2, K))
    with pytest.raises(DiffvaeError, match="unconditionally"):
        class_strip(plain, 0, 1, 2, 3, gen())


@pytest.mark.parametrize("text,message", [("3", "two class numbers"), ("3,x", "two class numbers"), ("1,2,3", "two class numbers"),
                                          ("3,3", "different"), ("3,10", "out of range"), ("-1,2", "out of range")])
def test_parse_class_pair_refuses_bad_pairs(text, message):
    with pytest.raises(DiffvaeError, match=message):
        parse_class_pair(text, 10)
    assert parse_class_pair("8,3", 10) == (8, 3)


# ----------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interpolate_classes")
    assert main(["train", "ddpm", "--conditional", *COMMON, *TINY_DDPM, "--steps", "2", "--out", str(root / "cddpm")]) == 0
    assert main(["train", "vae", "--conditional", *COMMON, *SMALL_VAE, "--steps", "2", "--out", str(root / "cvae")]) == 0
    assert main(["train", "vae", *COMMON, *SMALL_VAE, "--steps", "2", "--out", str(root / "plain")]) == 0
    np.savez(root / "unlabelled.npz", images=np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    assert main(["train", "vae", "--data", f"npz:{root / 'unlabelled.npz'}", "--precision", "fp32", "--device", "cpu", "--quiet",
                 *SMALL_VAE, "--steps", "2", "--out", str(root / "unlabelled")]) == 0
    return root


def test_an_unconditional_run_walks_between_held_out_images_of_the_two_classes(runs, tmp_path):
    out = tmp_path / "strip.npz"
    assert main(["interpolate", str(runs / "plain"), "--classes", "3,8", "--pairs", "3", "--frames", "4", "--seed", "2",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        frames = torch.from_numpy(f["images"]).reshape(3, 4, *SHAPE)
    model, dataset = load(runs / "plain"), run_data(load(runs / "plain"))
    ia, ib = class_endpoints(dataset.test, dataset.test_labels, 3, 8, 3, torch.Generator().manual_seed(2))
    assert dataset.test_labels[ia].tolist() == [3, 3, 3] and dataset.test_labels[ib].tolist() == [8, 8, 8]
    assert len(set(ia.tolist())) == 3 and len(set(ib.tolist())) == 3  # different images in every strip
    with torch.inference_mode():
        ends = model.from_latent(model.to_latent(torch.cat([dataset.test[ia], dataset.test[ib]])))
        expected = interpolation_strip(model, dataset.test[ia], dataset.test[ib], 4)
    assert torch.equal(frames, expected)
    assert torch.equal(frames[:, 0], ends[:3]) and torch.equal(frames[:, -1], ends[3:])


def test_the_command_writes_a_png_strip_per_pair(runs, tmp_path):
    out = tmp_path / "strip.png"
    assert main(["interpolate", str(runs / "cddpm"), "--classes", "1,7", "--pairs", "2", "--frames", "5", "--guidance", "2",
                 "--out", str(out)]) == 0
    png = np.asarray(Image.open(out))
    assert png.shape == (2 * 9 + 1, 5 * 9 + 1)  # 8×8 frames, a 1-pixel border: rows = pairs, columns = frames
    model = load(runs / "cddpm")
    with torch.inference_mode():  # the first column is `diffvae sample --classes 1 --guidance 2 --seed 0`
        first = model.sample(2, generator=torch.Generator().manual_seed(0), labels=torch.full((2,), 1), guidance=2.0)
    assert np.array_equal(png[1:9, 1:9], first[0, 0].numpy()) and np.array_equal(png[10:18, 1:9], first[1, 0].numpy())
    vae_out = tmp_path / "vae.png"
    assert main(["interpolate", str(runs / "cvae"), "--classes", "0,9", "--pairs", "3", "--frames", "2", "--out", str(vae_out)]) == 0
    assert np.asarray(Image.open(vae_out)).shape == (3 * 9 + 1, 2 * 9 + 1)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


BAD = {
    "one-class": (["{cddpm}", "--classes", "3"], "two class numbers"),
    "not-numbers": (["{cddpm}", "--classes", "3,x"], "two class numbers"),
    "same-class": (["{cddpm}", "--classes", "4,4"], "different"),
    "conditional-out-of-range": (["{cddpm}", "--classes", "3,10"], "out of range"),
    "unconditional-out-of-range": (["{plain}", "--classes", "3,10"], "out of range"),
    "unlabelled-data": (["{unlabelled}", "--classes", "0,1"], "needs labelled data"),
    "guidance-without-classes": (["{cddpm}", "--guidance", "2"], "applies with --classes"),
    "guidance-on-a-vae": (["{cvae}", "--classes", "0,1", "--guidance", "2"], "one step"),
    "negative-guidance": (["{cddpm}", "--classes", "0,1", "--guidance", "-1"], ">= 0"),
    "guidance-unconditional": (["{plain}", "--classes", "0,1", "--guidance", "2"], "trained unconditionally"),
    "too-few-of-a-class": (["{plain}", "--classes", "0,1", "--pairs", "5000"], "images of class"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_before_anything_is_written(case, runs, tmp_path, capsys):
    argv, message = BAD[case]
    argv = ["interpolate", *[a.format(**{p.name: p for p in runs.iterdir()}) for a in argv], "--out", str(tmp_path / "s.png")]
    before = _snapshot(runs)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffvae: error: ") and message in err[0], err
    assert _snapshot(runs) == before and not any(tmp_path.iterdir())
