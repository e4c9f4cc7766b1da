"""Training on a packed data set (``--data packed:DIR``): the engine reads its batches through
diffvae.loader.LoaderSource and ends bit-identical to the same run on the source spec, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from diffvae.cli import main
from diffvae.data import load_data
from diffvae.data import pack
from diffvae.pack import shard_of
from diffvae.runs import load_tensors

COMMON = ["--batch", "16", "--precision", "fp32", "--device", "cpu", "--seed", "2", "--quiet", "--checkpoint-every", "2",
          "--log-every", "1"]
CASES = {  # family flags, (module, class) whose training_loss is interrupted, at which call
    "vae": (["vae", "--steps", "6", "--hflip"], ("diffvae.vae.model", "VAE"), 4),
    "ddpm": (["ddpm", "--steps", "5", "--channels", "8", "--channel-mult", "1", "--attention-levels", "", "--timesteps", "50"],
             ("diffvae.diffusion.model", "DDPM"), 4),
}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = pack(load_data("digits"), tmp_path_factory.mktemp("pack") / "digits")
    return f"packed:{out}"


def _checkpoint(run) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(run / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if not k.startswith("rng/")} | {"rng": tensors["rng/torch"]}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_on_a_pack_is_bit_identical_to_the_source_and_resumes_exactly(case, packed, tmp_path, monkeypatch):
    import importlib

    flags, (module_name, class_name), interrupt_at = CASES[case]
    dataset = load_data(packed)
    assert shard_of(dataset.train) is not None  # the engine takes the loader path for it
    assert torch.equal(dataset.train, load_data("digits").train)
    source, on_pack, cut = tmp_path / "source", tmp_path / "packed", tmp_path / "cut"
    assert main(["train", *flags, "--data", "digits", *COMMON, "--out", str(source)]) == 0
    from diffvae.loader import LoaderSource

    read, real_batch = [], LoaderSource.batch
    monkeypatch.setattr(LoaderSource, "batch", lambda self, step: read.append(step) or real_batch(self, step))
    assert main(["train", *flags, "--data", packed, *COMMON, "--out", str(on_pack)]) == 0
    assert read == list(range(len(read))) and len(read) >= 5  # every batch came through the loader
    _assert_same(_checkpoint(source), _checkpoint(on_pack))

    cls = getattr(importlib.import_module(module_name), class_name)
    real_loss, calls = cls.training_loss, []

    def interrupted(self, x, *args, **kw):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real_loss(self, x, *args, **kw)

    monkeypatch.setattr(cls, "training_loss", interrupted)
    assert main(["train", *flags, "--data", packed, *COMMON, "--out", str(cut)]) == 130
    monkeypatch.setattr(cls, "training_loss", real_loss)
    assert load_tensors(cut / "checkpoint.safetensors")[1]["step"] < load_tensors(source / "checkpoint.safetensors")[1]["step"]
    torch.manual_seed(999)  # a restarted process starts from another RNG state
    assert main(["train", flags[0], "--out", str(cut), "--resume", "--quiet"]) == 0
    _assert_same(_checkpoint(on_pack), _checkpoint(cut))
