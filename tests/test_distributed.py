"""Data parallel under torchrun (gloo, CPU): sharding, all-reduced gradients, one writer, exact resume.

Two launches of ``python -m torch.distributed.run --nproc_per_node 2``: the real CLI
(``diffvae train vae``), and a small script driving the engine with a recording toy family so that
each rank's shard, the gradient averaging and the per-rank RNG streams can be checked exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diffvae.cli import main
from diffvae.runs import RunDir, load_tensors, split_prefixed

BACKSTOP_S = 1200  # a hung launch fails after this long: over 10x a launch's time on a busy 2-core machine

TOY_SCRIPT = '''
"""Run by the test under torchrun (and in-process as the 1-process reference)."""
import sys

import torch
from torch import nn

from diffvae.runs import RunDir, save_tensors
from diffvae.train import TrainConfig, distributed_context, on_rank_zero, train


class RecordingAutoencoder(nn.Module):
    """A tiny autoencoder that records every batch it trains on; ``noise`` > 0 makes its loss
    draw from the global RNG (like the real families), ``fail_at_step`` makes the process "die"."""

    def __init__(self, noise=0.0, fail_at_step=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 16))
        self.noise, self.fail_at_step, self.step, self.seen = noise, fail_at_step, 0, []

    def set_step(self, step):
        self.step = step

    def training_loss(self, x):
        if self.step == self.fail_at_step:
            raise KeyboardInterrupt
        self.seen.append(x.detach().clone())
        y = x.flatten(1).float() / 127.5 - 1
        loss = ((self.net(y + self.noise * torch.randn_like(y)) - y) ** 2).mean()
        return loss, {}


def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (64, 1, 4, 4), generator=g, dtype=torch.uint8)


def config():
    return TrainConfig(steps=12, batch_size=16, lr=1e-2, warmup_steps=2, precision="fp32", device="cpu",
                       checkpoint_every=5, log_every=4, seed=3)


def new_run(path):
    on_rank_zero(lambda: RunDir.prepare(path).write_config({"family": "toy"}))
    return RunDir(path)


def main(out):
    rank, world = distributed_context()
    model = RecordingAutoencoder()
    ema, _ = train(model, images(), config(), new_run(f"{out}/plain"), progress=False)
    save_tensors(f"{out}/plain.rank{rank}.safetensors",
                 {**{"ema/" + k: v for k, v in ema.state_dict().items()}, "seen": torch.stack(model.seen)})
    if world == 1:
        return
    train(RecordingAutoencoder(noise=0.3), images(), config(), new_run(f"{out}/noisy"), progress=False)
    cut = new_run(f"{out}/cut")
    try:
        train(RecordingAutoencoder(noise=0.3, fail_at_step=7), images(), config(), cut, progress=False)
    except KeyboardInterrupt:
        pass
    torch.manual_seed(1234 + rank)  # a restarted process starts from another RNG state
    train(RecordingAutoencoder(noise=0.3), images(), config(), cut, resume=True, progress=False)


if __name__ == "__main__":
    main(sys.argv[1])
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_torchrun(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFVAE_BACKEND": "gloo"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(free_port()), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = BACKSTOP_S) -> str:
    """Wait for a launch; its stderr. Fails the test on a non-zero exit."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


KNOWN_TEARDOWN_ABORT = "terminate called without an active exception"


