"""Early stopping (``--early-stop-every N``): keep the EMA weights whose bound on held-out training images is best.

A family trained long on a small data set overfits: its held-out bound turns up while its training loss still
falls (the 5,000-image built-in mnist VAE within 60 CPU-minutes, benchmarks/RESULTS.md). The engine then sets
aside a validation part of the training images (:func:`validation_split`: ``VALIDATION_SHARE`` of them, at most
``VALIDATION_MAX``, by a permutation seeded with the run's seed), never trains on it, measures the EMA's bound
in bits/dim on it every N steps and at the last step (``BOUND_OPTIONS``, the same noise each time, outside
the training RNG streams), and ends the run with the best weights it measured: the run's EMA, its checkpoint
and its final snapshot are those. The test split is never looked at. Each measurement is a ``metrics.jsonl``
row ``{"step", "holdout_bpd", "holdout_n", "best_step"}``; the best weights and their step ride in the
checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from diffvae.contract import BoundOptions, spec_of
from diffvae.errors import DiffvaeError
from diffvae.pack import shard_of

VALIDATION_SHARE = 0.1
VALIDATION_MAX = 512
VALIDATION_MIN = 16
BOUND_OPTIONS = BoundOptions(timesteps=2)  # the cheap estimate (diffusion: 2 sampled steps; VAE: the ELBO)
PREFIX = "best_ema"


def validation_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of ``n`` images: a seeded permutation, the validation part
    ``VALIDATION_SHARE`` of them (``VALIDATION_MIN`` to ``VALIDATION_MAX``)."""
    count = min(VALIDATION_MAX, max(VALIDATION_MIN, round(VALIDATION_SHARE * n)))
    if n < 2 * count:
        raise DiffvaeError(f"--early-stop-every sets aside {count} of the training images for validation; "
                           f"{n} are too few to train on the rest")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[count:].sort().values, order[:count].sort().values


class BestWeights:
    """The best EMA weights by held-out bound, measured every ``every`` steps (module docstring)."""

    def __init__(self, images: torch.Tensor, every: int, seed: int, device: torch.device, batch_size: int):
        self.images, self.every, self.seed, self.device, self.batch_size = images, every, seed, device, batch_size
        self.value, self.step, self.state = math.inf, -1, None
        self.measured_step = -1

    def due(self, step: int) -> bool:
        return step % self.every == 0 and step != self.measured_step

    def measure(self, step: int, ema: nn.Module) -> dict[str, Any]:
        """The held-out bits/dim of ``ema``; kept when best. Returns the metrics row."""
        value = self.bits_per_dim(ema)
        if value < self.value:  # NaN is never best
            self.value, self.step = value, step
            self.state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        self.measured_step = step
        return {"step": step, "holdout_bpd": value, "holdout_n": int(self.images.shape[0]), "best_step": self.step}

    def bits_per_dim(self, ema: nn.Module) -> float:
        was_training = ema.training
        kwargs = spec_of(ema).bound_kwargs(BOUND_OPTIONS)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        total = 0.0
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            ema.eval()
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
            try:
                for chunk in self.images.split(self.batch_size):
                    total += float(ema.bound(chunk.to(self.device), generator=generator, **kwargs)["bpd"].double().sum())
            finally:
                ema.train(was_training)
        return total / self.images.shape[0]

    def load_into(self, ema: nn.Module) -> None:
        """End the run with the best weights (the last ones when nothing was measured)."""
        if self.state is not None:
            ema.load_state_dict(self.state)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.state is None else {f"{PREFIX}/{k}": v for k, v in self.state.items()}

    def metadata(self) -> dict[str, Any]:
        return {"early_stopping": {"best_step": self.step, "best_holdout_bpd": self.value if self.state is not None else None,
                                   "measured_step": self.measured_step}}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """From a checkpoint written with :meth:`tensors` and :meth:`metadata`."""
        stored = meta.get("early_stopping") or {}
        state = {k[len(PREFIX) + 1:]: v for k, v in tensors.items() if k.startswith(PREFIX + "/")}
        if state and isinstance(stored.get("best_holdout_bpd"), (int, float)):
            self.state, self.value, self.step = state, float(stored["best_holdout_bpd"]), int(stored["best_step"])
        self.measured_step = int(stored.get("measured_step", -1))


def split_for_early_stopping(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, source, config,
                             device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, BestWeights]:
    """(training images, their labels, the tracker of the best weights) for ``config.early_stop_every``."""
    if source is not None or shard_of(images) is not None:
        raise DiffvaeError("--early-stop-every needs the training images in memory (not a packed split)")
    if not isinstance(getattr(model, "family", None), str) or not hasattr(model, "bound"):
        raise DiffvaeError("--early-stop-every needs a family model with a held-out bound")
    keep, held_out = validation_split(int(images.shape[0]), config.seed)
    best = BestWeights(images[held_out], config.early_stop_every, config.seed, device, min(config.batch_size, 256))
    return images[keep], None if labels is None else labels[keep], best
