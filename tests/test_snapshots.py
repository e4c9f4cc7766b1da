"""EMA snapshots at geometric intervals of training time (diffvae.snapshots, written by the engine):
the schedule on a fake clock, survival of an interrupted run's snapshots on resume, and latent
diffusion's snapshots counting its autoencoder stage."""

import copy

import pytest
import torch

import diffvae.train
from diffvae.api import DataConfig, train_run
from diffvae.errors import DiffvaeError
from diffvae.latent.model import LDMConfig
from diffvae.runs import RunDir, load_tensors, split_prefixed
from diffvae.snapshots import GeometricSchedule, count_gflop, read_index, snapshot_folder, training_gflop_per_image
from diffvae.train import TrainConfig, train

from test_train import ToyFamily, images


class FakeClock:
    """Training time that advances by one second per training step (per ``training_loss`` call)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(diffvae.train, "wall_clock", fake)
    original = ToyFamily.training_loss

    def ticking(self, x):
        fake.now += 1.0
        return original(self, x)

    monkeypatch.setattr(ToyFamily, "training_loss", ticking)
    return fake


def config(**kw):
    base = dict(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, precision="fp32", device="cpu", checkpoint_every=10,
                log_every=5, seed=3, snapshot_first_minutes=2 / 60, snapshot_factor=2.0)
    return TrainConfig(**{**base, **kw})


def test_geometric_schedule_gives_the_next_point_strictly_after():
    schedule = GeometricSchedule(first=2.0, factor=3.0)
    assert [schedule.next_after(s) for s in (0.0, 1.99, 2.0, 5.9, 6.0, 17.0)] == [2.0, 2.0, 6.0, 6.0, 18.0, 18.0]


def test_snapshots_follow_the_geometric_schedule_of_training_time(tmp_path, clock):
    run = RunDir.prepare(tmp_path / "run")
    torch.manual_seed(0)
    ema, _ = train(ToyFamily(), images(), config(), run, progress=False)
    index = read_index(run.path)
    entries = index["snapshots"]
    # one second per step: due after 2, 4, 8, 16, 32 seconds, then the final weights at step 40
    assert [e["step"] for e in entries] == [2, 4, 8, 16, 32, 40]
    assert [e["final"] for e in entries] == [False] * 5 + [True]
    assert [e["stage_seconds"] for e in entries] == [2.0, 4.0, 8.0, 16.0, 32.0, 40.0]
    # Linear(16→32) and Linear(32→16): forward 2·512 + 2·512 FLOPs per image; backward 2·512 (weight
    # gradient of the first, its input needs none) + 2·2·512 (weight and input gradient of the second)
    assert index["gflop_per_image"] == pytest.approx(5 * 1024 / 1e9)
    for e in entries:
        assert e["images"] == 16 * e["step"] and e["minutes"] == pytest.approx(e["seconds"] / 60)
        assert e["gflop"] == pytest.approx(index["gflop_per_image"] * e["images"])
    tensors, meta = load_tensors(snapshot_folder(run.path) / entries[-1]["file"])
    assert meta["step"] == 40
    for name, value in ema.state_dict().items():
        assert torch.equal(split_prefixed(tensors, "ema")[name], value), name
    early, _ = load_tensors(snapshot_folder(run.path) / entries[0]["file"])
    assert not torch.equal(early["ema/net.0.weight"], tensors["ema/net.0.weight"])  # a real earlier state


def test_a_step_slower_than_several_intervals_takes_one_snapshot(tmp_path, clock, monkeypatch):
    original = ToyFamily.training_loss

    def slow_step_ten(self, x):
        if self.step == 9:
            clock.now += 20.0  # step 10 ends at 30 s, far past the point 16 s: one snapshot, next due at 32 s
        return original(self, x)

    monkeypatch.setattr(ToyFamily, "training_loss", slow_step_ten)
    run = RunDir.prepare(tmp_path / "run")
    train(ToyFamily(), images(), config(steps=14), run, progress=False)
    entries = read_index(run.path)["snapshots"]
    assert [(e["step"], e["stage_seconds"]) for e in entries] == [(2, 2.0), (4, 4.0), (8, 8.0), (10, 30.0), (12, 32.0), (14, 34.0)]


def test_snapshots_survive_an_interrupted_run_and_resume_identically(tmp_path, clock):
    ref = RunDir.prepare(tmp_path / "ref")
    torch.manual_seed(0)
    train(ToyFamily(), images(), config(), ref, progress=False)

    run = RunDir.prepare(tmp_path / "cut")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # dies at step 35: the checkpoint is at 30, the snapshot at 32 is lost
        train(ToyFamily(fail_at_step=35), images(), config(), run, progress=False)
    written = [e["step"] for e in read_index(run.path)["snapshots"]]
    assert written == [2, 4, 8, 16, 32]
    kept_before = {s: (snapshot_folder(run.path) / f"ema_step{s}.safetensors").stat().st_mtime_ns for s in written[:-1]}
    clock.now += 500.0  # the resumed process starts later: only training time counts
    torch.manual_seed(12345)
    train(ToyFamily(), images(), config(), run, resume=True, progress=False)
    ref_index, got_index = read_index(ref.path), read_index(run.path)
    assert got_index == ref_index
    for entry in ref_index["snapshots"]:  # the same weights at the same steps, byte for byte
        name = entry["file"]
        assert (snapshot_folder(run.path) / name).read_bytes() == (snapshot_folder(ref.path) / name).read_bytes(), name
    for step, mtime in kept_before.items():  # the snapshots before the checkpoint stayed as they were
        assert (snapshot_folder(run.path) / f"ema_step{step}.safetensors").stat().st_mtime_ns == mtime
    ref_w, _ = ref.load_checkpoint()
    got_w, _ = run.load_checkpoint()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w if not k.startswith("rng/"))


def test_the_flop_measurement_leaves_training_bit_identical(tmp_path):
    results = []
    for first in (None, 1e-6):
        run = RunDir.prepare(tmp_path / f"run{first}")
        torch.manual_seed(0)
        train(ToyFamily(), images(), config(steps=12, snapshot_first_minutes=first), run, progress=False)
        results.append(run.load_checkpoint()[0])
    assert (tmp_path / "run1e-06" / "snapshots" / "index.json").is_file()
    assert not (tmp_path / "runNone" / "snapshots").exists()
    off, on = results
    assert all(torch.equal(off[k], on[k]) for k in off)


def test_a_run_started_from_scratch_starts_its_snapshots_from_scratch(tmp_path, clock):
    run = RunDir.prepare(tmp_path / "run")
    train(ToyFamily(), images(), config(steps=20), run, progress=False)
    (snapshot_folder(run.path) / "ema_step999.safetensors").write_bytes(b"stale")
    train(ToyFamily(), images(), config(steps=6), run, progress=False)
    assert [e["step"] for e in read_index(run.path)["snapshots"]] == [2, 4, 6]
    assert sorted(p.name for p in snapshot_folder(run.path).iterdir()) == \
        ["ema_step2.safetensors", "ema_step4.safetensors", "ema_step6.safetensors", "index.json"]


@pytest.mark.parametrize("bad", [dict(snapshot_first_minutes=-1.0), dict(snapshot_first_minutes=float("nan")),
                                 dict(snapshot_factor=1.0), dict(snapshot_factor=float("inf"))])
def test_bad_snapshot_settings_are_refused(bad):
    with pytest.raises(DiffvaeError, match="snapshot"):
        config(**bad).validate()


def test_latent_diffusion_snapshots_count_the_autoencoder_stage(tmp_path):
    tiny = LDMConfig(ae_width=8, latent_channels=2, downsample=2, channels=32, channel_mult=(1,), timesteps=50,
                     sample_steps=4, invert_steps=4)
    train_config = TrainConfig(steps=20, batch_size=32, lr=2e-3, warmup_steps=2, precision="fp32", device="cpu",
                               checkpoint_every=4, log_every=5, seed=0, snapshot_first_minutes=1e-6)
    out = tmp_path / "run"
    model = train_run("ldm", DataConfig("digits"), tiny, train_config, out=out, progress=False)
    index = read_index(out)
    _, ae_meta = load_tensors(out / "autoencoder.safetensors")
    assert ae_meta["step"] == 6  # 30 % of 20 steps; stage 1 takes no snapshots of its own
    before = index["before"]
    assert before["seconds"] > ae_meta["elapsed"] > 0  # stage 1 and the encoder pass
    train_images = DataConfig("digits").load().train
    trainable = copy.deepcopy(model)  # fit returns frozen EMA weights; stage 1 trains the autoencoder, stage 2 the denoiser
    ae_gflop = training_gflop_per_image(trainable.autoencoder.requires_grad_(True), train_images[:8]) * 6 * 32  # 6 steps of 32
    encode_gflop = count_gflop(lambda: model.latent_moments(train_images[:8]), torch.device("cpu")) / 8 * len(train_images)
    assert ae_gflop > 0 and encode_gflop > 0
    assert before["gflop"] == pytest.approx(ae_gflop + encode_gflop)  # stage 1 and the encoder pass before stage 2
    trainable.autoencoder.requires_grad_(False)
    trainable.denoiser.requires_grad_(True)
    assert index["gflop_per_image"] == pytest.approx(training_gflop_per_image(trainable, model.latent_moments(train_images[:8])))
    entries = index["snapshots"]
    assert entries[-1]["step"] == 14 and entries[-1]["final"]
    for e in entries:
        assert e["seconds"] == pytest.approx(before["seconds"] + e["stage_seconds"])
        assert e["minutes"] > before["seconds"] / 60
        assert e["gflop"] == pytest.approx(before["gflop"] + index["gflop_per_image"] * 32 * e["step"])
