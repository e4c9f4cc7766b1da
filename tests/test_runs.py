import json
import os

import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.runs import RunDir, atomic_write_bytes, load_tensors, save_tensors


def test_tensors_round_trip_with_metadata(tmp_path):
    t = {"a/b": torch.randn(3, 4), "c": torch.arange(5)}
    save_tensors(tmp_path / "x.safetensors", t, {"step": 7, "groups": [{"lr": 0.1}]})
    back, meta = load_tensors(tmp_path / "x.safetensors")
    assert meta == {"step": 7, "groups": [{"lr": 0.1}]}
    assert torch.equal(back["a/b"], t["a/b"]) and torch.equal(back["c"], t["c"])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, damage):
    path = tmp_path / "x.safetensors"
    save_tensors(path, {"w": torch.randn(100)}, {"step": 1})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:
        path.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(DiffvaeError, match="truncated or corrupt"):
        load_tensors(path)


def test_atomic_write_leaves_no_temporary_files_and_replaces(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_prepare_refuses_existing_run_unless_force_or_resume(tmp_path):
    out = tmp_path / "run"
    run = RunDir.prepare(out)
    run.write_config({"family": "vae"})
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DiffvaeError, match="already exists"):
        RunDir.prepare(out)
    assert (out / "keep.txt").read_text() == "precious"
    assert RunDir.prepare(out, resume=True).exists()
    RunDir.prepare(out, force=True)
    assert not (out / "keep.txt").exists()


def test_force_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DiffvaeError, match="not a diffvae run"):
        RunDir.prepare(out, force=True)
    assert (out / "holiday.jpg").exists()


def test_metrics_skip_a_torn_last_line_and_truncate_on_resume(tmp_path):
    run = RunDir.prepare(tmp_path / "r")
    for step in (10, 20, 30):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 40, "lo')  # a crash mid-write
    assert [r["step"] for r in run.read_metrics()] == [10, 20, 30]
    run.truncate_metrics(20)
    assert [json.loads(l)["step"] for l in run.metrics_path.read_text().splitlines()] == [10, 20]


def test_a_run_path_through_a_missing_folder_and_dotdot_makes_no_other_folder(tmp_path):
    """Regression (issue 27, hostile pass): --out missing/../run made 'missing' as well as the run, and left it."""
    run = RunDir.prepare(tmp_path / "missing" / ".." / "run")
    assert run.path == tmp_path / "run" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_train_through_a_missing_folder_and_dotdot_makes_only_the_run(tmp_path):
    """Regression (issue 27, hostile pass): ``train --out missing/../run`` made 'missing' as well, and left it."""
    from diffvae.cli import main

    assert main(["train", "vae", "--data", "digits", "--steps", "2", "--width", "16", "--latent-dim", "4", "--quiet",
                 "--out", str(tmp_path / "missing" / ".." / "run")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (tmp_path / "run" / "checkpoint.safetensors").is_file()
