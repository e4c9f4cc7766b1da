"""Issue 14: one writer per run, signals and pipes, ``--resume`` with the original command, the
environment of a launcher, 16-bit images and the public names the README shows.

Subprocesses are waited for by polling the files they write (a checkpoint, the run's lock file),
never by a tight wall-clock limit; their timeouts are generous backstops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffvae.cli import main
from diffvae.errors import DiffvaeError
from diffvae.runs import LOCK, RunDir, WriterLock

SMALL_VAE = ["--data", "digits", "--batch", "32", "--width", "32", "--latent-dim", "4", "--precision", "fp32",
             "--device", "cpu", "--seed", "5", "--quiet"]
BACKSTOP_S = 600  # a hung child fails the test after this long; typical runs take seconds


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DIFFVAE_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "diffvae", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_interrupt)


def _default_interrupt() -> None:
    """The child's SIGINT back to the default: a test suite started in the background (``pytest &``) runs with
    SIGINT ignored, which children inherit — and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + BACKSTOP_S
    while not condition():
        assert proc.poll() is None, f"the process ended before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.02)


def interrupted_run(path: Path, steps: int, at_step_call: int, monkeypatch, extra: list[str] = ()) -> None:
    """Train in-process and interrupt it at the ``at_step_call``-th loss evaluation (checkpoints every 20)."""
    from diffvae.vae.model import VAE

    real, calls = VAE.training_loss, []

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == at_step_call:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(VAE, "training_loss", interrupted)
    argv = ["train", "vae", *SMALL_VAE, *extra, "--steps", str(steps), "--checkpoint-every", "20", "--log-every", "10",
            "--out", str(path)]
    assert main(argv) == 130
    monkeypatch.setattr(VAE, "training_loss", real)


def test_the_writer_lock_refuses_a_second_writer_naming_the_first(tmp_path):
    first = WriterLock.acquire(tmp_path)
    assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
    with pytest.raises(DiffvaeError, match=f"another diffvae process \\(PID {os.getpid()}\\)"):
        WriterLock.acquire(tmp_path)
    first.release()
    assert not (tmp_path / LOCK).exists()  # a finished writer leaves the folder as it found it
    WriterLock.acquire(tmp_path).release()  # and the next one gets the lock


def test_two_concurrent_resumes_one_is_refused_and_no_step_is_logged_twice(tmp_path, monkeypatch):
    run = tmp_path / "run"
    # a run that cannot finish before the signal however fast the machine (a VAE step takes ~3 ms: 100,000 steps
    # once ended before a loaded CI machine refused the second process), checkpoint at 20
    interrupted_run(run, steps=10**9, at_step_call=25, monkeypatch=monkeypatch)
    first = start(["train", "vae", "--resume", "--out", str(run)])
    try:
        wait_until(lambda: (run / LOCK).is_file() and (run / LOCK).read_text().strip() == str(first.pid), first,
                   "the first --resume took the lock")
        second = start(["train", "vae", "--resume", "--out", str(run)])
        _, err = second.communicate(timeout=BACKSTOP_S)
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("diffvae: error: ") and f"PID {first.pid}" in lines[0], err
        wait_until(lambda: RunDir(run).load_checkpoint()[1]["step"] >= 60, first, "the first --resume checkpointed")
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=BACKSTOP_S)
    assert first.returncode == 130, err
    steps = [row["step"] for row in RunDir(run).read_metrics()]
    assert len(steps) == len(set(steps)) and steps == sorted(steps) and steps[:2] == [10, 20], steps
    assert not (run / LOCK).exists()


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_closes_the_bar_prints_one_line_of_its_own_and_keeps_the_checkpoint(sig, code, word, tmp_path):
    out = tmp_path / "run"
    args = [a for a in SMALL_VAE if a != "--quiet"]  # with the progress bar
    proc = start(["train", "vae", *args, "--steps", str(10**9), "--checkpoint-every", "20", "--out", str(out)])
    wait_until((out / "checkpoint.safetensors").exists, proc, "the first checkpoint appeared")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=BACKSTOP_S)
    assert proc.returncode == code, err
    last = err.rstrip("\n").split("\n")[-1]  # the bar redraws with \r; our line must start a line of its own
    assert last.startswith(f"diffvae: {word};") and "\r" not in last and "Traceback" not in err, repr(err[-500:])
    assert sum(line.startswith("diffvae:") for line in err.split("\n")) == 1
    assert RunDir(out).load_checkpoint()[1]["step"] >= 20
    assert not (out / LOCK).exists()


