"""The one place that decides the precision of sampling (``sample``, ``eval``, ``compare``).

``auto`` samples under bf16 autocast where the hardware runs bf16 natively (a CUDA GPU with bf16, a CPU
with AVX-512-BF16 or AMX: :func:`diffvae.train.resolve_precision`), else in fp32; ``fp32`` forces full
precision (bit-identical to sampling without this module), ``bf16`` forces bf16.

Only the network passes of *sampling* run under it: bounds and likelihoods (:func:`diffvae.evaluate.likelihood`,
the families' ``bound``) and encodings are never wrapped, so they keep their fp32/fp64 arithmetic. The
measurement behind the default (benchmarks/bench_speed_defaults.py, mnist, 500 samples): bf16 changes FID
by +1.0 (ddpm) and −0.7 (vae) where two fp32 seeds differ by 12; it samples 1.6× (ddpm) and 2.2× (vae) faster.
"""

from __future__ import annotations

import contextlib

import torch

from diffvae.device import resolve_precision
from diffvae.errors import DiffvaeError

SAMPLING_PRECISIONS = ("auto", "bf16", "fp32")


def check_sampling_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`SAMPLING_PRECISIONS`, else one error line."""
    if precision not in SAMPLING_PRECISIONS:
        raise DiffvaeError(f"--precision must be {', '.join(SAMPLING_PRECISIONS[:-1])} or {SAMPLING_PRECISIONS[-1]} "
                           f"for sampling, got {precision!r}")
    return precision


def sampling_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of sampling on ``device`` (None = fp32)."""
    device = torch.device(device)
    if check_sampling_precision(precision) == "auto" and device.type not in ("cpu", "cuda"):
        return None
    return resolve_precision(precision, device)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live (cpu for a model without parameters)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def sampling_precision(model: torch.nn.Module, precision: str = "auto"):
    """A context in which ``model.sample(...)`` runs at ``precision`` on the model's device: bf16 autocast,
    or a no-op context for fp32."""
    device = model_device(model)
    dtype = sampling_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(model: torch.nn.Module, precision: str = "auto") -> str:
    """"bf16" or "fp32": what :func:`sampling_precision` runs ``model``'s sampling at (for results)."""
    return "fp32" if sampling_dtype(precision, model_device(model)) is None else "bf16"
