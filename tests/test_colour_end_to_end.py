"""Every registered family trains, samples and evaluates on the built-in RGB data set ``colours``
(3×32×32), with ``--hflip``: RGB end to end, looping over the registry (no family is named here)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from diffvae.api import DataConfig, load, train_run
from diffvae.cli import main
from diffvae.evaluate import EvalConfig, evaluate
from diffvae.families import FAMILIES
from diffvae.train import TrainConfig

# small settings for any config that has these fields (a field a family lacks is simply not set)
SMALL = {"timesteps": 50, "sample_steps": 4, "invert_steps": 4, "channels": 16, "channel_mult": (1, 2),
         "attention_levels": (), "width": 16}
EVAL = EvalConfig.quick(n_samples=16, bootstrap=0, bound_n=4, variance_fit_n=0, iwae_samples=2, midpoints=4, strips=1,
                        frames=3, roundtrip_n=4, probe_train=40, probe_test=20, batch_size=16, guidance_sweep=())


def _small_config(name: str):
    config_class, _ = FAMILIES[name].load()
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in SMALL.items() if k in fields})


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_trains_samples_and_evaluates_on_colours(name, tmp_path, feature_cache):
    out = tmp_path / name
    train = TrainConfig(steps=6, batch_size=8, precision="fp32", device="cpu", hflip=True, warmup_steps=2, log_every=2)
    train_run(name, DataConfig("colours", limit=256), _small_config(name), train, out=out, progress=False)
    stored = json.loads((out / "config.json").read_text())
    assert stored["data"]["image_shape"] == [3, 32, 32] and stored["train"]["hflip"] is True
    model = load(out)
    with torch.no_grad():
        images = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (5, 3, 32, 32)
    assert not torch.equal(images[:, 0], images[:, 1])  # three channels, not one grey image copied
    results = evaluate(model, EVAL)
    assert results["data_dims"] == 3 * 32 * 32 and results["n_samples"] == 16
    assert math.isfinite(results["bpd"]) and results["bpd"] > 0 and results["fid"] > 0  # a few steps in: finite, not good
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / f"{name}.png")]) == 0  # --device auto
