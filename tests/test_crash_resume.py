"""Crash safety of a real ``diffvae train`` process: SIGKILL then ``--resume`` ends bit-identical to an
uninterrupted run; a kill at any moment leaves a run that loads or says in one line that it has no
checkpoint yet; a NaN/Inf loss stops with one line and keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffvae.api import load
from diffvae.cli import main
from diffvae.errors import DiffvaeError
from diffvae.runs import RunDir

SMALL_VAE = ["--data", "digits", "--batch", "32", "--width", "32", "--latent-dim", "4", "--precision", "fp32",
             "--device", "cpu", "--seed", "5", "--quiet"]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "diffvae", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, stderr


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path.name} appeared: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_sigkill_then_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    ref_path, cut_path = tmp_path / "ref", tmp_path / "cut"
    train_args = [*SMALL_VAE, "--checkpoint-every", "20", "--log-every", "10", "--steps", "200"]
    victim = start(["train", "vae", *train_args, "--out", str(cut_path)])
    wait_for(cut_path / "checkpoint.safetensors", victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    killed_at = RunDir(cut_path).load_checkpoint()[1]["step"]
    assert 20 <= killed_at < 200  # it really was cut short

    resumed = start(["train", "vae", "--out", str(cut_path), "--resume", "--quiet"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1), so the float sums agree
    try:
        assert main(["train", "vae", *train_args, "--out", str(ref_path)]) == 0  # the uninterrupted run, meanwhile
    finally:
        torch.set_num_threads(threads)
    rc, stderr = finish(resumed)
    assert rc == 0, stderr

    ref, ref_meta = RunDir(ref_path).load_checkpoint()
    got, got_meta = RunDir(cut_path).load_checkpoint()
    assert ref_meta["step"] == got_meta["step"] == 200
    compared = [k for k in ref if k.startswith(("model/", "ema/", "optimizer/"))]
    assert any(k.startswith("optimizer/") for k in compared) and any(k.startswith("ema/") for k in compared)
    assert set(got) == set(ref)
    for key in compared:
        assert torch.equal(ref[key], got[key]), key
    assert ref_meta["optimizer_param_groups"] == got_meta["optimizer_param_groups"]
    ref_rows, got_rows = RunDir(ref_path).read_metrics(), RunDir(cut_path).read_metrics()
    assert [r["step"] for r in got_rows] == [r["step"] for r in ref_rows] == list(range(10, 201, 10))
    assert [r["loss"] for r in got_rows] == [r["loss"] for r in ref_rows]


def test_a_kill_at_any_moment_leaves_a_loadable_run_or_one_clear_line(tmp_path, capsys):
    """Runs checkpointing every step, SIGKILLed at random moments: one right after it starts (before
    anything is written, typically), the others a random delay after their config.json appears
    (before, during or between checkpoint writes)."""
    rng = random.Random(0)
    paths = [tmp_path / f"run{i}" for i in range(3)]
    procs = [start(["train", "vae", *SMALL_VAE, "--checkpoint-every", "1", "--steps", "5000", "--out", str(p)]) for p in paths]
    try:
        time.sleep(rng.uniform(0.1, 1.0))
        procs[0].send_signal(signal.SIGKILL)
        for proc, path in zip(procs[1:], paths[1:]):
            wait_for(path / "config.json", proc)
            time.sleep(rng.uniform(1.0, 4.0))
            proc.send_signal(signal.SIGKILL)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()

    outcomes = []
    for path in paths:
        capsys.readouterr()
        rc = main(["sample", str(path), "--n", "4", "--out", str(tmp_path / f"{path.name}.png")])
        err = capsys.readouterr().err.strip().splitlines()
        if rc == 0:
            model = load(path)
            assert model.trained_steps >= 1
            assert all(torch.isfinite(p).all() for p in model.parameters())
            outcomes.append("loads")
        else:
            assert rc == 2 and len(err) == 1, err
            assert err[0].startswith("diffvae: error:") and "corrupt" not in err[0], err[0]
            assert ("no checkpoint yet" in err[0] or "not a diffvae run" in err[0] or "not found" in err[0]), err[0]
            outcomes.append("no checkpoint")
    assert "loads" in outcomes, outcomes  # the test did kill runs that had checkpoints


def test_nan_loss_from_the_cli_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from diffvae.vae.model import VAE

    real_loss = VAE.training_loss

    def poisoned(self, x):
        loss, logs = real_loss(self, x)
        return (loss * float("nan") if self.step >= 25 else loss), logs

    monkeypatch.setattr(VAE, "training_loss", poisoned)
    out = tmp_path / "run"
    rc = main(["train", "vae", *SMALL_VAE, "--steps", "40", "--checkpoint-every", "10", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("diffvae: error: the loss became NaN/Inf at step 25") and "last good checkpoint" in err[0]
    assert RunDir(out).load_checkpoint()[1]["step"] == 20
    model = load(out)
    assert model.trained_steps == 20 and all(torch.isfinite(p).all() for p in model.parameters())

    monkeypatch.setattr(VAE, "training_loss", real_loss)  # the cause is gone: the kept checkpoint resumes
    assert main(["train", "vae", "--out", str(out), "--resume", "--quiet"]) == 0
    assert RunDir(out).load_checkpoint()[1]["step"] == 40


def test_an_exploding_learning_rate_stops_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "vae", *SMALL_VAE, "--steps", "50", "--checkpoint-every", "20", "--lr", "100", "--out", str(out)])  # the top of --lr's range
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("diffvae: error:") and "NaN/Inf" in err[0] and "lower --lr" in err[0]
    with pytest.raises(DiffvaeError, match="no checkpoint yet"):
        RunDir(out).load_checkpoint()  # it blew up before the first checkpoint was due: nothing half-good was written


def test_atomic_writes_give_files_the_usual_permissions(tmp_path):
    """Temporary files are created 0600; the renamed result must have the mode open() would give."""
    from diffvae.runs import atomic_write_bytes

    mask = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        with open(tmp_path / "b.json", "wb") as f:
            f.write(b"{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


TINY_DIFFUSION = ["--data", "digits", "--channels", "8", "--channel-mult", "1", "--timesteps", "50", "--batch", "16",
                  "--precision", "fp32", "--device", "cpu", "--seed", "2", "--quiet", "--checkpoint-every", "2",
                  "--log-every", "1"]
FAMILY_CASES = {  # family, extra flags, (module, class) whose training_loss is interrupted, at which call
    "ddpm": ("ddpm", ["--steps", "6"], ("diffvae.diffusion.model", "DDPM"), 5),
    "ldm-autoencoder-stage": ("ldm", ["--steps", "8", "--ae-steps", "3", "--ae-width", "8", "--latent-channels", "2",
                                      "--downsample", "2"], ("diffvae.latent.autoencoder", "AutoencoderKL"), 3),
    "ldm-autoencoder-stage-before-its-first-checkpoint": (
        "ldm", ["--steps", "8", "--ae-steps", "3", "--ae-width", "8", "--latent-channels", "2", "--downsample", "2"],
        ("diffvae.latent.autoencoder", "AutoencoderKL"), 2),
    "ldm-diffusion-stage-before-its-first-checkpoint": (
        "ldm", ["--steps", "8", "--ae-steps", "3", "--ae-width", "8", "--latent-channels", "2", "--downsample", "2"],
        ("diffvae.latent.model", "LatentDiffusion"), 2),
    "ldm-diffusion-stage": ("ldm", ["--steps", "8", "--ae-steps", "3", "--ae-width", "8", "--latent-channels", "2",
                                    "--downsample", "2"], ("diffvae.latent.model", "LatentDiffusion"), 4),
}


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_diffusion_families_resume_bit_identical_after_an_interruption(case, tmp_path, capsys, monkeypatch):
    """In-process (an interrupt raised inside the loss) for every family and stage: every file of the
    resumed run — checkpoints of both ldm stages, config.json with its latent scale — matches."""
    import importlib

    from diffvae.runs import load_tensors

    family, flags, (module_name, class_name), interrupt_at = FAMILY_CASES[case]
    cls = getattr(importlib.import_module(module_name), class_name)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(["train", family, *TINY_DIFFUSION, *flags, "--out", str(ref)]) == 0

    real_loss, calls = cls.training_loss, []

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real_loss(self, x)

    monkeypatch.setattr(cls, "training_loss", interrupted)
    assert main(["train", family, *TINY_DIFFUSION, *flags, "--out", str(cut)]) == 130
    monkeypatch.setattr(cls, "training_loss", real_loss)
    torch.manual_seed(999)  # a restarted process starts from another RNG state
    assert main(["train", family, "--out", str(cut), "--resume", "--quiet"]) == 0

    files = sorted(p.name for p in ref.iterdir())
    assert files == sorted(p.name for p in cut.iterdir())
    assert (ref / "config.json").read_text() == (cut / "config.json").read_text()
    for name in files:
        if name.endswith(".safetensors"):
            a, a_meta = load_tensors(ref / name)
            b, b_meta = load_tensors(cut / name)
            assert a.keys() == b.keys() and a_meta["step"] == b_meta["step"], name
            for key in a:
                assert torch.equal(a[key], b[key]), (name, key)
        elif name.endswith(".jsonl"):
            steps = [[json.loads(line)["step"] for line in (p / name).read_text().splitlines()] for p in (ref, cut)]
            assert steps[0] == steps[1] and len(steps[0]) > 0, name
