"""diffvae.compare.pipeline: how a stage's failure is handled."""

from __future__ import annotations

import errno
import os
import types

import pytest

from diffvae.compare.pipeline import Stages, StageRunner
from diffvae.errors import DiffvaeError, WriteError
from diffvae.runs import write_error


def _runner(tmp_path) -> StageRunner:
    plan = types.SimpleNamespace(seconds={"train:vae": 1.0, "curves": 1.0})
    return StageRunner(plan, Stages(tmp_path, resume=False), tmp_path, budget_minutes=1.0)


def test_a_failed_stage_is_recorded_and_the_next_one_runs(tmp_path):
    run = _runner(tmp_path)

    def fails(seconds):
        raise DiffvaeError("diverged")

    assert run("train:vae", fails) is None and run("curves", lambda s: "drawn") == "drawn"
    assert run.stages.status["train:vae"]["status"] == "failed" and run.stages.done("curves")


def test_a_write_that_fails_ends_the_compare_with_its_own_line(tmp_path):
    """Regression (issue 27, hostile pass): on a full disk the training stage failed, the next stages went on and the
    compare ended on 'run ... has no checkpoint yet', hiding the full disk. A write error now ends it, unrecorded (a
    --resume after freeing space runs the stage again)."""
    run = _runner(tmp_path)

    def disk_full(seconds):
        raise write_error(tmp_path / "runs" / "vae" / "checkpoint.safetensors", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    with pytest.raises(WriteError, match="cannot write .*checkpoint.safetensors: No space left on device"):
        run("train:vae", disk_full)
    assert "train:vae" not in run.stages.status
