"""The training monitor (diffvae.monitor): sample grids and cheap eval rows at the asked steps, TensorBoard
event files that tensorboard's own reader parses, ``diffvae plot`` — and all of it through kill -9 and
``--resume``, without disturbing exact resumption."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from diffvae.cli import main
from diffvae.runs import RunDir

from test_crash_resume import SMALL_VAE, finish, start, wait_for

STEPS, SAMPLE_EVERY, EVAL_EVERY = 120, 20, 30
PLAIN = ["--checkpoint-every", "20", "--log-every", "10", "--steps", str(STEPS)]
MONITOR = [*PLAIN, "--sample-every", str(SAMPLE_EVERY), "--eval-every", str(EVAL_EVERY)]


def _eval_rows(run):
    return [r for r in RunDir(run).read_metrics() if "eval_bpd" in r]


def _weights(run):
    tensors, _ = RunDir(run).load_checkpoint()
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "ema/"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, feature_cache):
    """An uninterrupted monitored run and an unmonitored one, same seed."""
    root = tmp_path_factory.mktemp("monitor")
    assert main(["train", "vae", *SMALL_VAE, *MONITOR, "--out", str(root / "watched")]) == 0
    assert main(["train", "vae", *SMALL_VAE, *PLAIN, "--out", str(root / "plain")]) == 0
    return root


def test_grids_and_eval_rows_at_the_asked_steps(reference):
    run = reference / "watched"
    asked = list(range(SAMPLE_EVERY, STEPS + 1, SAMPLE_EVERY))
    assert sorted(int(p.stem.split("_")[1]) for p in (run / "samples").glob("step_*.png")) == asked
    from PIL import Image

    grid = Image.open(run / "samples" / f"step_{STEPS}.png")
    assert grid.size == (4 * 8 + 5, 4 * 8 + 5)  # 16 digits of 8×8 in a 4×4 grid, 1-pixel gaps
    rows = _eval_rows(run)
    assert [r["step"] for r in rows] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert all(r["eval_n"] == 64 and r["eval_fid"] > 0 and 0 <= r["eval_precision"] <= 1 for r in rows)
    assert rows[-1]["eval_bpd"] < rows[0]["eval_bpd"]  # training lowers the held-out bound
    # the last row of the log is still the training row (compare and others read its loss)
    assert "loss" in RunDir(run).read_metrics()[-1]


def test_the_eval_row_is_the_family_bound_of_the_ema_weights(reference):
    """Independent check of one row: the run's EMA weights, the VAE's bound on the first 64 held-out images."""
    from diffvae.api import load, run_data

    model = load(reference / "watched")
    x = run_data(model).test[:64]
    with torch.no_grad():
        bpd = float(model.bound(x, generator=torch.Generator().manual_seed(5), iwae_samples=0)["bpd"].mean())
    assert _eval_rows(reference / "watched")[-1]["eval_bpd"] == pytest.approx(bpd, rel=1e-5)


def test_monitoring_does_not_change_training(reference):
    watched, plain = _weights(reference / "watched"), _weights(reference / "plain")
    assert watched.keys() == plain.keys()
    assert all(torch.equal(watched[k], plain[k]) for k in watched)


def test_kill_then_resume_keeps_one_grid_and_one_row_per_asked_step(reference, tmp_path, feature_cache):
    tensorboard = pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "cut"
    args = ["train", "vae", *SMALL_VAE, *MONITOR, "--tensorboard", "--out", str(run)]
    victim = start(args)
    wait_for(run / "checkpoint.safetensors", victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    killed_at = RunDir(run).load_checkpoint()[1]["step"]
    assert killed_at < STEPS
    code, stderr = finish(start([*args, "--resume"]))
    assert code == 0, stderr
    assert all(torch.equal(a, b) for a, b in zip(_weights(run).values(), _weights(reference / "watched").values()))
    assert _eval_rows(run) == _eval_rows(reference / "watched")  # same steps, once each, same figures
    for grid in (reference / "watched" / "samples").iterdir():
        assert (run / "samples" / grid.name).read_bytes() == grid.read_bytes()
    assert len(list((run / "samples").iterdir())) == STEPS // SAMPLE_EVERY
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("eval/bpd")] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert [e.value for e in events.Scalars("eval/bpd")] == pytest.approx([r["eval_bpd"] for r in _eval_rows(run)])
    loss_rows = [r for r in RunDir(run).read_metrics() if "loss" in r]
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in loss_rows]
    assert [e.step for e in events.Images("samples")] == list(range(SAMPLE_EVERY, STEPS + 1, SAMPLE_EVERY))
    assert tensorboard.__version__  # the reader that parsed them


def test_missing_tensorboard_is_one_line_before_the_run_is_written(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["train", "vae", *SMALL_VAE, "--steps", "2", "--tensorboard", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'diffvae[tensorboard]'" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_plot_draws_the_loss_and_eval_curves(reference, tmp_path, capsys):
    from PIL import Image

    from diffvae.commands.plot import read_curves

    curves = read_curves(reference / "watched")
    assert [s for s, _ in curves["loss"]["loss"]] == list(range(10, STEPS + 1, 10))
    assert [v for _, v in curves["eval"]["eval_bpd"]] == [r["eval_bpd"] for r in _eval_rows(reference / "watched")]
    assert main(["plot", str(reference / "watched"), "--out", str(tmp_path / "c.png")]) == 0
    wide = Image.open(tmp_path / "c.png")
    assert main(["plot", str(reference / "plain"), "--out", str(tmp_path / "p.png")]) == 0
    assert wide.size[0] > Image.open(tmp_path / "p.png").size[0]  # the eval panels are there only with eval rows
    assert main(["plot", str(reference / "plain"), "--out", str(tmp_path / "p.png")]) == 2  # exists: --force
    assert main(["plot", str(reference / "plain"), "--out", str(reference / "plain" / "x.png")]) == 2  # inside a run
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "m.png")]) == 2
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("flag, value", [("--sample-every", "-1"), ("--eval-every", "x")])
def test_bad_monitor_flags_are_one_line(tmp_path, capsys, flag, value):
    assert main(["train", "vae", *SMALL_VAE, "--steps", "2", flag, value, "--out", str(tmp_path / "r")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    assert not (tmp_path / "r").exists()


def test_hflip_flips_the_global_batch_before_the_rank_slice():
    from diffvae.colour import hflip, hflip_generator
    from diffvae.train import BatchSource, batch_indices

    images = torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8)
    whole = BatchSource(images, 16, seed=3, hflip=True)
    halves = [BatchSource(images, 16, seed=3, rank=r, world=2, hflip=True) for r in (0, 1)]
    for step in range(5):
        expected = hflip(images[batch_indices(step, 50, 16, 3)], 0.5, hflip_generator(3, step))
        assert torch.equal(whole.batch(step)[0], expected)
        assert torch.equal(torch.cat([h.batch(step)[0] for h in halves]), expected)
    flipped = sum(int(not torch.equal(whole.batch(s)[0], BatchSource(images, 16, 3).batch(s)[0])) for s in range(5))
    assert flipped == 5  # with 16 images a batch, some image is flipped in every step
    moments = torch.randn(50, 4, 2, 2)  # a latent stage's inputs are never flipped
    assert torch.equal(BatchSource(moments, 16, 3, hflip=True).batch(1)[0], BatchSource(moments, 16, 3).batch(1)[0])


def test_hflip_is_a_train_flag_stored_in_the_run(tmp_path):
    assert main(["train", "vae", *SMALL_VAE, "--steps", "2", "--hflip", "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["hflip"] is True


def test_eval_every_with_a_cold_feature_cache_trains_the_feature_network(tmp_path, monkeypatch):
    """Regression (issue 27): the first eval row trained the data's feature network inside the monitor's
    inference mode ("element 0 of tensors does not require grad"). A cold cache now trains it first."""
    import diffvae.metrics.features as features

    cold = tmp_path / "cold-cache"
    monkeypatch.setenv("DIFFVAE_CACHE", str(cold))
    real = features.get_feature_extractor
    monkeypatch.setattr(features, "get_feature_extractor", lambda dataset, *a, **kw: real(dataset, *a, **{**kw, "steps": 3}))
    args = ["--checkpoint-every", "4", "--log-every", "2", "--steps", "4", "--eval-every", "4"]
    assert main(["train", "vae", *SMALL_VAE, *args, "--out", str(tmp_path / "run")]) == 0
    rows = _eval_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [4] and rows[0]["eval_fid"] > 0
    assert list((cold / "features").glob("*.safetensors"))  # it trained and cached the network


@pytest.mark.parametrize("cache", ["a-file", "a-file/below"])
def test_eval_every_with_a_cache_it_cannot_write_is_refused_before_the_run_exists(tmp_path, monkeypatch, capsys, cache):
    """Regression (issue 27, hostile pass): the cold cache was met at the first eval row, after the run folder (config.json,
    mark) had been created, and the folder was left behind."""
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("DIFFVAE_CACHE", str(tmp_path / cache))
    run = tmp_path / "run"
    assert main(["train", "vae", *SMALL_VAE, "--steps", "2", "--eval-every", "1", "--out", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "feature cache folder" in lines[0] and "DIFFVAE_CACHE" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
