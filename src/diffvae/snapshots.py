"""Snapshots of a run's EMA weights at geometric intervals of training time: the points of a
learning curve (``diffvae compare`` evaluates them, :mod:`diffvae.compare.curves`).

With ``TrainConfig.snapshot_first_minutes`` set, the training engine writes, inside the run directory:

* ``snapshots/ema_step<N>.safetensors`` — the EMA weights after step N (keys ``ema/...``, as in the
  checkpoint) with the index entry below as its JSON metadata;
* ``snapshots/index.json`` — the schedule, ``gflop_per_image``, the cost of earlier stages
  (``before``) and one entry per snapshot: ``step``, ``stage_seconds`` (this engine run's training
  seconds), ``seconds``/``minutes`` (including ``before``), ``images`` (step × global batch, this
  run), ``gflop`` (``before.gflop`` + gflop_per_image × images) and ``final``.

The schedule: a snapshot when the training seconds first reach first·factor^k (k = 0, 1, ...),
and one of the final weights. Training seconds are the engine's clock less the time spent writing
snapshots (a few milliseconds each; the wall-clock budget still counts it). ``gflop_per_image`` is
measured once, before the clock starts, with ``FlopCounterMode`` on one forward + backward of a small
batch (matrix products and convolutions; elementwise work is not counted).

Resume: entries after the checkpoint's step (written by the lost part of the run) are dropped
with their files, the rest stay, and the schedule continues from the last one kept; a run (or
stage) started from scratch starts its snapshots from scratch. Only rank 0 writes.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from diffvae.runs import add_prefix, read_json, save_tensors, write_json

SNAPSHOTS = "snapshots"
INDEX = "index.json"


@dataclass
class Compute:
    """Training cost already spent on a model before an engine run (an earlier stage)."""

    seconds: float = 0.0
    gflop: float = 0.0


@dataclass
class GeometricSchedule:
    """Points first·factor^k, k = 0, 1, ... (seconds)."""

    first: float
    factor: float

    def next_after(self, seconds: float) -> float:
        """The first point strictly after ``seconds``."""
        point = self.first
        while point <= seconds:
            point *= self.factor
        return point


def count_gflop(fn: Callable[[], Any], device: torch.device) -> float:
    """GFLOP counted by ``FlopCounterMode`` while ``fn`` runs; the RNG state is restored after it."""
    from torch.utils.flop_counter import FlopCounterMode

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def training_gflop_per_image(model: nn.Module, batch: torch.Tensor) -> float:
    """GFLOP per image of one training step (forward + backward of ``training_loss`` on ``batch``),
    measured on a copy of the model so that the model, its gradients and the RNG are untouched."""
    probe = copy.deepcopy(model).train()

    def step() -> None:
        loss, _ = probe.training_loss(batch)
        loss.backward()

    return count_gflop(step, batch.device) / max(1, batch.shape[0])


def snapshot_folder(run_path: str | Path) -> Path:
    return Path(run_path) / SNAPSHOTS


def read_index(run_path: str | Path) -> dict[str, Any] | None:
    """The run's snapshot index, or None if it has none."""
    path = snapshot_folder(run_path) / INDEX
    return read_json(path) if path.is_file() else None


class SnapshotRecorder:
    """Writes the snapshots of one engine run (see the module docstring)."""

    def __init__(self, folder: Path, index: dict[str, Any], clock: Callable[[], float]):
        self.folder, self.index, self.clock = folder, index, clock
        self.schedule = GeometricSchedule(index["first_minutes"] * 60.0, index["factor"])
        entries = index["snapshots"]
        self.write_seconds = entries[-1]["write_seconds"] if entries else 0.0
        self.next_due = self.schedule.next_after(entries[-1]["stage_seconds"] if entries else 0.0)

    @classmethod
    def open(cls, run_path: str | Path, config, *, step: int, resume: bool, batch: int, before: Compute,
             measure: Callable[[], float], clock: Callable[[], float]) -> "SnapshotRecorder | None":
        """The recorder of an engine run at ``step`` (None when ``config`` takes no snapshots)."""
        if not config.snapshot_first_minutes:
            return None
        folder = snapshot_folder(run_path)
        index = read_index(run_path) if resume else None
        if index is None:
            shutil.rmtree(folder, ignore_errors=True)  # a run started from scratch snapshots from scratch
            folder.mkdir(parents=True, exist_ok=True)
            index = {"first_minutes": config.snapshot_first_minutes, "factor": config.snapshot_factor, "batch_size": batch,
                     "gflop_per_image": measure(), "before": asdict(before), "snapshots": []}
        else:
            index = _drop_after(index, step, folder)
        write_json(folder / INDEX, index)
        return cls(folder, index, clock)

    def after_step(self, step: int, elapsed: float, ema: nn.Module) -> None:
        """Take a snapshot if the schedule says so (``elapsed``: the engine's clock)."""
        if elapsed - self.write_seconds >= self.next_due:
            self._take(step, elapsed, ema, final=False)

    def finish(self, step: int, elapsed: float, ema: nn.Module) -> None:
        """The snapshot of the final weights (unless the schedule just took one at this step)."""
        entries = self.index["snapshots"]
        if entries and entries[-1]["step"] == step:
            entries[-1]["final"] = True
            write_json(self.folder / INDEX, self.index)
        else:
            self._take(step, elapsed, ema, final=True)

    def _take(self, step: int, elapsed: float, ema: nn.Module, final: bool) -> None:
        started = self.clock()
        stage_seconds = elapsed - self.write_seconds
        images = step * self.index["batch_size"]
        before = self.index["before"]
        seconds = before["seconds"] + stage_seconds
        entry = {"step": step, "file": f"ema_step{step}.safetensors", "stage_seconds": stage_seconds, "seconds": seconds,
                 "minutes": seconds / 60.0, "images": images, "final": final,
                 "gflop": before["gflop"] + self.index["gflop_per_image"] * images}
        save_tensors(self.folder / entry["file"], add_prefix(ema.state_dict(), "ema"), entry)
        self.write_seconds += self.clock() - started
        entry["write_seconds"] = self.write_seconds
        self.index["snapshots"].append(entry)
        write_json(self.folder / INDEX, self.index)
        self.next_due = self.schedule.next_after(stage_seconds)


def _drop_after(index: dict[str, Any], step: int, folder: Path) -> dict[str, Any]:
    """The index without the entries after ``step`` (the checkpoint's), whose files are deleted."""
    kept = [e for e in index["snapshots"] if e["step"] <= step]
    for entry in index["snapshots"]:
        if entry["step"] > step:
            (folder / entry["file"]).unlink(missing_ok=True)
    return {**index, "snapshots": kept}
