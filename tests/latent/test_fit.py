"""Latent diffusion's two-stage fit: ``--hflip`` is honoured in the diffusion stage too (issue 27)."""

from __future__ import annotations

import torch

from diffvae.api import DataConfig, train_run
from diffvae.latent.fit import MirroredMomentsSource
from diffvae.train import BatchSource

from latent.test_model import tiny_config, tiny_train


def test_mirrored_moments_follow_the_engines_image_flips():
    """With an encoder that commutes with mirroring (the identity on the pixels), the moments source must give
    exactly the engine's flipped image batches: same examples, same flips, same rank slices, every step."""
    images = torch.randint(0, 256, (30, 1, 4, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(30)
    for rank in (0, 1):
        engine = BatchSource(images, 8, seed=4, labels=labels, rank=rank, world=2, hflip=True)
        source = MirroredMomentsSource(images.float(), images.flip(-1).float(), 8, 4, labels, rank, 2, torch.device("cpu"))
        for step in range(12):
            (want, want_labels), (got, got_labels) = engine.batch(step), source.batch(step)
            assert torch.equal(got, want.float()) and torch.equal(got_labels, want_labels)
    flipped = [not torch.equal(source.batch(s)[0], BatchSource(images.float(), 8, 4, labels, 1, 2).batch(s)[0]) for s in range(12)]
    assert any(flipped)  # the draws do flip some examples


def test_hflip_reaches_the_diffusion_stage(tmp_path, monkeypatch):
    """Regression: stage 2 trained on the moments of unflipped images only (BatchSource never flips float inputs)."""
    import diffvae.latent.fit as fit_module  # the fit calls the engine's train through its own top-level import

    seen = []
    real_train = fit_module.train

    def spy(model, inputs, config, *args, **kwargs):
        seen.append((config.hflip, kwargs.get("source"), inputs))
        return real_train(model, inputs, config, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train", spy)
    model = train_run("ldm", DataConfig("digits", limit=64), tiny_config(), tiny_train(steps=4, hflip=True),
                      out=tmp_path / "run", progress=False)
    (ae_flip, ae_source, _), (flip, source, moments) = seen
    assert ae_flip and ae_source is None  # stage 1 trains on uint8 images: the engine flips them itself
    assert flip and isinstance(source, MirroredMomentsSource)
    from diffvae.data import load_data

    train = load_data("digits", limit=64).train
    with torch.no_grad():
        torch.testing.assert_close(source.mirrored, model.latent_moments(train.flip(-1)))
        torch.testing.assert_close(source.inputs, model.latent_moments(train))
