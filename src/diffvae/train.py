"""One training loop for every family.

AdamW, linear warm-up then cosine decay, gradient clipping, EMA weights, bf16 autocast, a
progress bar, ``metrics.jsonl`` and periodic crash-safe checkpoints (see :mod:`diffvae.runs`).
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
from typing import Any, Callable

import torch
from torch import nn

from diffvae.errors import DiffvaeError
from diffvae.ranges import TRAIN_RANGES, train_flag
from diffvae.runs import RunDir, add_prefix, split_prefixed, state_dict_mismatch
from diffvae.snapshots import Compute, SnapshotRecorder, training_gflop_per_image


@dataclass
class TrainConfig:
    steps: int | None = None  # train this many optimizer steps ...
    budget_minutes: float | None = None  # ... or as many as fit in this wall-clock budget
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every: int = 500
    log_every: int = 10
    snapshot_first_minutes: float | None = None  # EMA snapshots after this many training minutes ... (None/0 = off)
    snapshot_factor: float = 2.0  # ... then each time the training minutes grow by this factor (diffvae.snapshots)
    recipe: str | None = None  # the compute-aware recipe a --budget run was given (diffvae.recipes), for the record

    def validate(self) -> None:
        if self.steps is None and self.budget_minutes is None:
            raise DiffvaeError("give --steps N or --budget MINUTES")
        for field, allowed in TRAIN_RANGES.items():  # every number within its range (diffvae.ranges)
            value = getattr(self, field)
            if value is not None or field not in ("steps", "budget_minutes"):
                allowed.check(value, train_flag(field))
        if self.precision not in ("auto", "bf16", "fp32"):
            raise DiffvaeError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not isinstance(self.device, str):
            raise DiffvaeError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        first = self.snapshot_first_minutes
        if first is not None and not (first >= 0 and math.isfinite(first)):
            raise DiffvaeError(f"snapshot_first_minutes must be a number of minutes >= 0, got {first}")
        if not (self.snapshot_factor > 1 and math.isfinite(self.snapshot_factor)):
            raise DiffvaeError(f"snapshot_factor must be a number > 1, got {self.snapshot_factor}")
        resolve_device(self.device)


# ----------------------------------------------------------------------------- device & precision

def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available else cpu; validates explicit names."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DiffvaeError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise DiffvaeError(f"--device {name!r} is not a valid device") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DiffvaeError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise DiffvaeError(f"--device must be auto, cpu or cuda[:N], got {name!r}")


def cpu_supports_bf16() -> bool:
    """True where bf16 matmuls run natively (AVX-512 bf16 or AMX)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto`` picks bf16 where the hardware does it natively."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A bf16 autocast context, or a no-op one for fp32."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


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


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """The dataset indices of global batch ``step``: a pure function of (seed, step).

    Each epoch is a permutation drawn from a generator seeded by (seed, epoch); batches never
    straddle epochs (the last partial batch of an epoch is dropped when n ≥ batch_size).
    """
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[k * batch_size:(k + 1) * batch_size]


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

def distributed_context() -> tuple[int, int]:
    """(rank, world_size); initialises torch.distributed when launched by torchrun."""
    world = launched_world_size()
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("DIFFVAE_BACKEND", "") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when unset); refused in one line when it is not a positive
    integer or when the other variables a launcher sets (RANK, MASTER_ADDR, MASTER_PORT) are missing."""
    text = os.environ.get("WORLD_SIZE", "1").strip()
    if not text.isdigit() or int(text) < 1:
        raise DiffvaeError(f"WORLD_SIZE must be a positive integer, got {text!r}; unset it or launch with torchrun")
    world = int(text)
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if world > 1 and name not in os.environ]
    if missing:
        raise DiffvaeError(f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                           "not: launch with torchrun, or unset WORLD_SIZE for one process")
    return world


def _collective_device() -> torch.device:
    """Where tensors for a collective must live: the rank's GPU under NCCL, else the CPU (gloo)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def on_rank_zero(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only while the other ranks wait; if it raised, every rank raises.

    Used to create the run directory and write its config.json exactly once. No rank hangs
    on a failure and no rank sees rank 0's freshly created folder as someone else's run.
    """
    rank, world = distributed_context()
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except DiffvaeError as e:
            error = e
    if world > 1:
        import torch.distributed as dist

        failed = torch.tensor([int(error is not None)], device=_collective_device())
        dist.broadcast(failed, src=0)
        if rank != 0 and failed.item():
            raise DiffvaeError("rank 0 could not prepare the run (see its error)")
    if error is not None:
        raise error
    return result


def rank_seed(seed: int, rank: int) -> int:
    """The global-RNG seed of ``rank``: ``seed`` on rank 0 (so a 1-process run uses the same
    stream), a distinct stream on every other rank so ranks never draw the same noise."""
    return seed + rank * 2**32


def _gather_rng_states(device: torch.device, world: int) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state (CPU, and CUDA when training there), gathered on all ranks."""
    import torch.distributed as dist

    local = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(device)
    comm = _collective_device()
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

    def forward(self, x: torch.Tensor):
        return self.model.training_loss(x)


