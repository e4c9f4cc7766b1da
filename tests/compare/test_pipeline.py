"""diffvae.compare.pipeline: how a stage's failure is handled."""

from __future__ import annotations

import errno
import os
import types

import pytest
import torch

from diffvae.compare import pipeline
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


def test_a_stage_runs_on_the_cores_other_processes_leave_and_records_it(tmp_path, monkeypatch):
    """Issue 27: beside two busy processes, two threads ran a ddpm step at 3.3 it/s and one thread at 4.2; every stage
    now measures the load first and drops threads while the cores are taken, never above the count it started with."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cores = os.cpu_count() or 1
        load = {"busy": float(cores)}  # every core taken by others
        monkeypatch.setattr(pipeline, "busy_cores_elsewhere", lambda interval: load["busy"])
        run = _runner(tmp_path)
        assert run("train:vae", lambda s: torch.get_num_threads()) == 1
        assert run.stages.status["train:vae"]["threads"] == 1
        load["busy"] = 0.0  # the load has gone: back to the count the compare started with, not more
        assert run("curves", lambda s: torch.get_num_threads()) == min(2, cores)
        assert run.stages.status["curves"]["threads"] == min(2, cores)
    finally:
        torch.set_num_threads(previous)


def test_a_fixed_cost_and_an_overrun_shrink_the_shares_of_the_stages_after_them(tmp_path, monkeypatch):
    """The budget as the compare accounts for it, on a clock the test moves (how long a whole compare takes on a given
    machine is a benchmark: benchmarks/bench_load.py). The CI failure this replaces: the feature network trained inside
    the curves stage's share, and a slow machine's compare ran 159.6 CPU-s against 152 allowed."""
    clock = {"now": 0.0}
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: clock["now"])

    def takes(seconds_used):
        def stage(seconds):
            clock["now"] += seconds_used
            return seconds
        return stage

    plan = types.SimpleNamespace(seconds={"a": 30.0, "b": 30.0})
    run = StageRunner(plan, Stages(tmp_path, resume=False), tmp_path, budget_minutes=1.0)
    reserve = pipeline._reserve(60.0)
    assert run("features", takes(10.0)) == 0.0  # no share of its own: a fixed cost
    assert run("a", takes(40.0)) == pytest.approx((60.0 - 10.0 - reserve) / 2)  # half of what the features left
    assert run("b", takes(1.0)) == pytest.approx(60.0 - 50.0 - reserve)  # all that the overrun left
    status = run.stages.status
    assert status["features"]["allotted"] == 0.0 and status["features"]["seconds"] == 10.0
    assert status["a"]["allotted"] == pytest.approx((60.0 - 10.0 - reserve) / 2, abs=0.01) and status["a"]["seconds"] == 40.0
    clock["now"] = 58.0  # nothing left: a stage still gets its minimum
    plan.seconds["c"] = 1.0
    assert run("c", takes(0.0)) == 5.0