def test_sigint_then_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    ref_path, cut_path = tmp_path / "ref", tmp_path / "cut"
    train_args = [*SMALL_VAE, "--checkpoint-every", "20", "--log-every", "10", "--steps", "400"]
    victim = start(["train", "vae", *train_args, "--out", str(cut_path)])
    wait_until((cut_path / "checkpoint.safetensors").exists, victim, "the first checkpoint appeared")
    victim.send_signal(signal.SIGINT)
    _, err = victim.communicate(timeout=BACKSTOP_S)
    assert victim.returncode == 130, err
    assert 20 <= RunDir(cut_path).load_checkpoint()[1]["step"] < 400  # it really was cut short

    resumed = start(["train", "vae", *train_args, "--out", str(cut_path), "--resume"])  # the original command + --resume
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1), so the float sums agree
    try:
        assert main(["train", "vae", *train_args, "--out", str(ref_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    _, err = resumed.communicate(timeout=BACKSTOP_S)
    assert resumed.returncode == 0, err

    ref, ref_meta = RunDir(ref_path).load_checkpoint()
    got, got_meta = RunDir(cut_path).load_checkpoint()
    assert ref_meta["step"] == got_meta["step"] == 400 and set(ref) == set(got)
    for key in ref:
        if key.startswith(("model/", "ema/", "optimizer/")):
            assert torch.equal(ref[key], got[key]), key
    ref_rows, got_rows = RunDir(ref_path).read_metrics(), RunDir(cut_path).read_metrics()
    assert [r["step"] for r in got_rows] == [r["step"] for r in ref_rows] == list(range(10, 401, 10))
    assert [r["loss"] for r in got_rows] == [r["loss"] for r in ref_rows]


def test_resume_accepts_the_original_command(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    interrupted_run(run, steps=40, at_step_call=25, monkeypatch=monkeypatch, extra=["--lr", "0.002"])
    argv = ["train", "vae", *SMALL_VAE, "--lr", "0.002", "--steps", "40", "--checkpoint-every", "20", "--log-every", "10",
            "--out", str(run), "--resume"]
    assert main(argv) == 0, capsys.readouterr().err
    assert RunDir(run).load_checkpoint()[1]["step"] == 40


def test_world_size_without_a_launcher_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    rc = main(["train", "vae", *SMALL_VAE, "--steps", "5", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "WORLD_SIZE=2" in err[0] and "torchrun" in err[0], err


def test_a_closed_stdout_ends_quietly(tmp_path):
    proc = start(["data", "info", "digits"])
    proc.stdout.close()  # `diffvae data info digits | head -0`: the reader is gone before the first line
    err = proc.stderr.read()
    proc.wait(timeout=BACKSTOP_S)
    assert proc.returncode == 0 and err == "", err


def test_sixteen_bit_png_levels_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from diffvae.data import load_data

    levels = np.array([[0, 257 * 64, 32768, 65535]] * 4, dtype=np.uint16)
    for i in range(20):  # enough for a held-out split
        Image.fromarray(levels).save(tmp_path / f"{i:02d}.png")
    assert Image.open(tmp_path / "00.png").mode.startswith("I")  # really a 16-bit file
    data = load_data(f"folder:{tmp_path}", size=4)
    assert data.train.shape[1] == 1 and data.train[0, 0, 0].tolist() == [0, 64, 128, 255]  # round(v · 255 / 65535)


def test_every_name_the_readme_shows_is_importable():
    import diffvae
    from diffvae.metrics import fid, kid, precision_recall

    for name in ("load", "NoiseSchedule", "sample", "ddim_invert", "diffusion_bpd", "analytic_variance"):
        assert callable(getattr(diffvae, name)), name
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 2.0
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6) and fid(a, b) > 1.0  # the function, not a module
    assert callable(kid) and callable(precision_recall)
    assert set(precision_recall(a, b, k=3)) >= {"precision", "recall"}
