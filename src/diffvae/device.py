"""Where and how precisely the work runs: the device (auto → cuda, mps, cpu), the autocast dtype of a
precision name (auto = bf16 where the hardware runs it natively), and the rank/world of a torchrun launch
(with the one helper that runs a step on rank 0 while the others wait). The bottom of the package: it
imports nothing from diffvae but errors."""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import torch

from diffvae.errors import DiffvaeError


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available, else mps (Apple) if available, else cpu; validates explicit names."""
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_available:
            raise DiffvaeError("--device mps: Apple's MPS backend is not available in this torch build or machine (use --device cpu)")
        return torch.device("mps")
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
    raise DiffvaeError(f"--device must be auto, cpu, cuda[:N] or mps, got {name!r}")


@functools.lru_cache(maxsize=None)
def fused_adamw_available(device: torch.device) -> bool:
    """True where ``torch.optim.AdamW(fused=True)`` runs on ``device`` (CUDA; CPU from torch 2.4). Its
    optimizer step is 25× faster than the default one on a CPU (benchmarks/bench_speed_defaults.py) and it
    resumes bit-exactly; its updates differ from the default's by float rounding (~1e-5 after 6 steps)."""
    try:
        param = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.AdamW([param], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


CPU_KINDS = ("amx", "avx512_bf16", "avx2")  # the CPU kinds whose paths differ (DEVELOPERS.md); avx2: no native bf16
CPU_KIND_VARIABLE = "DIFFVAE_CPU_KIND"  # forces a kind's paths on another machine (tests/test_cpu_kinds.py)


def cpu_kind() -> str:
    """This CPU's kind: ``amx`` (Intel AMX tiles), ``avx512_bf16`` (AVX-512 with bf16 instructions) or ``avx2``
    (neither: bf16 is emulated, several times slower than fp32). ``$DIFFVAE_CPU_KIND`` forces a kind, so a test can
    take another kind's paths on the machine at hand; with ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` set
    too, torch's own kernels are restricted to that kind's instructions."""
    forced = os.environ.get(CPU_KIND_VARIABLE, "").strip()
    if forced:
        if forced not in CPU_KINDS:
            raise DiffvaeError(f"${CPU_KIND_VARIABLE} must be one of {', '.join(CPU_KINDS)}, got {forced!r}")
        return forced
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return "amx" if amx and amx() else "avx512_bf16" if avx512_bf16 and avx512_bf16() else "avx2"


def cpu_supports_bf16() -> bool:
    """True where bf16 matmuls run natively (AVX-512 bf16 or AMX)."""
    return cpu_kind() != "avx2"


def busy_cores_elsewhere(interval: float = 0.5, stat_path: str = "/proc/stat") -> float | None:
    """How many cores other processes kept busy over the next ``interval`` seconds: the machine's busy time
    (``/proc/stat``: all but idle and iowait) less this process's own CPU time, per second. None where the
    kernel offers no ``/proc/stat`` (macOS, Windows)."""
    def machine_busy() -> float | None:
        try:
            with open(stat_path) as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 4:
            return None
        return (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)) / os.sysconf("SC_CLK_TCK")

    def own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    busy0, own0, t0 = machine_busy(), own(), time.perf_counter()
    if busy0 is None:
        return None
    time.sleep(interval)
    busy1, own1 = machine_busy(), own()
    if busy1 is None:
        return None
    return max(0.0, (busy1 - busy0 - (own1 - own0)) / max(1e-9, time.perf_counter() - t0))


def threads_beside(busy_elsewhere: float | None, limit: int, cores: int | None = None) -> int:
    """CPU threads for torch when ``busy_elsewhere`` cores are taken by other processes: the cores left
    (at least 1, at most ``limit``, the count the run started with). On a busy machine fewer threads run
    faster than more: a thread that waits for a core holds up the others at every barrier (RESULTS.md,
    "A budget under load")."""
    if busy_elsewhere is None:
        return limit
    cores = cores or os.cpu_count() or 1
    return max(1, min(limit, cores - int(round(busy_elsewhere))))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto`` picks bf16 where the hardware does it natively."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "mps":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A bf16/fp16 autocast context, or a no-op one for fp32."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


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


def collective_device() -> torch.device:
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

        failed = torch.tensor([int(error is not None)], device=collective_device())
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
