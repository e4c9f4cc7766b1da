import math

import pytest
import torch
from torch import nn

from diffvae.errors import DiffvaeError
from diffvae.runs import RunDir
from diffvae.train import TrainConfig, batch_indices, learning_rate, train


class ToyFamily(nn.Module):
    """A tiny denoiser that uses the global RNG in its loss, like the real families."""

    def __init__(self, fail_at_step: int | None = None, nan_at_step: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 16))
        self.step = 0
        self.fail_at_step, self.nan_at_step = fail_at_step, nan_at_step

    def set_step(self, step):
        self.step = step

    def training_loss(self, x):
        if self.step == self.fail_at_step:
            raise KeyboardInterrupt  # the process "dies" here
        x = x.flatten(1).float() / 127.5 - 1
        noise = torch.randn_like(x)
        loss = ((self.net(x + noise) - noise) ** 2).mean()
        if self.step == self.nan_at_step:
            loss = loss * float("nan")
        return loss, {"mse": float(loss.detach())}


def images(n=96):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)


def config(**kw):
    base = dict(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, precision="fp32", device="cpu",
                checkpoint_every=10, log_every=5, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    lrs = [learning_rate(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_batch_order_is_a_function_of_seed_and_step_covering_each_epoch():
    n, b = 50, 10
    epoch = torch.cat([batch_indices(s, n, b, seed=0) for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(n))
    assert torch.equal(batch_indices(7, n, b, 0), batch_indices(7, n, b, 0))
    assert not torch.equal(batch_indices(7, n, b, 0), batch_indices(7, n, b, 1))
    assert not torch.equal(batch_indices(0, n, b, 0), batch_indices(5, n, b, 0))  # a new epoch, a new order


def test_training_writes_a_run_and_lowers_the_loss(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    run.write_config({"family": "toy"})
    ema, result = train(ToyFamily(), images(), config(steps=60), run, progress=False)
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    assert rows[-1]["loss"] < rows[0]["loss"]
    tensors, meta = run.load_checkpoint()
    assert meta["step"] == 60 and result.steps == 60
    assert any(k.startswith("ema/") for k in tensors) and any(k.startswith("optimizer/") for k in tensors)
    assert not ema.training


def test_interrupted_run_resumes_bit_identical(tmp_path):
    data = images()
    ref_run = RunDir.prepare(tmp_path / "ref")
    torch.manual_seed(0)
    ref, _ = train(ToyFamily(), data, config(), ref_run, progress=False)

    run = RunDir.prepare(tmp_path / "cut")
    torch.manual_seed(0)  # the model's initialisation is seeded (diffvae.api does this before building it)
    with pytest.raises(KeyboardInterrupt):
        train(ToyFamily(fail_at_step=25), data, config(), run, progress=False)
    assert run.load_checkpoint()[1]["step"] == 20
    torch.manual_seed(12345)  # a resumed process starts with different global RNG state
    resumed, _ = train(ToyFamily(), data, config(), run, resume=True, progress=False)
    for (name, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    ref_w, _ = ref_run.load_checkpoint()
    cut_w, _ = run.load_checkpoint()
    assert all(torch.equal(ref_w[k], cut_w[k]) for k in ref_w if not k.startswith("rng/"))
    assert [r["step"] for r in run.read_metrics()] == [r["step"] for r in ref_run.read_metrics()]


def test_nan_loss_stops_with_one_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    with pytest.raises(DiffvaeError, match="NaN/Inf at step 15.*last good checkpoint"):
        train(ToyFamily(nan_at_step=15), images(), config(), run, progress=False)
    assert run.load_checkpoint()[1]["step"] == 10


def test_budget_fits_the_schedule_and_stops_in_time():
    import time

    t = time.perf_counter()
    _, result = train(ToyFamily(), images(), config(steps=None, budget_minutes=0.03), progress=False)
    elapsed = time.perf_counter() - t
    assert elapsed < 0.03 * 60 * 1.5 + 1.0
    assert result.steps > 20


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=-5), dict(batch_size=0), dict(lr=-1.0), dict(precision="fp8"),
                                 dict(device="tpu"), dict(steps=None), dict(ema_decay=1.0), dict(budget_minutes=math.inf, steps=None)])
def test_bad_training_settings_are_refused(bad):
    with pytest.raises(DiffvaeError):
        config(**bad).validate()
