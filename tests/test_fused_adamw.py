"""Fused AdamW where torch provides it: decided once (recorded in config.json and each checkpoint), and
exact resume with either optimizer; a checkpoint resumes with the optimizer that wrote it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from diffvae.cli import main
from diffvae.runs import RunDir
from diffvae.train import TrainConfig, TrainState, fused_adamw_available, train

CPU = torch.device("cpu")
needs_fused = pytest.mark.skipif(not fused_adamw_available(CPU), reason="this torch has no fused AdamW on the CPU")


class Toy(nn.Module):
    """A tiny noisy regression whose loss uses the global RNG (like the families); ``stop_at`` interrupts it."""

    def __init__(self, stop_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 16))
        self.step, self.stop_at = 0, stop_at

    def set_step(self, step):
        self.step = step

    def training_loss(self, x):
        if self.step == self.stop_at:
            raise KeyboardInterrupt
        x = x.flatten(1).float() / 127.5 - 1
        noise = torch.randn_like(x)
        loss = ((self.net(x + noise) - noise) ** 2).mean()
        return loss, {}


DATA = torch.randint(0, 256, (64, 1, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 12, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2, "precision": "fp32", "device": "cpu",
                          "checkpoint_every": 4, "seed": 3, **kw})


def _run(path, fused, stop_at=None, resume=False):
    torch.manual_seed(0)
    run = RunDir(path) if resume else RunDir.prepare(path)
    return train(Toy(stop_at), DATA, config(fused_adamw=fused), run, resume=resume, progress=False)[0]


def test_auto_is_decided_by_validate_and_used_by_the_optimizer():
    c = TrainConfig(steps=3, device="cpu")
    assert c.fused_adamw is None
    c.validate()
    assert c.fused_adamw is fused_adamw_available(CPU)
    state = TrainState.new(Toy(), c, CPU)
    assert bool(state.optimizer.defaults.get("fused")) is c.fused_adamw
    state = TrainState.new(Toy(), config(fused_adamw=False), CPU)
    assert not state.optimizer.defaults.get("fused")


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=needs_fused)])
def test_an_interrupted_run_resumes_bit_identical_with_either_optimizer(fused, tmp_path):
    ref = _run(tmp_path / "ref", fused)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", fused, stop_at=9)
    assert RunDir(tmp_path / "cut").load_checkpoint()[1]["fused_adamw"] is fused
    torch.manual_seed(99)
    resumed = _run(tmp_path / "cut", fused, resume=True)
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@needs_fused
def test_a_checkpoint_resumes_with_the_optimizer_that_wrote_it(tmp_path):
    """A run checkpointed by the default AdamW (or from before fused AdamW: no record) and resumed under a
    config asking for fused AdamW keeps the default one, so it still ends like its uninterrupted self."""
    ref = _run(tmp_path / "ref", False)
    fused_ref = _run(tmp_path / "fused", True)
    assert any(not torch.equal(a, b) for a, b in zip(ref.state_dict().values(), fused_ref.state_dict().values()))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", False, stop_at=9)
    run = RunDir(tmp_path / "cut")
    tensors, meta = run.load_checkpoint()
    del meta["fused_adamw"]  # as an older checkpoint
    run.save_checkpoint(tensors, meta)
    resumed = _run(tmp_path / "cut", True, resume=True)
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_config_json_records_the_decision(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--steps", "2", "--batch", "16", "--device", "cpu", "--quiet",
                 "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())["train"]["fused_adamw"]
    assert saved is fused_adamw_available(CPU)
