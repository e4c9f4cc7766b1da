"""Training batches for data bigger than memory: the engine's batch order through a torch DataLoader.

:func:`training_batches` yields, for steps ``start_step, start_step + 1, ...``, exactly the images the
engine indexes today — ``images[batch_indices(step, n, batch_size, seed)]`` (:func:`batch_indices`)
— and under torchrun only this rank's slice of each global batch:

    local = min(batch_size, n) // world
    rank_batch = batch_indices(step, n, batch_size, seed)[rank·local : (rank + 1)·local]

so the ranks of one step read disjoint images that together make the global batch (the engine's
sharding, unchanged). The images may be an ordinary tensor or a memory-mapped packed split
(:mod:`diffvae.pack`): each batch is gathered from it by ``workers`` processes (forked, so a mapped
split is shared, never pickled or copied), each touching only its batch's pages, and pinned for a fast
copy to the GPU when ``device`` is CUDA. The resident memory of the trainer is then bounded by the
batches in flight (``workers · prefetch + 1``), not by the data set's size.
"""

from __future__ import annotations

import multiprocessing
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from diffvae.colour import hflip, hflip_generator
from diffvae.errors import DiffvaeError
from diffvae.pack import shard_of


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


def rank_batch_indices(step: int, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The indices ``rank`` of ``world`` trains on at ``step``: its contiguous slice of the global batch."""
    local = min(batch_size, n) // world
    return batch_indices(step, n, batch_size, seed)[rank * local:(rank + 1) * local]


class _StepBatches(Dataset):
    """A map-style dataset whose item ``step`` is the whole (rank-local) batch of that step."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, rank: int, world: int,
                 labels: torch.Tensor | None = None):
        self.images, self.n, self.shard, self.labels = images, images.shape[0], shard_of(images), labels
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world

    def __getitem__(self, step: int):
        idx = rank_batch_indices(step, self.n, self.batch_size, self.seed, self.rank, self.world)
        # a packed split: read the batch's bytes, do not fault in its pages
        x = self.shard.gather(idx) if self.shard is not None else self.images[idx]
        return x if self.labels is None else (x, self.labels[idx])

    def __getstate__(self) -> dict:
        """Pickled (spawned workers) without a packed split's tensor: the shard file is enough."""
        return {**self.__dict__, "images": None if self.shard is not None else self.images}


class _Steps(Sampler):
    """Steps ``start, start + 1, ...`` up to ``stop`` (exclusive), or without end when ``stop`` is None."""

    def __init__(self, start: int, stop: int | None):
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        step = self.start
        while self.stop is None or step < self.stop:
            yield step
            step += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an open-ended run of steps has no length")
        return max(0, self.stop - self.start)


def training_batches(images: torch.Tensor, *, batch_size: int, seed: int, start_step: int = 0,
                     stop_step: int | None = None, rank: int = 0, world: int = 1, workers: int | None = None,
                     device: torch.device | str | None = None, prefetch: int = 2,
                     labels: torch.Tensor | None = None) -> DataLoader:
    """A DataLoader whose k-th batch is the (rank-local) batch of step ``start_step + k``; with ``labels``
    (N,) the batch is (inputs, their labels).

    ``images`` is uint8 (N, C, H, W) in memory or memory-mapped (a packed split), or any tensor with one
    row per example (latent diffusion's stage 2 trains on float posterior moments). ``stop_step`` None
    runs without end (a ``--budget`` run stops when it likes; dropping the iterator stops the workers).
    ``workers``: processes gathering batches; None = 2 for a packed split (file reads overlap the step),
    0 (this process, no copy between processes) for a tensor in memory. Batches come pinned when
    ``device`` is CUDA; move them with ``batch.to(device, non_blocking=True)``. Equal for any
    ``workers``: the batches are a pure function of (seed, step, rank, world), :func:`rank_batch_indices`.
    """

    if workers is None:
        workers = 2 if isinstance(images, torch.Tensor) and shard_of(images) is not None else 0
    _check(images, batch_size, start_step, stop_step, rank, world, workers, prefetch)
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise DiffvaeError(f"{labels.shape[0]} labels for {images.shape[0]} training examples")
    device = torch.device(device) if device is not None else torch.device("cpu")
    context = None
    if workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")  # workers share the (mapped) images instead of pickling them
    return DataLoader(_StepBatches(images, batch_size, seed, rank, world, labels), batch_size=None,
                      sampler=_Steps(start_step, stop_step), num_workers=workers,
                      pin_memory=device.type == "cuda" and torch.cuda.is_available(),
                      multiprocessing_context=context, prefetch_factor=prefetch if workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed))  # its own: the global RNG (training noise) is untouched


