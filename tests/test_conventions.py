"""Conventions users bring from other libraries (issue 18): diffusers' names as aliases, ``--device auto``
everywhere, ``mps``, ``--config FILE.json|toml``, ``--precision fp16`` with loss scaling (CUDA)."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from diffvae.cli import build_parser, main, with_config_file
from diffvae.errors import DiffvaeError
from diffvae.families import FAMILIES
from diffvae.runs import RunDir

TINY = ["--data", "digits", "--steps", "2", "--batch", "16", "--precision", "fp32", "--device", "cpu", "--quiet"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _families_with(field: str) -> list[str]:
    """The registered families whose config has ``field`` (never named here: the contract)."""
    return [name for name, fam in FAMILIES.items() if field in {f.name for f in dataclasses.fields(fam.load()[0])}]


# ----------------------------------------------------------------------------- diffusers' names

@pytest.mark.parametrize("family", _families_with("prediction"))
@pytest.mark.parametrize("alias, canonical", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0"), ("v", "v")])
def test_prediction_aliases_are_stored_canonically(family, alias, canonical):
    config_class, _ = FAMILIES[family].load()
    config = config_class(prediction=alias)
    assert config.prediction == canonical
    assert config_class(**json.loads(json.dumps(dataclasses.asdict(config)))).prediction == canonical


@pytest.mark.parametrize("T", [50, 1000])
def test_squaredcos_cap_v2_is_exactly_the_cosine_schedule(T):
    """The alias maps only because the schedules agree: diffusers' own ᾱ table is the oracle."""
    diffusers = pytest.importorskip("diffusers")
    from diffvae.diffusion.schedule import NoiseSchedule

    for family in _families_with("schedule"):
        config = FAMILIES[family].load()[0](schedule="squaredcos_cap_v2", timesteps=T)
        assert config.schedule == "cosine"
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    ours = NoiseSchedule.from_name("cosine", T).alphas_cumprod
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    scaled = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear").alphas_cumprod.double()
    assert not torch.allclose(NoiseSchedule.from_name("linear", T).alphas_cumprod, scaled, atol=1e-3)  # no exact twin


@pytest.mark.parametrize("family", _families_with("schedule"))
def test_schedules_without_an_exact_twin_are_refused(family):
    config_class, _ = FAMILIES[family].load()
    with pytest.raises(DiffvaeError, match="linear or cosine") as caught:
        config_class(schedule="scaled_linear")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("family", _families_with("timesteps"))
def test_diffusers_flag_names_reach_the_run_config(family, tmp_path):
    out = tmp_path / "run"
    args = ["train", family, *TINY, "--num-train-timesteps", "20", "--prediction", "v_prediction",
            "--schedule", "squaredcos_cap_v2", "--out", str(out)]
    assert main(args) == 0
    model = json.loads((out / "config.json").read_text())["model"]
    assert (model["timesteps"], model["prediction"], model["schedule"]) == (20, "v", "cosine")


# ----------------------------------------------------------------------------- devices

@pytest.mark.parametrize("command", ["sample", "eval", "interpolate", "invert", "score"])
def test_device_defaults_to_auto_everywhere(command):
    extra = {"sample": ["--out", "x.png"], "interpolate": ["--out", "x.png"]}.get(command, [])
    args = build_parser().parse_args([command, "RUN", *extra])
    assert args.device == "auto"


