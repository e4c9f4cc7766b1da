"""Classifier-free guidance (Ho & Salimans 2022, eq. 6) — the one place it is computed, for every
iterative sampler of every family (ε for diffusion, a velocity for flow matching).

A conditional network ``f(x, t, labels)`` — labels (N,) in 0..K−1, or the null label K — becomes the
plain ``model_fn(x, t)`` that the samplers take (:mod:`diffvae.diffusion.samplers`, the flow ODE)::

    f_w(x, t) = f_u + w (f_c − f_u),     f_u = f(x, t, K),  f_c = f(x, t, y)

computed as ``torch.lerp(f_u, f_c, w)``, so that w = 0 returns f_u and w = 1 returns f_c bit for bit.
Both branches come from ONE network call on the batch [x; x] with labels [K…K; y] (a 2N batch), and
for w = 0 or w = 1 only the branch needed is evaluated (an N batch) — one call per step either way.
Guidance of the raw network output equals guidance of ε̂ for x₀- and v-prediction too: the
conversion to ε̂ is affine in the output at fixed (x_t, t), and an affine map commutes with lerp.
``labels`` may hold the null label for some rows (those rows are then unconditional for every w), or be
class weights (N, K+1) (:func:`diffvae.conditioning.check_condition`; the null branch is then one-hot(K)).
"""

from __future__ import annotations

from typing import Callable

import torch

from diffvae.conditioning import check_condition, null_condition
from diffvae.errors import DiffvaeError

ConditionalFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["guided", "check_guidance", "sampling_fn"]


def check_guidance(guidance: float) -> float:
    """A guidance scale w: a finite number ≥ 0 (0 = unconditional, 1 = conditional, > 1 = guided)."""
    try:
        w = float(guidance)
    except (TypeError, ValueError):
        raise DiffvaeError(f"guidance must be a number >= 0, got {guidance!r}") from None
    if not (w >= 0.0 and w < float("inf")):
        raise DiffvaeError(f"guidance must be a finite number >= 0, got {guidance}")
    return w


def guided(fn: ConditionalFn, labels: torch.Tensor, null_label: int, guidance: float) -> ModelFn:
    """``model_fn(x, t)`` = classifier-free guidance of the conditional ``fn`` at scale ``guidance``
    for ``labels`` (N,) (module docstring): one call of ``fn`` per call, on 2N rows unless w ∈ {0, 1}."""
    w = check_guidance(guidance)
    labels = labels if labels.dtype.is_floating_point else labels.long()  # float: class weights (N, K+1)
    null = null_condition(labels, null_label)
    if w == 0.0:
        return lambda x, t: fn(x, t, null.to(x.device))
    if w == 1.0:
        return lambda x, t: fn(x, t, labels.to(x.device))
    both_labels = torch.cat([null, labels])

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = fn(torch.cat([x, x]), torch.cat([t, t]), both_labels.to(x.device))
        unconditional, conditional = out.chunk(2)
        return torch.lerp(unconditional, conditional, w)

    return model_fn


def sampling_fn(fn: ConditionalFn, num_classes: int, labels: torch.Tensor | None = None, guidance: float | None = None,
                n: int | None = None) -> ModelFn | ConditionalFn:
    """The ``model_fn(x, t)`` a sampler takes from a network ``fn``: ``fn`` itself without ``labels`` (guidance
    is refused for an unconditional model), else :func:`guided` at ``guidance`` (default 1: the conditional
    prediction). ``labels``: int (n,) or class weights (n, K+1) (:func:`diffvae.conditioning.check_condition`)."""
    if labels is None:
        if guidance is not None and not num_classes:
            raise DiffvaeError("guidance needs a conditional run (train with --conditional)")
        return fn
    labels = check_condition(labels, labels.shape[0] if n is None else n, num_classes)
    return guided(fn, labels, num_classes, 1.0 if guidance is None else guidance)
