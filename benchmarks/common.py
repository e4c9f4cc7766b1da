"""Shared benchmark helpers: the machine's matmul peak, FLOP counting, and a warm-up timer.

Numbers measured on a shared machine are noisy: every timer here reports the *best* of several
repeats (the run least disturbed by other processes), which is the usual convention for throughput.
Timers take a ``clock``: wall time (``time.perf_counter``, the default) or, for one-thread runs on a
busy machine, this process's CPU time (``time.process_time``), which other processes cannot inflate.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}

import torch
from torch.utils.flop_counter import FlopCounterMode


def autocast_context(dtype: torch.dtype):
    """``torch.autocast`` on CPU for bf16/fp16, a no-op context for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def peak_matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5, clock: Clock = time.perf_counter) -> float:
    """Best achieved GFLOP/s of a square ``size``×``size`` matmul (2·size³ FLOPs) in ``dtype``.

    This is the practical peak of the BLAS/oneDNN kernels on this machine with the current thread
    count; a network's achieved GFLOP/s is reported as a share of it.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    flops = 2.0 * size**3
    seconds = best_time(lambda: torch.mm(a, b), warmup=2, repeats=repeats, clock=clock)
    return flops / seconds / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs (multiply-add = 2) of the matmuls/convolutions/attention that ``fn()`` runs, forward and backward.

    Uses ``torch.utils.flop_counter.FlopCounterMode``, which counts the ops with known formulas
    (mm, bmm, addmm, convolution and its backward …) and ignores elementwise work (norms,
    activations, the optimizer), as is conventional. Torch's CPU flash-attention kernel is not
    counted; attention written as matmuls is.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def best_time(fn: Callable[[], object], warmup: int = 2, repeats: int = 5, clock: Clock = time.perf_counter) -> float:
    """Seconds (on ``clock``) of the fastest of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls."""
    return time_calls(fn, warmup, repeats, clock).best


@dataclass
class Timing:
    """Per-call seconds of a timed function: best and median over the repeats."""

    best: float
    median: float


def time_calls(fn: Callable[[], object], warmup: int = 2, repeats: int = 5, clock: Clock = time.perf_counter) -> Timing:
    """Best and median seconds (on ``clock``) of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    times.sort()
    return Timing(best=times[0], median=times[len(times) // 2])


def machine_info() -> dict[str, object]:
    """What the numbers were measured on: CPU, threads, torch version, and the load average (other processes)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` as indented JSON, creating the parent directory."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def peak_conv_gflops(
    dtype: torch.dtype, batch: int = 16, channels: int = 128, size: int = 32, repeats: int = 5, clock: Clock = time.perf_counter
) -> float:
    """Best achieved GFLOP/s of a 3×3, ``channels``→``channels`` convolution forward (oneDNN) in ``dtype``.

    FLOPs = 2·9·channels²·size²·batch. On some CPUs (e.g. AMD with MKL's sgemm) oneDNN's convolution
    runs faster than ``torch.mm``; the larger of the two is the honest denominator for "% of peak".
    """
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(channels, channels, 3, 3, generator=generator).to(dtype)
    x = torch.randn(batch, channels, size, size, generator=generator).to(dtype)
    flops = 2.0 * 9 * channels**2 * size**2 * batch
    with torch.no_grad():
        seconds = best_time(lambda: torch.nn.functional.conv2d(x, weight, padding=1), warmup=2, repeats=repeats, clock=clock)
    return flops / seconds / 1e9


def peak_gflops(dtype: torch.dtype, quick: bool = False, clock: Clock = time.perf_counter) -> dict[str, float]:
    """``{"matmul": …, "conv": …, "peak": max of both}`` GFLOP/s for ``dtype`` with the current threads."""
    matmul = peak_matmul_gflops(dtype, size=512 if quick else 2048, repeats=2 if quick else 5, clock=clock)
    conv = peak_conv_gflops(dtype, batch=2 if quick else 16, repeats=2 if quick else 5, clock=clock)
    return {"matmul": matmul, "conv": conv, "peak": max(matmul, conv)}


# ----------------------------------------------------------------------------- shared by every script

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def results_path(name: str, quick: bool) -> str:
    """``benchmarks/results/<name>[_quick].json`` (gitignored)."""
    return os.path.join(RESULTS_DIR, f"{name}_quick.json" if quick else f"{name}.json")


def setup_threads(threads: int | None) -> int:
    """Use ``threads`` torch threads (default: every core) and flush subnormal floats, as the engine does."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    torch.set_flush_denormal(True)
    return count


def check_clock(clock: str, threads: int | None) -> None:
    """CPU time is only an honest per-call measure for one thread (see the module docstring)."""
    if clock == "cpu" and threads != 1:
        raise SystemExit("--clock cpu measures one thread's work: add --threads 1")


def interleaved_rounds(steps: dict[str, Callable[[], object]], rounds: int, calls: int, warmup: int,
                       clock: Clock = time.perf_counter) -> dict[str, Timing]:
    """Per-call seconds of each closure in ``steps``: ``warmup`` untimed calls each, then ``rounds``
    rounds that time ``calls`` calls of every closure in turn. Alternating keeps a burst of load from
    another process from favouring one side; best and median are over the rounds."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            start = clock()
            for _ in range(calls):
                fn()
            times[name].append((clock() - start) / calls)
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = Timing(best=values[0], median=values[len(values) // 2])
    return out


CONV_OP_MARKERS = ("conv",)  # aten::mkldnn_convolution, aten::convolution_backward, ...


def profile_top_ops(fn: Callable[[], object], calls: int = 2, rows: int = 10) -> dict:
    """Where the time of ``fn()`` goes: torch.profiler's per-op *self* CPU time over ``calls`` calls
    (after one warm-up call), the ``rows`` largest ops with their share, and the share of every
    convolution op (forward and backward) together."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    conv_us = sum(e.self_cpu_time_total for e in events if any(m in e.key.lower() for m in CONV_OP_MARKERS))
    return {
        "ms_per_call": total_us / 1e3 / calls,
        "conv_ms_per_call": conv_us / 1e3 / calls,
        "conv_share": conv_us / total_us if total_us else 0.0,
        "top_ops": [{"op": e.key, "ms_per_call": e.self_cpu_time_total / 1e3 / calls, "share": e.self_cpu_time_total / total_us,
                     "calls_per_call": e.count / calls} for e in events[:rows]],
    }


def conv_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the convolutions alone (forward and backward) that ``fn()`` runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    per_op = counter.get_flop_counts().get("Global", {})
    return int(sum(v for op, v in per_op.items() if "conv" in str(op)))


def profile_markdown(profile: dict, title: str) -> str:
    """A top-ops table for RESULTS.md."""
    lines = [f"{title}: {profile['ms_per_call']:.1f} ms per call (profiled), convolutions "
             f"{100 * profile['conv_share']:.0f}% of it", "", "| op (self time) | ms/call | share | calls |", "|---|---:|---:|---:|"]
    for op in profile["top_ops"]:
        lines.append(f"| `{op['op']}` | {op['ms_per_call']:.2f} | {100 * op['share']:.1f}% | {op['calls_per_call']:.0f} |")
    return "\n".join(lines)


def machine_line(info: dict) -> str:
    """One line naming the machine a table was measured on."""
    return (f"{info['cpu']}, {info['torch_threads']} of {info['cpu_count']} cores, torch {info['torch']}, "
            f"load average (1 min) {info['load_average_1min']} at start")


@dataclass
class CpuSnapshot:
    """Busy CPU seconds of the whole machine (``/proc/stat``) and of this process, and the wall time."""

    machine_busy: float
    own: float
    wall: float


def cpu_snapshot() -> CpuSnapshot:
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user … steal, without guest (counted in user)
    except (OSError, ValueError, IndexError):
        pass
    own = os.times()
    return CpuSnapshot(machine_busy=busy, own=own.user + own.system + own.children_user + own.children_system,
                       wall=time.perf_counter())


def others_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Share of the machine's CPU capacity that *other* processes used between two snapshots:
    (machine busy − this process) / (wall × cores). Near 0 on an idle machine."""
    wall = after.wall - before.wall
    others = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else float("nan")
