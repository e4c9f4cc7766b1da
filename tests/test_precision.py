"""diffvae.precision: sampling at fp32 is bit-identical to sampling without it; bf16 differs only slightly;
bounds never run under it; the CLI's --precision."""

from __future__ import annotations

import pytest
import torch

from diffvae.cli import main
from diffvae.errors import DiffvaeError
from diffvae.families import FAMILIES, get_family
from diffvae.precision import check_sampling_precision, precision_name, sampling_dtype, sampling_precision
from diffvae.train import cpu_supports_bf16

TINY_UNET = {"channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_levels": (-1,)}
TINY = {"ddpm": {**TINY_UNET, "timesteps": 50, "sample_steps": 5},
        "flow": {**TINY_UNET, "sample_steps": 4},
        "ldm": {**TINY_UNET, "timesteps": 50, "sample_steps": 5, "ae_width": 8, "latent_channels": 2, "downsample": 2,
                "latent_scale": 1.0},
        "vae": {"width": 16}}


def tiny_model(family: str, shape=(3, 16, 16)):
    config_class, model_class = get_family(family).load()
    torch.manual_seed(0)
    model = model_class(config_class(**TINY.get(family, {})), shape).eval()
    with torch.no_grad():  # an untrained UNet's zero-initialised output layer would make every precision agree
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _sample(model, n=24, seed=1, **kw):
    with torch.inference_mode():
        return model.sample(n, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fp32_is_bit_identical_and_bf16_is_close(family):
    model = tiny_model(family)
    reference = _sample(model)
    with sampling_precision(model, "fp32"):
        assert torch.equal(_sample(model), reference)
    with sampling_precision(model, "bf16"):
        low = _sample(model)
    assert low.dtype == torch.uint8 and low.shape == reference.shape
    diff = (low.int() - reference.int()).abs().float()
    # bf16 keeps 8 bits of mantissa: network outputs move by ~0.4%, i.e. about one grey level of 255
    assert diff.max() > 0  # it did run in bf16
    assert diff.mean() <= 1.0 and (diff > 16).float().mean() <= 0.02, (family, diff.mean(), (diff > 16).float().mean())


def test_bf16_autocast_really_runs_the_network_in_bf16():
    model = tiny_model("vae")
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype) if isinstance(output, torch.Tensor) and
        isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)) else None)
    try:
        with sampling_precision(model, "bf16"):
            _sample(model, n=4)
        assert seen and set(seen) == {torch.bfloat16}
        seen.clear()
        with sampling_precision(model, "fp32"):
            _sample(model, n=4)
        assert seen and set(seen) == {torch.float32}
    finally:
        hook.remove()


def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively():
    expected = torch.bfloat16 if cpu_supports_bf16() else None
    assert sampling_dtype("auto", "cpu") is expected
    assert sampling_dtype("fp32", "cpu") is None and sampling_dtype("bf16", "cpu") is torch.bfloat16
    assert precision_name(tiny_model("vae"), "auto") == ("bf16" if expected else "fp32")
    for bad in ("fp16", "half", "", "BF16"):
        with pytest.raises(DiffvaeError, match="--precision"):
            check_sampling_precision(bad)


def test_bounds_are_never_computed_under_sampling_precision(monkeypatch):
    """evaluate(): only sampling runs in bf16; the bound sees fp32 (here: the autocast state during bound())."""
    from diffvae.data import load_data
    from diffvae.evaluate import EvalConfig, likelihood, sampling_speed

    model = tiny_model("vae", (1, 8, 8))
    states = []
    real_bound, real_sample = type(model).bound, type(model).sample
    monkeypatch.setattr(type(model), "bound", lambda self, *a, **k: states.append(("bound", torch.is_autocast_enabled("cpu")))
                        or real_bound(self, *a, **k))
    monkeypatch.setattr(type(model), "sample", lambda self, *a, **k: states.append(("sample", torch.is_autocast_enabled("cpu")))
                        or real_sample(self, *a, **k))
    config = EvalConfig.quick(n_samples=10, precision="bf16")
    _, speed = sampling_speed(model, config)
    likelihood(model, load_data("digits"), config)
    assert speed["sampling_precision"] == "bf16"
    assert {s for s in states if s[0] == "sample"} == {("sample", True)} and ("bound", False) in states
    assert not any(s == ("bound", True) for s in states)


def test_cli_precision_flag(tmp_path, capsys):
    import numpy as np

    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--steps", "3", "--batch", "16", "--precision", "fp32",
                 "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.npz"
        assert main(["sample", str(run), "--n", "16", "--precision", precision, "--out", str(out)]) == 0
        with np.load(out, allow_pickle=False) as f:
            outs[precision] = torch.from_numpy(f["images"])
    from diffvae.api import load

    model = load(run, device="cpu")
    assert torch.equal(outs["fp32"], _sample(model, n=16, seed=0))  # --precision fp32 = plain sampling
    assert (outs["bf16"].int() - outs["fp32"].int()).abs().float().mean() <= 2.0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--precision", "fp16", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffvae: error: --precision") and err.count("\n") == 1
    assert not (tmp_path / "x.npz").exists()
