"""Early stopping (diffvae.holdout): the validation split, the best weights kept, exact resume, refusals."""

import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.holdout import VALIDATION_MAX, VALIDATION_MIN, BestWeights, validation_split
from diffvae.runs import RunDir
from diffvae.train import train
from test_train import ToyFamily, config, images


class ToyWithBound(ToyFamily):
    """The toy denoiser as a family model with a held-out bound (a deterministic function of its weights)
    that records every batch it was trained on."""

    family = "vae"  # its spec's bound_kwargs are the VAE's

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[torch.Tensor] = []

    def training_loss(self, x):
        self.seen.append(x.detach().clone())
        return super().training_loss(x)

    def bound(self, x, generator=None, **options):
        x = x.flatten(1).float() / 127.5 - 1
        return {"bpd": 1.0 + ((self.net(x) - x) ** 2).mean(dim=1)}


@pytest.mark.parametrize("n, count", [(4500, 450), (100, VALIDATION_MIN), (20000, VALIDATION_MAX)])
def test_the_validation_split_is_seeded_disjoint_and_sized(n, count):
    keep, held_out = validation_split(n, seed=0)
    assert len(held_out) == count and sorted(torch.cat([keep, held_out]).tolist()) == list(range(n))
    assert torch.equal(validation_split(n, 0)[1], held_out) and not torch.equal(validation_split(n, 1)[1], held_out)
    assert held_out.min() < n // 4 and held_out.max() > 3 * n // 4  # spread over the set, not its tail (class-ordered data)


def test_too_few_images_for_a_validation_split_are_refused():
    with pytest.raises(DiffvaeError, match="too few to train on the rest"):
        validation_split(2 * VALIDATION_MIN - 1, seed=0)


def test_the_run_ends_with_the_best_measured_weights_and_never_trains_on_them(tmp_path, monkeypatch):
    """The held-out curve turns up after step 20 (scripted): the run's EMA, its checkpoint and its final
    snapshot are the weights measured at step 20, not the last ones."""
    scripted, measured = iter([3.0, 2.0, 2.5, 4.0]), {}

    def bits_per_dim(self, ema):
        measured[len(measured)] = {k: v.clone() for k, v in ema.state_dict().items()}
        return next(scripted)

    monkeypatch.setattr(BestWeights, "bits_per_dim", bits_per_dim)
    run = RunDir.prepare(tmp_path / "run")
    run.write_config({"family": "vae"})
    data, model = images(96), ToyWithBound()
    ema, _ = train(model, data, config(steps=40, early_stop_every=10, snapshot_first_minutes=1e-6), run, progress=False)
    at_step_20, last = measured[1], measured[3]
    assert all(torch.equal(v, at_step_20[k]) for k, v in ema.state_dict().items())
    assert not all(torch.equal(v, last[k]) for k, v in ema.state_dict().items())
    tensors, meta = run.load_checkpoint()
    assert all(torch.equal(tensors[f"ema/{k}"], v) for k, v in at_step_20.items())
    assert meta["early_stopping"]["best_step"] == 20
    rows = [r for r in run.read_metrics() if "holdout_bpd" in r]
    assert [(r["step"], r["holdout_bpd"], r["best_step"], r["holdout_n"]) for r in rows] == \
        [(10, 3.0, 10, 16), (20, 2.0, 20, 16), (30, 2.5, 20, 16), (40, 4.0, 20, 16)]
    _, held_out = validation_split(96, seed=3)
    trained_on = {tuple(x.flatten().tolist()) for batch in model.seen for x in batch}
    assert trained_on and not trained_on & {tuple(x.flatten().tolist()) for x in data[held_out]}


def test_a_run_resumed_with_early_stopping_is_bit_identical(tmp_path):
    data = images()
    ref_run = RunDir.prepare(tmp_path / "ref")
    torch.manual_seed(0)
    ref, _ = train(ToyWithBound(), data, config(early_stop_every=10), ref_run, progress=False)
    run = RunDir.prepare(tmp_path / "cut")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(ToyWithBound(fail_at_step=25), data, config(early_stop_every=10), run, progress=False)
    torch.manual_seed(12345)
    resumed, _ = train(ToyWithBound(), data, config(early_stop_every=10), run, resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))
    ref_w, ref_meta = ref_run.load_checkpoint()
    cut_w, cut_meta = run.load_checkpoint()
    assert any(k.startswith("best_ema/") for k in ref_w)
    assert all(torch.equal(ref_w[k], cut_w[k]) for k in ref_w if not k.startswith("rng/"))
    assert ref_meta["early_stopping"] == cut_meta["early_stopping"]
    rows = lambda r: [(row["step"], row.get("holdout_bpd"), row.get("best_step")) for row in r.read_metrics()]  # noqa: E731
    assert rows(run) == rows(ref_run)


def test_early_stopping_needs_a_family_model_with_a_bound(tmp_path):
    with pytest.raises(DiffvaeError, match="needs a family model with a held-out bound"):
        train(ToyFamily(), images(), config(early_stop_every=10), progress=False)


@pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
def test_a_bad_early_stop_every_is_refused(value):
    with pytest.raises(DiffvaeError, match="--early-stop-every must be a whole number"):
        config(early_stop_every=value).validate()


def test_the_vae_stops_early_from_the_command_line(tmp_path):
    from diffvae.cli import main

    out = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--steps", "40", "--batch", "32", "--early-stop-every", "20",
                 "--out", str(out), "--quiet"]) == 0
    rows = [r for r in RunDir(out).read_metrics() if "holdout_bpd" in r]
    assert [r["step"] for r in rows] == [20, 40] and all(0 < r["holdout_bpd"] < 8 for r in rows)
    assert rows[0]["holdout_n"] == round(0.1 * RunDir(out).read_config()["data"]["train_size"])