# ----------------------------------------------------------------------------- the loop

def wall_clock() -> float:
    """The engine's time source in seconds (tests replace it with a fake clock)."""
    return time.perf_counter()


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float
    images_per_second: float


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
) -> tuple[nn.Module, TrainResult]:
    """Train ``model`` (a family model with ``training_loss``) on uint8 ``images`` (N, C, H, W).

    Returns (ema_model, result). With ``run``, writes metrics and checkpoints there; with
    ``resume``, continues from the run's checkpoint exactly. With ``config.snapshot_first_minutes``,
    writes EMA snapshots there too (:mod:`diffvae.snapshots`); ``compute_before`` is the cost of the
    model's earlier stages, counted in their minutes and GFLOP.
    """
    config.validate()
    rank, world = distributed_context()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    autocast_dtype = resolve_precision(config.precision, device)
    n = images.shape[0]
    if n < 1:
        raise DiffvaeError("the training set is empty")
    if config.batch_size % world:
        raise DiffvaeError(f"--batch {config.batch_size} must be divisible by the number of processes ({world})")

    torch.set_flush_denormal(True)  # subnormal floats (tiny gradients, Adam moments) slow CPUs by 10-100×
    torch.manual_seed(rank_seed(config.seed, rank))
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    step = 0
    total_steps = config.steps
    elapsed_before = 0.0
    if resume:
        if run is None:
            raise DiffvaeError("resume needs a run directory")
        tensors, meta = run.load_checkpoint()
        _load_state(model, split_prefixed(tensors, "model"), run)
        _load_state(ema, split_prefixed(tensors, "ema"), run)
        load_optimizer_tensors(opt, split_prefixed(tensors, "optimizer"), meta["optimizer_param_groups"])
        step = int(meta["step"])
        if _rng_key("torch", rank) in tensors:
            torch.set_rng_state(tensors[_rng_key("torch", rank)])
        else:  # resumed with more processes than saved it: a fresh, still seeded, stream
            torch.manual_seed(rank_seed(config.seed + step, rank))
        if device.type == "cuda" and _rng_key("cuda", rank) in tensors:
            torch.cuda.set_rng_state(tensors[_rng_key("cuda", rank)], device)
        total_steps = meta.get("total_steps") or total_steps
        elapsed_before = float(meta.get("elapsed", 0.0))
        if rank == 0:
            run.truncate_metrics(step)
        if total_steps is not None and step >= total_steps:
            return ema.eval(), TrainResult(step, elapsed_before, float(meta.get("loss", float("nan"))), 0.0)
    elif run is not None and rank == 0 and run.metrics_path.exists():
        run.truncate_metrics(0)  # a (stage) restarted from scratch after a crash logs from scratch too

    first_step = step
    loss_module: nn.Module = _LossModule(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    data = images.to(device)
    local_batch = min(config.batch_size, n) // world
    snapshots = None
    if run is not None and rank == 0:
        snapshots = SnapshotRecorder.open(run.path, config, step=step, resume=resume, batch=min(config.batch_size, n),
                                          before=compute_before or Compute(), clock=wall_clock,
                                          measure=lambda: training_gflop_per_image(model, data[:min(n, 8)]))

    def save(loss_value: float, elapsed: float) -> None:
        if run is None:
            return
        rng_states = _gather_rng_states(device, world) if world > 1 else [{"torch": torch.get_rng_state()}]
        if rank != 0:
            return
        if device.type == "cuda" and world == 1:
            rng_states[0]["cuda"] = torch.cuda.get_rng_state(device)
        opt_tensors, groups = optimizer_tensors(opt)
        tensors = {
            **add_prefix(model.state_dict(), "model"),
            **add_prefix(ema.state_dict(), "ema"),
            **add_prefix(opt_tensors, "optimizer"),
        }
        for r, states in enumerate(rng_states):
            tensors.update({_rng_key(name, r): value for name, value in states.items()})
        meta = {"step": step, "total_steps": total_steps, "optimizer_param_groups": groups, "loss": loss_value,
                "elapsed": elapsed, "world_size": world, **(extra_metadata or {})}
        run.save_checkpoint(tensors, meta)

    budget_s = config.budget_minutes * 60.0 if config.budget_minutes is not None else None
    rate_from_step, rate_from_time = step + 3, 0.0  # the first steps are slow (allocation, kernel selection)
    provisional_total = total_steps or 10**9
    bar = _progress_bar(total_steps, step, description, enabled=progress and rank == 0)
    start = wall_clock() - elapsed_before
    last_log_time, last_log_step = wall_clock(), step
    log_sums: dict[str, float] = {}
    log_count = 0
    loss_value = float("nan")
    try:  # an interrupt or a NaN closes the progress bar first, so the error line stands on its own
        model.train()
        while True:
            if total_steps is not None and step >= total_steps:
                break
            if budget_s is not None and wall_clock() - start >= budget_s:
                total_steps = step  # the budget is a hard limit even if the measured rate drifts
                break
            lr = learning_rate(step, total_steps or provisional_total, config.lr, config.warmup_steps, config.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
            if hasattr(model, "set_step"):
                model.set_step(step)
            idx = batch_indices(step, n, config.batch_size, config.seed)[rank * local_batch:(rank + 1) * local_batch]
            with autocast(device, autocast_dtype):
                loss, logs = loss_module(data[idx.to(device)])
            if not _finite_on_every_rank(loss, world):  # checked together so that no rank waits for a dead one
                _stop_non_finite(step, "loss", run)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if not torch.isfinite(grad_norm):
                _stop_non_finite(step, "gradient", run)
            opt.step()
            ema_update(ema, model, ema_decay_at(step, config.ema_decay))
            step += 1
            loss_value = float(loss.detach())
            log_count += 1
            for k, v in {"loss": loss_value, "grad_norm": float(grad_norm), **logs}.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v)

            if total_steps is None:  # budget mode: measure the step rate, then fix the schedule's length
                now = wall_clock()
                if step == rate_from_step:
                    rate_from_time = now
                elif step > rate_from_step and (step - rate_from_step >= 50 or now - rate_from_time >= min(10.0, 0.05 * budget_s)):
                    rate = (step - rate_from_step) / max(now - rate_from_time, 1e-9)
                    total_steps = max(step + 1, step + int(rate * (budget_s - (now - start))))
                    if bar is not None:
                        bar.total = total_steps
                        bar.refresh()
            if step % config.log_every == 0 or step == total_steps:
                now = wall_clock()
                row = {k: v / log_count for k, v in log_sums.items()}
                row.update(step=step, lr=lr, elapsed=round(now - start, 3),
                           images_per_s=(step - last_log_step) * config.batch_size / max(now - last_log_time, 1e-9))
                if run is not None and rank == 0:
                    run.append_metrics(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
                log_sums, log_count = {}, 0
                last_log_time, last_log_step = now, step
            if bar is not None:
                bar.update(1)
            if snapshots is not None:
                snapshots.after_step(step, wall_clock() - start, ema)
            if step % config.checkpoint_every == 0 and step != total_steps:  # the last step is saved below
                save(loss_value, wall_clock() - start)
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    elapsed = wall_clock() - start
    if snapshots is not None:
        snapshots.finish(step, elapsed, ema)  # before the checkpoint: a saved final step has its snapshot
    save(loss_value, elapsed)
    if bar is not None:
        bar.close()
    ema.eval()
    return ema, TrainResult(step, elapsed, loss_value, (step - first_step) * config.batch_size / max(elapsed - elapsed_before, 1e-9))


def _rng_key(name: str, rank: int) -> str:
    """Checkpoint key of a rank's RNG state: ``rng/torch`` for rank 0, ``rng/torch/rank1``, ..."""
    return f"rng/{name}" if rank == 0 else f"rng/{name}/rank{rank}"


def _finite_on_every_rank(value: torch.Tensor, world: int) -> bool:
    finite = bool(torch.isfinite(value))
    if world == 1:
        return finite
    import torch.distributed as dist

    flag = torch.tensor([int(not finite)], device=_collective_device())
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


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    known = {f for f in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{k: v for k, v in d.items() if k in known})