def finish_launch(launches, key: str) -> str:
    """A launch's stderr; relaunched (at most twice, its output folder emptied first) only when a
    rank died of the known gloo teardown abort (std::terminate while its threads shut down, about
    1 launch in 4 on 2 busy cores). Any other failure, and every assertion on what the launch
    wrote, is as strict as on the first try."""
    for _ in range(2):
        proc = launches[key]
        _, stderr = proc.communicate(timeout=BACKSTOP_S)
        if proc.returncode == 0 or KNOWN_TEARDOWN_ABORT not in stderr:
            break
        args, output = launches["args"][key]
        shutil.rmtree(output, ignore_errors=True)
        if key == "toy":
            output.mkdir()
        launches[key] = start_torchrun(args, cwd=launches["root"])
    else:
        proc = launches[key]
        _, stderr = proc.communicate(timeout=BACKSTOP_S)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """Both torchrun launches, started together so that their start-up (imports) overlaps."""
    root = tmp_path_factory.mktemp("ddp")
    script = root / "toy_ddp.py"
    script.write_text(TOY_SCRIPT)
    (root / "two").mkdir()
    cli_args = ["-m", "diffvae", "train", "vae", "--data", "digits", "--out", str(root / "run"), "--steps", "20",
                "--batch", "32", "--width", "32", "--latent-dim", "4", "--precision", "fp32", "--device", "cpu",
                "--checkpoint-every", "10", "--log-every", "5", "--quiet"]
    toy_args = [str(script), str(root / "two")]
    launches = {"root": root, "cli": start_torchrun(cli_args, cwd=root), "toy": start_torchrun(toy_args, cwd=root),
                "args": {"cli": (cli_args, root / "run"), "toy": (toy_args, root / "two")}}
    yield launches
    cli, toy = launches["cli"], launches["toy"]
    for proc in (cli, toy):
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_torchrun_cli_trains_one_run_that_samples_and_evaluates(launches, tmp_path, capsys, monkeypatch):
    stderr = finish_launch(launches, "cli")
    assert stderr.count("diffvae: trained vae") == 1  # said once, by rank 0
    run_path = launches["root"] / "run"

    run = RunDir(run_path)
    assert run.read_config()["train"]["batch_size"] == 32  # the global batch, as given
    assert [r["step"] for r in run.read_metrics()] == [5, 10, 15, 20]  # one writer: no duplicated rows
    tensors, meta = run.load_checkpoint()
    assert meta["step"] == 20 and meta["world_size"] == 2
    assert not torch.equal(tensors["rng/torch"], tensors["rng/torch/rank1"])  # each rank has its own noise stream
    assert sorted(os.listdir(run_path)) == [".diffvae", "checkpoint.safetensors", "config.json", "metrics.jsonl"]  # + the marker

    assert main(["sample", str(run_path), "--n", "8", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["images"].shape == (8, 1, 8, 8) and f["images"].dtype == np.uint8

    monkeypatch.setenv("DIFFVAE_CACHE", str(Path(tempfile.gettempdir()) / "diffvae-test-feature-cache"))
    capsys.readouterr()
    assert main(["eval", str(run_path), "--json", "--quick"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["trained_steps"] == 20 and results["family"] == "vae" and np.isfinite(results["bpd"])


def test_data_parallel_shards_the_global_batch_and_matches_one_process(launches):
    root = launches["root"]
    spec = importlib.util.spec_from_file_location("toy_ddp", root / "toy_ddp.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    (root / "one").mkdir()
    toy.main(str(root / "one"))  # WORLD_SIZE is unset here: the 1-process reference
    finish_launch(launches, "toy")

    one, _ = load_tensors(root / "one" / "plain.rank0.safetensors")
    rank0, _ = load_tensors(root / "two" / "plain.rank0.safetensors")
    rank1, _ = load_tensors(root / "two" / "plain.rank1.safetensors")
    # each rank trains on its half of every global batch, in order, and together on all of it
    assert one["seen"].shape == (12, 16, 1, 4, 4) and rank0["seen"].shape == (12, 8, 1, 4, 4)
    assert torch.equal(torch.cat([rank0["seen"], rank1["seen"]], dim=1), one["seen"])
    # DDP keeps the ranks in lock-step: the EMA weights are bit-identical on both
    for key in split_prefixed(rank0, "ema"):
        assert torch.equal(rank0["ema/" + key], rank1["ema/" + key]), key
    # averaged gradients of the two halves = the gradient of the global batch (up to fp32 rounding)
    ref, _ = RunDir(root / "one" / "plain").load_checkpoint()
    got, meta = RunDir(root / "two" / "plain").load_checkpoint()
    assert meta["world_size"] == 2
    for key in ref:
        if key.startswith(("model/", "ema/")):
            torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)

    # an interrupted 2-process run resumed from its checkpoint ends bit-identical (every rank's RNG restored)
    noisy, _ = RunDir(root / "two" / "noisy").load_checkpoint()
    cut, cut_meta = RunDir(root / "two" / "cut").load_checkpoint()
    assert cut_meta["step"] == 12
    assert noisy.keys() == cut.keys() and "rng/torch/rank1" in cut
    for key in noisy:
        assert torch.equal(noisy[key], cut[key]), key