def test_auto_resolves_to_the_best_device_here():
    from diffvae.train import resolve_device

    mps = getattr(torch.backends, "mps", None)
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps is not None and mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_mps_is_a_device_choice_with_a_clear_error_where_it_is_missing(tmp_path, capsys):
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has MPS")
    args = ["train", "vae", *TINY[:-3], "--device", "mps", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--device mps" in err and "not available" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_fp16_is_refused_on_cpu_in_one_line(tmp_path, capsys):
    args = ["train", "vae", "--data", "digits", "--steps", "2", "--precision", "fp16", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "fp16" in err and "CUDA" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


@CUDA
def test_fp16_with_loss_scaling_resumes_exactly_on_cuda(tmp_path, monkeypatch):
    """An fp16 run interrupted at step 15 and resumed from its step-10 checkpoint ends where the
    uninterrupted run ends: weights and the GradScaler's scale (kept in the checkpoint)."""
    from diffvae.api import DataConfig, train_run
    from diffvae.train import TrainConfig

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    config = dict(steps=20, batch_size=32, checkpoint_every=10, precision="fp16", device="cuda", seed=1)
    train_run("vae", DataConfig("digits"), None, TrainConfig(**config), out=tmp_path / "whole", progress=False)
    from diffvae.vae.model import VAE  # the interruption needs a hook in one model class

    original = getattr(VAE, "set_step", None)

    def stop_at_15(self, step):
        if step == 15:
            raise KeyboardInterrupt
        if original is not None:
            original(self, step)

    monkeypatch.setattr(VAE, "set_step", stop_at_15, raising=False)
    with pytest.raises(KeyboardInterrupt):
        train_run("vae", DataConfig("digits"), None, TrainConfig(**config), out=tmp_path / "cut", progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    assert RunDir(tmp_path / "cut").load_checkpoint()[1]["step"] == 10
    train_run("vae", None, out=tmp_path / "cut", resume=True, progress=False)
    (whole, meta_whole), (cut, meta_cut) = (RunDir(tmp_path / n).load_checkpoint() for n in ("whole", "cut"))
    assert meta_whole["grad_scaler"] == meta_cut["grad_scaler"] and meta_cut["grad_scaler"]["scale"] > 0  # incl. growth tracker
    assert all(torch.equal(whole[k], cut[k]) for k in whole if k.startswith(("model/", "ema/")))


@CUDA
def test_cuda_sampling_defaults_to_the_gpu(tmp_path):
    assert main(["train", "vae", *TINY[:-3], "--device", "cuda", "--out", str(tmp_path / "r")]) == 0
    assert main(["sample", str(tmp_path / "r"), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 0  # --device auto


# ----------------------------------------------------------------------------- --config FILE

def _parse(argv):
    return build_parser().parse_args(with_config_file(argv))


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_config_file_values_and_command_line_overrides(tmp_path, suffix):
    values = {"data": "digits", "steps": 30, "batch": 16, "lr": 0.002, "channel_mult": [1, 2], "hflip": True,
              "prediction": "epsilon", "num_train_timesteps": 40, "warmup_steps": 5}
    path = tmp_path / f"c{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("\n".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in values.items()))
    for family in _families_with("timesteps"):
        args = _parse(["train", family, "--config", str(path), "--out", "R", "--lr", "0.01", "--no-hflip", "--budget", "2"])
        assert (args.data, args.train__batch_size, args.train__lr, args.train__hflip) == ("digits", 16, 0.01, False)
        assert args.train__steps is None and args.train__budget_minutes == 2.0  # --budget on the command line replaces steps
        assert (args.model__channel_mult, args.model__prediction, args.model__timesteps) == ((1, 2), "epsilon", 40)
        assert args.train__warmup_steps == 5


def test_config_file_trains_and_stores_canonical_values(tmp_path):
    family = _families_with("prediction")[0]
    path = tmp_path / "c.toml"
    path.write_text('data = "digits"\nsteps = 2\nbatch_size = 16\nprecision = "fp32"\ndevice = "cpu"\n'
                    'prediction = "v_prediction"\ntimesteps = 20\nchannels = 16\nquiet = true\n')
    assert main(["train", family, "--config", str(path), "--out", str(tmp_path / "r"), "--steps", "3"]) == 0
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["train"]["steps"] == 3 and stored["train"]["batch_size"] == 16 and stored["model"]["prediction"] == "v"


def test_compare_reads_a_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": "digits", "budget": 2, "families": ",".join(FAMILIES), "seed": 3,
                                "device": "cpu", "quiet": True}))
    args = _parse(["compare", "--config", str(path), "--out", "O", "--seed", "4"])
    assert (args.data, args.budget, args.families, args.seed, args.device, args.quiet) == \
        ("digits", 2.0, ",".join(FAMILIES), 4, "cpu", True)


@pytest.mark.parametrize("text, suffix, message", [
    ('{"data": "digits", "lerning_rate": 1}', ".json", "unknown key 'lerning_rate'"),
    ('{"data": "digits", "config": "x.json"}', ".json", "unknown key 'config'"),
    ("data = ", ".toml", "not valid TOML"),
    ("[1, 2]", ".json", "one table"),
    ('{"quiet": 1}', ".json", "true or false"),
    ("data: digits", ".yaml", ".json or .toml"),
    ('{"data": "digits", "out": "a\\u0000b"}', ".json", "holds a NUL character"),  # issue 27 hostile pass: internal error
    ('data = "npz:x\\u0000.npz"', ".toml", "holds a NUL character"),
])
def test_bad_config_files_are_one_line_and_write_nothing(tmp_path, capsys, text, suffix, message):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    for argv in (["train", "vae", "--config", str(path), "--out", str(tmp_path / "r"), "--steps", "2"],
                 ["compare", "--config", str(path), "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["train", "vae", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read --config" in capsys.readouterr().err
    with pytest.raises(DiffvaeError, match="expected one argument"):
        with_config_file(["train", "vae", "--config"])


def test_flags_without_config_are_untouched():
    argv = ["train", "vae", "--data", "digits", "--steps", "3", "--out", "R"]
    assert with_config_file(argv) == argv and with_config_file(["sample", "--config"]) == ["sample", "--config"]
    assert isinstance(_parse(argv), argparse.Namespace)
