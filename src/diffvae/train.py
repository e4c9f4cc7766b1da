"""One training loop for every family, in pieces (the split of improved-diffusion's TrainLoop):

* :class:`BatchSource` — global batch ``step`` as (inputs, labels or None), this rank's slice;
* :class:`TrainState` — model, EMA, optimizer, step; ``restore`` / ``checkpoint`` (exact resume);
* :func:`train_step` = :func:`forward_backward` + :func:`optimize` — the one step (benchmarks call it too);
* :class:`BudgetSchedule` — ``steps`` or a wall-clock budget, and the learning rate;
* :class:`MetricsAccumulator` — the means logged to ``metrics.jsonl``;
* :class:`TrainLoop` — run_loop → run_step → log_step → save; :func:`train` builds and runs it.

AdamW (fused where torch has it for the device: :func:`adamw`), linear warm-up then cosine decay,
gradient clipping, EMA weights, bf16 autocast, a progress bar, ``metrics.jsonl`` and periodic crash-safe checkpoints (see :mod:`diffvae.runs`).
Length is ``steps`` or a wall-clock ``budget_minutes``: the step rate is measured early and the
LR schedule is fitted to the number of steps that fit. With ``snapshot_first_minutes`` the run also
keeps EMA snapshots at geometric intervals of training time (:mod:`diffvae.snapshots`).

Exact resumption: the data order is a pure function of (seed, step) — a fresh permutation per
epoch from a generator seeded by ``seed`` and the epoch — and the checkpoint holds the model, EMA,
optimizer, the global RNG state and the step; so an interrupted fp32 run resumed with ``resume``
ends bit-identical to an uninterrupted one.

Data parallel: launched by ``torchrun``, each rank takes its slice of every global batch and DDP
all-reduces gradients; only rank 0 writes the run. The effective batch is ``batch_size`` (split
across ranks), so a run's hyper-parameters mean the same at any world size. Every rank starts
from the same seeded initialisation; rank r draws its training noise from its own stream
(:func:`rank_seed`), and the checkpoint holds every rank's RNG state.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffvae.colour import hflip, hflip_generator
from diffvae.conditioning import is_conditional
from diffvae.configs import TRAIN_CLI_FIELDS, TrainConfig, train_config_from_dict
from diffvae.device import (autocast, collective_device, cpu_supports_bf16, distributed_context,
                            fused_adamw_available, launched_world_size, on_rank_zero, rank_seed, resolve_device,
                            resolve_precision)
from diffvae.errors import DiffvaeError
from diffvae.holdout import BestWeights, split_for_early_stopping
from diffvae.loader import LoaderSource, batch_indices
from diffvae.monitor import Monitor
from diffvae.pack import shard_of
from diffvae.runs import RunDir, add_prefix, split_prefixed, state_dict_mismatch
from diffvae.snapshots import Compute, SnapshotRecorder, training_gflop_per_image


# ----------------------------------------------------------------------------- device & precision

def _grad_scaler(device: torch.device):
    """fp16 loss scaling (torch.amp.GradScaler; torch.cuda.amp's before torch 2.3)."""
    scaler_class = getattr(torch.amp, "GradScaler", None)
    return scaler_class(device.type) if scaler_class is not None else torch.cuda.amp.GradScaler()


def adamw(model: nn.Module, config: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """The engine's optimizer: AdamW (β = 0.9, 0.99), fused or PyTorch's default (foreach) implementation."""
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99),
                             fused=fused or None)


# ----------------------------------------------------------------------------- schedule, data order, EMA