def _check(images, batch_size, start_step, stop_step, rank, world, workers, prefetch) -> None:
    if not (isinstance(images, torch.Tensor) and images.ndim >= 1 and len(images)):
        raise DiffvaeError("training_batches needs a non-empty tensor with one row per example, e.g. uint8 (N, C, H, W)")
    if batch_size < 1 or world < 1 or not 0 <= rank < world or workers < 0 or prefetch < 1 or start_step < 0:
        raise DiffvaeError(f"training_batches: need batch_size >= 1, 0 <= rank < world, workers >= 0, prefetch >= 1 "
                           f"and start_step >= 0, got {batch_size}, {rank}, {world}, {workers}, {prefetch}, {start_step}")
    if batch_size % world:
        raise DiffvaeError(f"--batch {batch_size} must be divisible by the number of processes ({world})")
    if stop_step is not None and stop_step < start_step:
        raise DiffvaeError(f"training_batches: stop_step {stop_step} is before start_step {start_step}")


class LoaderSource:
    """The engine's batch source over :func:`training_batches`: a drop-in for :class:`diffvae.train.BatchSource`
    (``n``, ``batch(step) -> (inputs, labels or None)`` on ``device``, ``probe()``), for packed or large data.

    Same batches, labels and flips as ``BatchSource`` (checked against it in tests/test_loader.py): the
    flips of ``hflip`` are :func:`diffvae.colour.hflip`'s for the global batch of ``step``, applied to this
    rank's slice. Steps asked in order are prefetched by the workers; a step out of order (a resume)
    restarts the loader there. ``train(model, images, config, source=LoaderSource(...))`` uses it.
    """

    def __init__(self, inputs: torch.Tensor, batch_size: int, seed: int, labels: torch.Tensor | None = None,
                 rank: int = 0, world: int = 1, device: torch.device | str = "cpu", hflip: bool = False,
                 workers: int | None = None):
        self.inputs, self.labels, self.n = inputs, labels, inputs.shape[0]
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.device, self.workers, self.shard = torch.device(device), workers, shard_of(inputs)
        self.hflip = hflip and inputs.dtype == torch.uint8 and inputs.ndim == 4
        self.local_batch = min(batch_size, self.n) // world
        self._batches, self._next_step = None, None
        training_batches(inputs, batch_size=batch_size, seed=seed, rank=rank, world=world, workers=0)  # validates

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._batches is None or step != self._next_step:
            self._batches = iter(training_batches(self.inputs, batch_size=self.batch_size, seed=self.seed, start_step=step,
                                                  rank=self.rank, world=self.world, workers=self.workers,
                                                  device=self.device, labels=self.labels))
        item = next(self._batches)
        self._next_step = step + 1
        x, y = item if self.labels is not None else (item, None)
        if self.hflip:
            x = torch.where(self._flipped(step).view(-1, 1, 1, 1), x.flip(-1), x)
        return x.to(self.device, non_blocking=True), None if y is None else y.to(self.device, non_blocking=True)

    def _flipped(self, step: int) -> torch.Tensor:
        """Which images of this rank's slice :func:`diffvae.colour.hflip` flips in the global batch of ``step``
        (found by flipping one 1×2 marker per image of the global batch, so the rule lives in colour.py only)."""

        marker = torch.tensor([0, 1], dtype=torch.uint8).view(1, 1, 1, 2).repeat(min(self.batch_size, self.n), 1, 1, 1)
        flipped = hflip(marker, 0.5, hflip_generator(self.seed, step))[:, 0, 0, 0] == 1
        return flipped[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]

    def probe(self, n: int = 8) -> torch.Tensor:
        """The first ``n`` inputs (to measure the cost of a step), read from the file for a packed split."""
        first = self.shard.rows(0, n) if self.shard is not None else self.inputs[:min(self.n, n)]
        return first.to(self.device)
