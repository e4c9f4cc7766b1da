"""The CLI end to end: train → sample (png, npz) → eval → interpolate → invert, for each family."""

import json

import numpy as np
import pytest
from PIL import Image

from diffvae.cli import main

TINY = {
    "vae": ["--width", "16", "--latent-dim", "4"],
    "ddpm": ["--channels", "16", "--channel-mult", "1,2", "--timesteps", "100", "--sample-steps", "4", "--invert-steps", "4"],
    "ldm": ["--channels", "16", "--channel-mult", "1", "--timesteps", "100", "--sample-steps", "4", "--invert-steps", "4"],
}


@pytest.mark.parametrize("data,family", [("digits", "vae"), ("digits", "ddpm"), ("mnist", "vae"), ("mnist", "ddpm")])
def test_train_sample_eval_interpolate_invert(tmp_path, capsys, feature_cache, data, family):
    run = tmp_path / "run"
    common = ["--steps", "6", "--batch", "16", "--quiet", "--limit", "200"]
    assert main(["train", family, "--data", data, "--out", str(run), *common, *TINY[family]]) == 0
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.safetensors"}
    size = 8 if data == "digits" else 28

    assert main(["sample", str(run), "--n", "6", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] >= 3 * size
    assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
    arr = np.load(tmp_path / "s.npz")["images"]
    assert arr.shape == (5, 1, size, size) and arr.dtype == np.uint8
    if family == "ddpm":
        assert main(["sample", str(run), "--n", "2", "--sampler", "ddpm", "--steps", "3", "--out", str(tmp_path / "d.png")]) == 0

    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--quick", "--n", "40"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == family and result["bpd"] > 0 and result["fid"] >= 0

    assert main(["interpolate", str(run), "--out", str(tmp_path / "i.png"), "--pairs", "2", "--frames", "4"]) == 0
    assert Image.open(tmp_path / "i.png").size[0] >= 4 * size
    capsys.readouterr()
    assert main(["invert", str(run), "--n", "3"]) == 0
    err = json.loads(capsys.readouterr().out)
    assert err["mse"] >= 0 and "psnr_db" in err


def test_data_info_and_help(capsys):
    assert main(["data", "info", "digits"]) == 0
    assert "1617 train / 180 test" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "compare" in capsys.readouterr().out


def test_resume_continues_a_finished_run_without_retraining(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--out", str(run), "--steps", "5", "--quiet", *TINY["vae"]]) == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    assert main(["train", "vae", "--out", str(run), "--resume", "--quiet"]) == 0
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_a_subcommand_is_one_registration(monkeypatch, tmp_path, capsys):
    """A command in its own module (add_arguments + run) joins the CLI with one Subcommand line."""
    import sys
    import types

    from diffvae import cli

    module = types.ModuleType("diffvae_test_hello_command")
    module.add_arguments = lambda parser: parser.add_argument("--name", required=True)
    module.run = lambda args: print(f"hello {args.name}") or 0
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, cli.Subcommand("hello", "say hello", module=module.__name__)])
    monkeypatch.setattr(cli, "DATA_SUBCOMMANDS", [*cli.DATA_SUBCOMMANDS, cli.Subcommand("hello", "data hello", module=module.__name__)])
    assert main(["hello", "--name", "x"]) == 0
    assert main(["data", "hello", "--name", "y"]) == 0
    assert capsys.readouterr().out.splitlines() == ["hello x", "hello y"]
    assert main(["hello"]) == 2  # its own flags are checked like every command's
    assert "the following arguments are required: --name" in capsys.readouterr().err


def test_a_name_the_file_system_refuses_is_one_line(tmp_path, capsys):
    """Regression (issue 27, hostile pass): a 300-character --out name was an internal error (ENAMETOOLONG)."""
    for argv in (["train", "vae", "--data", "digits", "--steps", "2", "--out", str(tmp_path / ("x" * 300))],
                 ["data", "info", f"npz:{tmp_path / ('y' * 300)}.npz"]):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("diffvae: error: ") and "File name too long" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_invert_writes_its_image_before_it_prints_the_figures(tmp_path, capsys, monkeypatch):
    """Regression (issue 27, hostile pass): on a full disk invert printed its figures on stdout, then failed."""
    import errno
    import os

    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--steps", "2", "--width", "16", "--latent-dim", "4", "--quiet",
                 "--out", str(run)]) == 0
    capsys.readouterr()

    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    assert main(["invert", str(run), "--n", "3", "--out", str(tmp_path / "inv.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "No space left on device" in captured.err


def test_ctrl_c_while_the_modules_load_is_one_line(tmp_path):
    """Regression (issue 27, hostile pass): Ctrl-C in the first seconds of ``python -m diffvae`` (torch loading) printed
    a traceback. The interrupt is raised where diffvae.cli is imported, as a real one would be."""
    import subprocess
    import sys

    code = ("import runpy, sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'diffvae.cli':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['diffvae', 'data', 'info', 'digits']\n"
            "runpy.run_module('diffvae', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 130 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["diffvae: interrupted; nothing was written (outputs are written whole or not at all)"]