def learning_rate(step: int, total_steps: int, base_lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``base_lr`` to ``base_lr·min_lr_ratio``:

        lr(s) = base · (s+1)/W                                          for s < W
        lr(s) = base · (r + (1 − r) · ½ (1 + cos(π (s − W)/(S − W))))   after
    """
    warmup_steps = min(warmup_steps, max(total_steps // 10, 1))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← d·θ_ema + (1 − d)·θ for parameters; buffers are copied."""
    ema_params = list(ema.parameters())
    params = list(model.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up as min(decay, (1 + s)/(10 + s)) so early averages are not stale."""
    return min(decay, (1 + step) / (10 + step))


# ----------------------------------------------------------------------------- checkpoint state

def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer's state dict into safetensors-able tensors + JSON param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"{idx}/{name}"] = torch.as_tensor(value)
    return tensors, sd["param_groups"]


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- distributed

def _gather_rng_states(device: torch.device, world: int) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state (CPU, and CUDA when training there), gathered on all ranks."""
    import torch.distributed as dist

    local = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(device)
    comm = collective_device()
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(world)]
    for name, value in local.items():
        parts = [torch.empty_like(value, device=comm) for _ in range(world)]
        dist.all_gather(parts, value.to(comm))
        for r in range(world):
            states[r][name] = parts[r].cpu()
    return states


class _LossModule(nn.Module):
    """Wraps a family model so DDP sees ``training_loss`` as ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        return self.model.training_loss(x) if labels is None else self.model.training_loss(x, labels=labels)


# ----------------------------------------------------------------------------- the engine's pieces

def wall_clock() -> float:
    """The engine's time source in seconds (tests replace it with a fake clock)."""
    return time.perf_counter()


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float
    images_per_second: float


class BatchSource:
    """Global batch ``step`` of a fixed training set, this rank's slice of it: (inputs, labels or None).

    The order is :func:`batch_indices` — a pure function of (seed, step) — so a resumed run sees the
    same batches. ``inputs`` is any tensor with the examples along dim 0 (uint8 images, or the LDM's
    posterior moments); ``labels`` (N,) travel with them (conditioning). With ``hflip``, uint8 image
    batches are mirrored (:func:`diffvae.colour.hflip`, p = 1/2) as one global batch before the rank
    slice, from a generator that is a pure function of (seed, step): resume and DDP see the same flips.
    Other inputs (a latent stage's moments) are never flipped."""

    def __init__(self, inputs: torch.Tensor, batch_size: int, seed: int, labels: torch.Tensor | None = None,
                 rank: int = 0, world: int = 1, device: torch.device | str = "cpu", hflip: bool = False):
        if inputs.shape[0] < 1:
            raise DiffvaeError("the training set is empty")
        if labels is not None and labels.shape[0] != inputs.shape[0]:
            raise DiffvaeError(f"{labels.shape[0]} labels for {inputs.shape[0]} training examples")
        self.device = torch.device(device)
        self.inputs = inputs.to(self.device)
        self.labels = labels.to(self.device) if labels is not None else None
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.n = inputs.shape[0]
        self.local_batch = min(batch_size, self.n) // world
        self.hflip = hflip and inputs.dtype == torch.uint8 and inputs.ndim == 4

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mine = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        idx = batch_indices(step, self.n, self.batch_size, self.seed).to(self.device)
        labels = self.labels[idx[mine]] if self.labels is not None else None
        if not self.hflip:
            return self.inputs[idx[mine]], labels

        return hflip(self.inputs[idx], 0.5, hflip_generator(self.seed, step))[mine], labels

    def probe(self, n: int = 8) -> torch.Tensor:
        """The first ``n`` inputs (to measure the cost of a step)."""
        return self.inputs[:min(self.n, n)]


RETARGET_TOLERANCE = 0.05  # a re-measured length within 5% of the current one leaves the schedule as it is
EXTEND_BELOW = 0.1  # a budgeted run that reaches its length with more than this share of the budget left goes on


class BudgetSchedule:
    """How long a run is and its learning rate: ``steps``, or as many as fit ``budget_minutes`` —
    the step rate is measured after a few steps and the schedule's length fixed from it, then measured
    again at every checkpoint (:meth:`retarget`: the rate since the last one, so a machine that gets busy
    or quiet mid-run still ends its LR schedule at the budget; the new length is in the checkpoint, and a
    resume starts its next window at the checkpoint's step and training time, as the uninterrupted run
    did). The budget stays a hard limit. The LR is :func:`learning_rate` over that length."""

    def __init__(self, config: TrainConfig, total_steps: int | None, step: int, elapsed: float = 0.0):
        self.config = config
        self.total_steps = total_steps
        self.budget_s = config.budget_minutes * 60.0 if config.budget_minutes is not None else None
        self.rate_from_step, self.rate_from_time = step + 3, 0.0  # the first steps are slow (allocation, kernel selection)
        self.provisional_total = total_steps or 10**9
        self.window = (step, elapsed) if total_steps is not None else None  # (step, training seconds) of the last measurement

    def finished(self, step: int, elapsed: float) -> bool:
        """True when the run is over before ``step``; a spent budget fixes ``total_steps`` there. A budgeted run
        that reaches its length with more than :data:`EXTEND_BELOW` of the budget left (its rate was measured
        during a burst of load) refits the length to the rate since the last measurement and goes on."""
        if self.total_steps is not None and step >= self.total_steps:
            if self.budget_s is None or elapsed >= (1.0 - EXTEND_BELOW) * self.budget_s or not self.retarget(step, elapsed):
                return True
            return step >= self.total_steps
        if self.budget_s is not None and elapsed >= self.budget_s:
            self.total_steps = step
            return True
        return False

    def lr(self, step: int) -> float:
        c = self.config
        return learning_rate(step, self.total_steps or self.provisional_total, c.lr, c.warmup_steps, c.min_lr_ratio)

    def after_step(self, step: int, now: float, elapsed: float) -> bool:
        """Measure the step rate in budget mode; True when it just fixed ``total_steps``."""
        if self.total_steps is not None:
            return False
        if step == self.rate_from_step:
            self.rate_from_time = now
        elif step > self.rate_from_step and (step - self.rate_from_step >= 50 or now - self.rate_from_time >= min(10.0, 0.05 * self.budget_s)):
            rate = (step - self.rate_from_step) / max(now - self.rate_from_time, 1e-9)
            self.total_steps = max(step + 1, step + int(rate * (self.budget_s - elapsed)))
            self.window = (step, elapsed)
            return True
        return False

    def retarget(self, step: int, elapsed: float) -> bool:
        """Budget mode, at a checkpoint: re-measure the rate since the last measurement and refit the length
        to the budget left (True when it changed by more than :data:`RETARGET_TOLERANCE`)."""
        if self.budget_s is None or self.total_steps is None:
            return False
        if self.window is None:
            self.window = (step, elapsed)
            return False
        start_step, start_elapsed = self.window
        self.window = (step, elapsed)
        if step <= start_step or elapsed <= start_elapsed:
            return False
        rate = (step - start_step) / (elapsed - start_elapsed)
        target = max(step + 1, step + int(rate * max(self.budget_s - elapsed, 0.0)))
        if abs(target - self.total_steps) <= RETARGET_TOLERANCE * self.total_steps:
            return False
        self.total_steps = target
        return True


class MetricsAccumulator:
    """Means of the step logs (loss, gradient norm, the family's logs) between two metrics rows, and
    the images per second since the last row."""

    def __init__(self, step: int, now: float):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last_time, self.last_step = now, step

    def add(self, values: dict[str, float]) -> None:
        self.count += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def row(self, step: int, lr: float, now: float, elapsed: float, batch_size: int) -> dict[str, float]:
        """The metrics row for ``step``; starts the next interval."""
        row = {k: v / self.count for k, v in self.sums.items()}
        row.update(step=step, lr=lr, elapsed=round(elapsed, 3),
                   images_per_s=(step - self.last_step) * batch_size / max(now - self.last_time, 1e-9))
        self.sums, self.count = {}, 0
        self.last_time, self.last_step = now, step
        return row


@dataclass
class StepSettings:
    """How one optimizer step runs: precision, clipping, EMA, and the world it runs in."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    grad_clip: float
    ema_decay: float
    world: int = 1


@dataclass
class TrainState:
    """Everything a run carries from step to step: the model, its EMA, the optimizer, the step, the
    schedule's length and the time trained before this process. :meth:`checkpoint` and
    :meth:`restore` write and read it (with every rank's RNG state) for exact resumption."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    total_steps: int | None = None
    elapsed_before: float = 0.0
    loss: float = float("nan")
    scaler: Any = None  # torch.amp.GradScaler of an fp16 run (loss scaling), else None

    @classmethod
    def new(cls, model: nn.Module, config: TrainConfig, device: torch.device) -> "TrainState":
        model = model.to(device)
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = adamw(model, config, bool(config.fused_adamw) and fused_adamw_available(device))
        scaler = _grad_scaler(device) if config.precision == "fp16" else None
        return cls(model, ema, opt, total_steps=config.steps, scaler=scaler)

    def restore(self, run: RunDir, config: TrainConfig, rank: int, device: torch.device) -> None:
        """Continue from ``run``'s checkpoint: weights, optimizer, step, this rank's RNG state."""
        tensors, meta = run.load_checkpoint()
        _load_state(self.model, split_prefixed(tensors, "model"), run)
        _load_state(self.ema, split_prefixed(tensors, "ema"), run)
        fused = bool(meta.get("fused_adamw", False))  # the optimizer that wrote the checkpoint (older runs: the default)
        if fused != bool(self.optimizer.defaults.get("fused")):
            self.optimizer = adamw(self.model, config, fused and fused_adamw_available(device))
        load_optimizer_tensors(self.optimizer, split_prefixed(tensors, "optimizer"), meta["optimizer_param_groups"])
        self.step = int(meta["step"])
        if _rng_key("torch", rank) in tensors:
            torch.set_rng_state(tensors[_rng_key("torch", rank)])
        else:  # resumed with more processes than saved it: a fresh, still seeded, stream
            torch.manual_seed(rank_seed(config.seed + self.step, rank))
        if device.type == "cuda" and _rng_key("cuda", rank) in tensors:
            torch.cuda.set_rng_state(tensors[_rng_key("cuda", rank)], device)
        self.total_steps = meta.get("total_steps") or self.total_steps
        self.elapsed_before = float(meta.get("elapsed", 0.0))
        self.loss = float(meta.get("loss", float("nan")))
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])

    def checkpoint(self, run: RunDir | None, elapsed: float, rank: int, world: int, device: torch.device,
                   extra_metadata: dict[str, Any] | None = None, extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write the checkpoint (rank 0; every rank takes part in gathering the RNG states)."""
        if run is None:
            return
        rng_states = _gather_rng_states(device, world) if world > 1 else [{"torch": torch.get_rng_state()}]
        if rank != 0:
            return
        if device.type == "cuda" and world == 1:
            rng_states[0]["cuda"] = torch.cuda.get_rng_state(device)
        opt_tensors, groups = optimizer_tensors(self.optimizer)
        tensors = {**add_prefix(self.model.state_dict(), "model"), **add_prefix(self.ema.state_dict(), "ema"),
                   **add_prefix(opt_tensors, "optimizer"), **(extra_tensors or {})}
        for r, states in enumerate(rng_states):
            tensors.update({_rng_key(name, r): value for name, value in states.items()})
        meta = {"step": self.step, "total_steps": self.total_steps, "optimizer_param_groups": groups, "loss": self.loss,
                "elapsed": elapsed, "world_size": world, "fused_adamw": bool(self.optimizer.defaults.get("fused")),
                **(extra_metadata or {})}
        if self.scaler is not None:
            meta["grad_scaler"] = self.scaler.state_dict()
        run.save_checkpoint(tensors, meta)


def train_step(state: TrainState, x: torch.Tensor, settings: StepSettings, lr: float | None = None,
               run: RunDir | None = None, loss_module: nn.Module | None = None,
               labels: torch.Tensor | None = None) -> dict[str, float]:
    """One optimizer step (improved-diffusion's run_step = forward_backward + optimize): the family's
    ``set_step``, the loss under autocast, backward, gradient clipping, AdamW at ``lr`` (None: as
    set), the EMA update. NaN/Inf stops the run with one line. Returns the step's logs (``loss``,
    ``grad_norm`` and the family's). ``loss_module`` is the model's loss as a module (DDP wraps it;
    default: ``state.model.training_loss``). The engine and benchmarks/bench_train.py both call it."""
    model = state.model
    loss_module = loss_module if loss_module is not None else _LossModule(model)
    if lr is not None:
        for group in state.optimizer.param_groups:
            group["lr"] = lr
    if hasattr(model, "set_step"):
        model.set_step(state.step)
    loss, logs = forward_backward(state, loss_module, x, settings, run, labels)  # labels: conditional runs only
    grad_norm = optimize(state, settings, run)
    state.step += 1
    state.loss = float(loss.detach())
    return {"loss": state.loss, "grad_norm": float(grad_norm), **logs}


def forward_backward(state: TrainState, loss_module: nn.Module, x: torch.Tensor, settings: StepSettings,
                     run: RunDir | None = None, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    with autocast(settings.device, settings.autocast_dtype):
        loss, logs = loss_module(x) if labels is None else loss_module(x, labels)
    if not _finite_on_every_rank(loss, settings.world):  # checked together so that no rank waits for a dead one
        _stop_non_finite(state.step, "loss", run)
    state.optimizer.zero_grad(set_to_none=True)
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
    return loss, logs


def optimize(state: TrainState, settings: StepSettings, run: RunDir | None = None) -> torch.Tensor:
    """Clip, step, EMA. fp16 (``state.scaler``): gradients are unscaled before clipping, and an
    overflow skips the step and lowers the loss scale (GradScaler) instead of stopping the run."""
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), settings.grad_clip)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    elif not torch.isfinite(grad_norm):
        _stop_non_finite(state.step, "gradient", run)
    else:
        state.optimizer.step()
    ema_update(state.ema, state.model, ema_decay_at(state.step, settings.ema_decay))
    return grad_norm


# ----------------------------------------------------------------------------- the loop

def train(
    model: nn.Module,
    images: torch.Tensor,
    config: TrainConfig,
    run: RunDir | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    description: str = "train",
    extra_metadata: dict[str, Any] | None = None,
    compute_before: Compute | None = None,
    labels: torch.Tensor | None = None,
    source: BatchSource | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Train ``model`` (a family model with ``training_loss``) on ``images`` (N, ...; uint8 images, or
    any tensor its ``training_loss`` takes), with optional ``labels`` (N,) carried by the batch source.
    ``source`` replaces the in-memory :class:`BatchSource` (e.g. one reading a packed split): any object
    with ``n``, ``batch(step) -> (inputs, labels or None)`` (this rank's slice, in :func:`batch_indices`
    order) and ``probe()``, built for this rank and world.

    Returns (ema_model, result). With ``run``, writes metrics and checkpoints there; with
    ``resume``, continues from the run's checkpoint exactly. With ``config.snapshot_first_minutes``,
    writes EMA snapshots there too (:mod:`diffvae.snapshots`); ``compute_before`` is the cost of the
    model's earlier stages, counted in their minutes and GFLOP.
    """
    config.validate()
    rank, world, device = _placement(config)
    if (source.n if source is not None else images.shape[0]) < 1:
        raise DiffvaeError("the training set is empty")
    if config.batch_size % world:
        raise DiffvaeError(f"--batch {config.batch_size} must be divisible by the number of processes ({world})")
    if is_conditional(model) and (labels if source is None else getattr(source, "labels", True)) is None:
        raise DiffvaeError("a conditional model needs labelled training data (these images have no labels)")
    torch.set_flush_denormal(True)  # subnormal floats (tiny gradients, Adam moments) slow CPUs by 10-100×
    best = None
    if config.early_stop_every:  # a validation part of the training images, never trained on (diffvae.holdout)
        images, labels, best = split_for_early_stopping(model, images, labels, source, config, device)
    torch.manual_seed(rank_seed(config.seed, rank))
    state = TrainState.new(model, config, device)
    if _start(state, run, config, rank, device, resume, best):
        return state.ema.eval(), TrainResult(state.step, state.elapsed_before, state.loss, 0.0)
    if source is None and shard_of(images) is not None:  # a packed split (diffvae.pack): read batches, never map it all
        source = LoaderSource(images, config.batch_size, config.seed, labels, rank, world, device, hflip=config.hflip)
    source = source or BatchSource(images, config.batch_size, config.seed, labels, rank, world, device, hflip=config.hflip)
    settings = StepSettings(device, resolve_precision(config.precision, device), config.grad_clip, config.ema_decay, world)
    loop = TrainLoop(state, source, config, settings, run, rank=rank, description=description, progress=progress,
                     extra_metadata=extra_metadata, compute_before=compute_before, resume=resume,
                     best=best if rank == 0 else None)
    return loop.run_loop()


def _placement(config: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device): under torchrun on CUDA each rank takes its LOCAL_RANK's GPU."""
    rank, world = distributed_context()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return rank, world, device


def _start(state: TrainState, run: RunDir | None, config: TrainConfig, rank: int, device: torch.device, resume: bool,
           best: BestWeights | None = None) -> bool:
    """Restore ``state`` (and ``best``) to resume (True: the run had already finished), or start the metrics afresh."""
    if resume:
        if run is None:
            raise DiffvaeError("resume needs a run directory")
        state.restore(run, config, rank, device)
        if best is not None:
            best.restore(*run.load_checkpoint())
        if rank == 0:
            run.truncate_metrics(state.step)
        if state.total_steps is not None and state.step >= state.total_steps:
            return True
        state.loss = float("nan")  # the loss of this process's steps
    elif run is not None and rank == 0 and run.metrics_path.exists():
        run.truncate_metrics(0)  # a (stage) restarted from scratch after a crash logs from scratch too
    return False


class TrainLoop:
    """run_loop → run_step → (train_step) → log → save, as improved-diffusion's TrainLoop."""

    def __init__(self, state: TrainState, source: BatchSource, config: TrainConfig, settings: StepSettings,
                 run: RunDir | None, *, rank: int, description: str, progress: bool, extra_metadata: dict[str, Any] | None,
                 compute_before: Compute | None, resume: bool, best: BestWeights | None = None):
        self.state, self.source, self.config, self.settings, self.run, self.rank = state, source, config, settings, run, rank
        self.extra_metadata, self.best = extra_metadata, best
        self.loss_module: nn.Module = _LossModule(state.model)
        if settings.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device = settings.device
            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.snapshots = None
        if run is not None and rank == 0:
            batch = min(config.batch_size, source.n)
            self.snapshots = SnapshotRecorder.open(run.path, config, step=state.step, resume=resume, batch=batch,
                                                   before=compute_before or Compute(), clock=wall_clock,
                                                   measure=lambda: training_gflop_per_image(state.model, source.probe()))
        self.schedule = BudgetSchedule(config, state.total_steps, state.step, state.elapsed_before)
        self.first_step = state.step

        self.monitor = Monitor.open(run, config, state, device=settings.device, rank=rank, resume=resume)
        self.bar = _progress_bar(state.total_steps, state.step, description, enabled=progress and rank == 0)

    def run_loop(self) -> tuple[nn.Module, TrainResult]:
        state = self.state
        self.start = wall_clock() - state.elapsed_before
        self.metrics = MetricsAccumulator(state.step, wall_clock())
        try:  # an interrupt or a NaN closes the progress bar first, so the error line stands on its own
            state.model.train()
            while not self.schedule.finished(state.step, wall_clock() - self.start if self.schedule.budget_s is not None else 0.0):
                self.run_step()
        except BaseException:
            if self.bar is not None:
                self.bar.close()
            raise
        state.total_steps = self.schedule.total_steps
        if self.best is not None:  # the last step measured too, then the run ends with the best weights
            self.measure_holdout(force=True)
            self.best.load_into(state.ema)
        elapsed = wall_clock() - self.start
        if self.snapshots is not None:
            self.snapshots.finish(state.step, elapsed, state.ema)  # before the checkpoint: a saved final step has its snapshot
        self.save(elapsed)
        if self.monitor is not None:
            self.monitor.close()
        if self.bar is not None:
            self.bar.close()
        state.ema.eval()
        images_per_s = (state.step - self.first_step) * self.config.batch_size / max(elapsed - state.elapsed_before, 1e-9)
        return state.ema, TrainResult(state.step, elapsed, state.loss, images_per_s)

    def run_step(self) -> None:
        state, schedule = self.state, self.schedule
        lr = schedule.lr(state.step)
        x, y = self.source.batch(state.step)
        labels = y if is_conditional(state.model) else None  # only a conditional model is given labels
        if labels is None and is_conditional(state.model):
            raise DiffvaeError("a conditional model needs labelled training data (this batch source gives no labels)")
        logs = train_step(state, x, self.settings, lr, self.run, self.loss_module, labels)
        self.metrics.add(logs)
        if schedule.total_steps is None:  # budget mode: measure the step rate, then fix the schedule's length
            now = wall_clock()
            if schedule.after_step(state.step, now, now - self.start) and self.bar is not None:
                self.bar.total = schedule.total_steps
                self.bar.refresh()
        state.total_steps = schedule.total_steps
        if self.monitor is not None:  # before the step's metrics row and checkpoint: both include what it wrote
            self.monitor.after_step(state.step, state.ema)
        self.measure_holdout()
        self.log_step(lr)
        if self.bar is not None:
            self.bar.update(1)
        if self.snapshots is not None:
            self.snapshots.after_step(state.step, wall_clock() - self.start, state.ema)
        if state.step % self.config.checkpoint_every == 0 and state.step != state.total_steps:  # the last step is saved below
            elapsed = wall_clock() - self.start
            # the step rate again, under the load of now; recorded in the checkpoint (one process only: ranks would each
            # measure their own rate and could disagree on the length)
            if self.settings.world == 1 and schedule.retarget(state.step, elapsed):
                state.total_steps = schedule.total_steps
                if self.bar is not None:
                    self.bar.total = schedule.total_steps
                    self.bar.refresh()
            self.save(elapsed)

    def measure_holdout(self, force: bool = False) -> None:
        """Early stopping (diffvae.holdout): the held-out bound every ``early_stop_every`` steps, as a metrics row."""
        step = self.state.step
        if self.best is not None and (self.best.due(step) or (force and step != self.best.measured_step)):
            row = self.best.measure(step, self.state.ema)
            if self.run is not None:
                self.run.append_metrics(row)

    def log_step(self, lr: float) -> None:
        step = self.state.step
        if step % self.config.log_every == 0 or step == self.state.total_steps:
            now = wall_clock()
            row = self.metrics.row(step, lr, now, now - self.start, self.config.batch_size)
            if self.run is not None and self.rank == 0:
                self.run.append_metrics(row)
            if self.monitor is not None:
                self.monitor.log_row(row)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)

    def save(self, elapsed: float) -> None:
        best = self.best.metadata() if self.best is not None else {}
        self.state.checkpoint(self.run, elapsed, self.rank, self.settings.world, self.settings.device,
                              {**(self.extra_metadata or {}), **best}, self.best.tensors() if self.best is not None else None)


def _rng_key(name: str, rank: int) -> str:
    """Checkpoint key of a rank's RNG state: ``rng/torch`` for rank 0, ``rng/torch/rank1``, ..."""
    return f"rng/{name}" if rank == 0 else f"rng/{name}/rank{rank}"


def _finite_on_every_rank(value: torch.Tensor, world: int) -> bool:
    finite = bool(torch.isfinite(value))
    if world == 1:
        return finite
    import torch.distributed as dist

    flag = torch.tensor([int(not finite)], device=collective_device())
    dist.all_reduce(flag)
    return flag.item() == 0


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], run: RunDir) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DiffvaeError(f"{run.checkpoint_path} does not match the run's config.json ({state_dict_mismatch(e)})") from None


def _stop_non_finite(step: int, what: str, run: RunDir | None) -> None:
    kept = f"; the last good checkpoint in {run.path} is kept" if run is not None and run.checkpoint_path.exists() else ""
    raise DiffvaeError(f"the {what} became NaN/Inf at step {step}{kept} — try a lower --lr or --precision fp32")


def _progress_bar(total: int | None, initial: int, description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True, leave=True)


