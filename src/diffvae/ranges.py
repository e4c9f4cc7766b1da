"""Allowed ranges of numeric settings: one table used both by the CLI (at parse time, so a bad flag is
refused before anything is read or written) and by the config dataclasses' ``validate`` (for the
Python API and for configs read back from disk). Every message names the range."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from diffvae.errors import DiffvaeError

MAX_COUNT = 10**9  # steps, warm-up, logging intervals
MAX_SEED = 2**32 - 1
MAX_IMAGES = 1_000_000  # --n of sample/eval/invert: a bound that keeps uint8 outputs addressable
MAX_SIZE = 1024  # --size in pixels (and the data loader checks the resized set fits in memory)
MAX_BOOTSTRAP = 100_000  # bootstrap resamples of score/eval intervals
MAX_GUIDANCE = 1000.0  # classifier-free guidance scale: (1 + w) ε_c − w ε_u overflows bf16/fp16 long before 1e39


@dataclass(frozen=True)
class Range:
    """A closed (or, where ``low_open``/``high_open``, open) interval of ``kind`` (int or float)."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def text(self) -> str:
        def show(v: float) -> str:
            return f"{v:g}" if self.kind is float else str(int(v))

        return f"{'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        return f"{'an integer' if self.kind is int else 'a finite number'} in {self.text()}"

    def check(self, value, name: str) -> None:
        """Raise DiffvaeError unless ``value`` is in the range."""
        if not self.contains(value):
            raise DiffvaeError(f"{name} must be {self.describe()}, got {value}")

    def parser(self):
        """An argparse ``type=``: the text as ``kind``, refused with the range when outside it."""
        def parse(text: str):
            try:
                value = int(text) if self.kind is int else float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
            if not self.contains(value):
                raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
            return value

        parse.__name__ = self.kind.__name__
        return parse


def finite_float(text: str) -> float:
    """An argparse ``type=`` for a float that must be finite (model settings range-checked by their config)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# TrainConfig fields (diffvae.train) -> range; the CLI flags are built from the same table.
TRAIN_RANGES: dict[str, Range] = {
    "steps": Range(int, 1, MAX_COUNT),
    "budget_minutes": Range(float, 0, 10**6, low_open=True),
    "batch_size": Range(int, 1, 2**20),
    "lr": Range(float, 0, 100, low_open=True),
    "weight_decay": Range(float, 0, 100),
    "warmup_steps": Range(int, 0, MAX_COUNT),
    "min_lr_ratio": Range(float, 0, 1),
    "grad_clip": Range(float, 0, 1e9, low_open=True),
    "ema_decay": Range(float, 0, 1, high_open=True),
    "seed": Range(int, 0, MAX_SEED),
    "checkpoint_every": Range(int, 1, MAX_COUNT),
    "log_every": Range(int, 1, MAX_COUNT),
}
TRAIN_FLAGS = {"budget_minutes": "--budget", "batch_size": "--batch", "warmup_steps": "--warmup"}


def train_flag(field: str) -> str:
    """The CLI flag of a TrainConfig field (``batch_size`` → ``--batch``)."""
    return TRAIN_FLAGS.get(field, "--" + field.replace("_", "-"))


# `diffvae score` and guidance (sample, eval, interpolate)
SCORE_RANGES: dict[str, Range] = {
    "--seed": Range(int, 0, MAX_SEED),
    "--bootstrap": Range(int, 0, MAX_BOOTSTRAP),
    "--n": Range(int, 4, MAX_IMAGES),  # precision/recall (k = 3 neighbours) need 4 samples
}
GUIDANCE = Range(float, 0, MAX_GUIDANCE)
