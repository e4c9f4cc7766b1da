"""Compute-aware defaults: the recipe that gives the best samples for the compute a budget buys here.

A budget of B minutes buys C = 60·B·S GFLOP, S being this machine's measured speed on a reference
3×3 convolution at the training precision (:func:`machine_gflops`: bf16 where the CPU or GPU does it
natively, fp32 otherwise), so the same minutes buy several times less on a 2-core AVX2 CPU than on
an AMX one. A family lists its recipes from small to large, each with the compute from which it won
the sweep of ``benchmarks/bench_sweep.py`` (the table in benchmarks/RESULTS.md); :func:`choose`
takes the largest whose threshold C reaches. The choice is printed and stored with the run; a
setting the user gave explicitly always wins over the recipe's (:func:`apply`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from diffvae.device import cpu_kind, resolve_device, resolve_precision
from diffvae.runs import atomic_write_bytes, cache_dir


@dataclass(frozen=True)
class Recipe:
    name: str
    min_gflop: float  # reference-convolution GFLOP a budget must buy for this recipe to be chosen
    model: dict[str, Any] = field(default_factory=dict)  # model-config fields it sets
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields it sets
    note: str = ""  # why, in a few words (measured where, by what)


SPEED_CALLS = 30  # timed calls of the reference convolution; the best is the speed


@functools.lru_cache(maxsize=8)
def machine_gflops(device: str = "cpu", dtype: torch.dtype | None = None, threads: int | None = None) -> float:
    """The reference speed of :func:`compute_gflop`: :func:`probe_gflops` with ``SPEED_CALLS`` calls, once per
    (device, dtype, threads).

    The best of many: beside other processes a call often runs on a cold cache, and the best of a few varied
    enough on one machine to flip a recipe near its threshold (benchmarks/RESULTS.md, the forecast validation).
    Even the best of 30 read 233 GFLOP/s where the same machine reads 495 idle, so the speed is the best this
    machine has shown (:func:`remembered_best`): the same command picks the same recipe on a busy afternoon."""
    return remembered_best(speed_key(device, dtype, threads), probe_gflops(device, dtype, SPEED_CALLS))


SPEED_FILE = "machine_speed.json"  # in diffvae.runs.cache_dir(): {key: best GFLOP/s measured}


def speed_key(device: str, dtype: torch.dtype | None, threads: int | None) -> str:
    """What a speed is the speed of: the processor (or GPU), its cores, torch's version, device, dtype, threads."""
    dev = torch.device(device)
    chip = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{_processor_name()} ({cpu_kind()})"
    return f"{chip}|{os.cpu_count()} cores|torch {torch.__version__}|{dev}|{dtype or torch.float32}|{threads} threads"


def _processor_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def remembered_best(key: str, measured: float) -> float:
    """The larger of ``measured`` and the best speed stored for ``key`` in the cache, which keeps the larger. A
    damaged file counts as empty (it is rewritten); a cache that cannot be read or written gives ``measured``."""
    path = cache_dir() / SPEED_FILE
    try:
        stored = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        stored = {}
    stored = {k: float(v) for k, v in (stored.items() if isinstance(stored, dict) else ())
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0}
    best = max(measured, stored.get(key, 0.0))
    if best > stored.get(key, 0.0):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps({**stored, key: best}, indent=1, sort_keys=True).encode())
        except OSError:
            pass
    return best


def probe_gflops(device: str = "cpu", dtype: torch.dtype | None = None, calls: int = SPEED_CALLS) -> float:
    """GFLOP/s of a 3×3, 64→64 convolution on a batch of 16 28×28 maps (best of ``calls`` calls after a
    warm-up) on ``device`` in ``dtype`` (None = fp32)."""
    dev = torch.device(device)
    kind = dtype or torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 28, 28, generator=g).to(dev, kind)
    w = torch.randn(64, 64, 3, 3, generator=g).to(dev, kind)
    flops = 2.0 * 9 * 64 * 64 * 28 * 28 * 16
    best = float("inf")
    with torch.no_grad():
        for i in range(calls + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:
                best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def compute_gflop(budget_minutes: float, device: str = "cpu", dtype: torch.dtype | None = None) -> float:
    """C = 60 · budget · S: the reference GFLOP that ``budget_minutes`` buy on this machine."""
    return 60.0 * budget_minutes * machine_gflops(device, dtype, torch.get_num_threads())


def choose(recipes: tuple[Recipe, ...], gflop: float) -> Recipe | None:
    """The largest recipe (the last in ``recipes`` order) whose ``min_gflop`` ``gflop`` reaches."""
    reached = [r for r in recipes if gflop >= r.min_gflop]
    return reached[-1] if reached else (recipes[0] if recipes else None)


def apply(recipe: Recipe | None, model_values: dict[str, Any], train_values: dict[str, Any],
          explicit: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model values, train values) with the recipe's settings filled in wherever ``explicit`` (the
    field names the user set) does not name them."""
    if recipe is None:
        return dict(model_values), dict(train_values)
    model = {**{k: v for k, v in recipe.model.items() if k not in explicit}, **model_values}
    train = {**train_values, **{k: v for k, v in recipe.train.items() if k not in explicit}}
    return model, train


def for_budget(recipes: tuple[Recipe, ...], budget_minutes: float, device: str = "auto",
               precision: str = "auto") -> tuple[Recipe | None, dict[str, Any]]:
    """The recipe :func:`choose` picks for ``budget_minutes`` on this machine at the training precision,
    and what it was picked from (for the log line and the run's record)."""
    if not recipes:
        return None, {}
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    speed = machine_gflops(str(dev), dtype, torch.get_num_threads())
    gflop = 60.0 * budget_minutes * speed
    recipe = choose(recipes, gflop)
    info = {"recipe": recipe.name, "budget_gflop": round(gflop, 1),
            "machine_gflops": round(speed, 2), "precision": "bf16" if dtype is not None else "fp32",
            "candidates": {r.name: r.min_gflop for r in recipes}, "note": recipe.note}
    return recipe, info


def describe(info: dict[str, Any]) -> str:
    """One line for the log: which recipe, from how much compute (``chosen_for_gflop``: chosen for a larger budget's)."""
    chosen_for = (f", chosen for the forecast's {info['chosen_for_gflop']:,.0f}" if "chosen_for_gflop" in info else "")
    return (f"recipe {info['recipe']!r}: the budget buys {info['budget_gflop']:,.0f} reference GFLOP{chosen_for} at "
            f"{info['machine_gflops']:.0f} GFLOP/s ({info['precision']}); thresholds "
            + ", ".join(f"{k} ≥ {v:,.0f}" for k, v in info["candidates"].items()))
