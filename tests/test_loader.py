"""diffvae.loader: the engine's batches through a DataLoader, rank slices, bounded memory on a big pack."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from diffvae.data import load_data
from diffvae.errors import DiffvaeError
from diffvae.loader import training_batches
from diffvae.data import pack
from diffvae.pack import PackWriter
from diffvae.train import batch_indices


def _numbered_images(n: int, shape=(1, 3, 3)) -> torch.Tensor:
    """uint8 images whose first two bytes spell their index (little-endian), so a batch names its images."""
    images = torch.zeros(n, int(np.prod(shape)), dtype=torch.uint8)
    images[:, 0], images[:, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    return images.view(n, *shape)


def _ids(batch: torch.Tensor) -> list[int]:
    flat = batch.reshape(batch.shape[0], -1).long()
    return (flat[:, 0] + 256 * flat[:, 1]).tolist()


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_are_the_engines_batches_in_order(workers, tmp_path):
    """Across an epoch boundary (n = 50, batch 16: 3 batches an epoch, the last 2 images dropped), from a
    resumed step, from memory and from a memory-mapped pack."""
    images = _numbered_images(50)
    out = pack(load_data("digits"), tmp_path / "p")  # a real pack, to read its split back mapped
    mapped = load_data(f"packed:{out}").train
    # by default a packed split is gathered by 2 worker processes, a tensor in memory in this process
    assert training_batches(mapped, batch_size=16, seed=5).num_workers == 2
    assert training_batches(images, batch_size=16, seed=5).num_workers == 0
    for source in (images, mapped):
        n = source.shape[0]
        got = list(training_batches(source, batch_size=16, seed=5, start_step=2, stop_step=9, workers=workers))
        assert len(got) == 7
        for k, batch in enumerate(got):
            expected = source[batch_indices(2 + k, n, 16, 5)]  # what train.py indexes at that step
            assert torch.equal(batch, expected) and batch.shape == (16, *source.shape[1:])


def test_ranks_read_disjoint_slices_that_make_the_global_batch():
    n, batch = 103, 24
    images = _numbered_images(n)
    for world in (2, 3):
        per_rank = [list(training_batches(images, batch_size=batch, seed=1, stop_step=10, rank=r, world=world,
                                          workers=0)) for r in range(world)]
        for step in range(10):
            slices = [_ids(per_rank[r][step]) for r in range(world)]
            union = sum(slices, [])
            assert len(set(union)) == len(union) == batch  # disjoint, every rank batch/world images
            assert union == batch_indices(step, n, batch, 1).tolist()  # in order they are the global batch
        epoch = [i for step in range(n // batch) for r in range(world) for i in _ids(per_rank[r][step])]
        assert len(set(epoch)) == len(epoch) == n - n % batch  # an epoch covers the data (the remainder dropped)


def test_open_ended_and_bad_arguments():
    images = _numbered_images(20)
    loader = iter(training_batches(images, batch_size=4, seed=0, workers=0))
    assert [_ids(next(loader)) for _ in range(12)][-1] == batch_indices(11, 20, 4, 0).tolist()  # past 2 epochs
    for kwargs in ({"batch_size": 5, "world": 2}, {"batch_size": 4, "rank": 2, "world": 2}, {"batch_size": 0},
                   {"batch_size": 4, "start_step": 3, "stop_step": 2}):
        with pytest.raises(DiffvaeError):
            training_batches(images, seed=0, **kwargs)
    with pytest.raises(DiffvaeError):
        training_batches(images[:0], batch_size=4, seed=0)
    state = torch.get_rng_state()
    list(training_batches(images, batch_size=4, seed=0, stop_step=3, workers=1))
    assert torch.equal(torch.get_rng_state(), state)  # the training noise stream is not drawn from (exact resume)
    moments = torch.randn(20, 4, 2, 2)  # latent diffusion's stage 2 trains on float posterior moments
    (batch,) = training_batches(moments, batch_size=4, seed=0, start_step=3, stop_step=4)
    assert torch.equal(batch, moments[batch_indices(3, 20, 4, 0)])


TORCHRUN_SCRIPT = """
import sys
import torch
from diffvae.data import load_data
from diffvae.loader import training_batches
from diffvae.train import distributed_context

rank, world = distributed_context()
images = load_data("packed:" + sys.argv[1]).train
batches = training_batches(images, batch_size=16, seed=7, stop_step=12, rank=rank, world=world, workers=1)
flat = torch.cat([b.reshape(b.shape[0], -1)[:, :2].long() for b in batches])
with open(f"{sys.argv[2]}/rank{rank}.txt", "w") as f:
    f.write(" ".join(str(int(a) + 256 * int(b)) for a, b in flat.tolist()))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_ranks_read_disjoint_slices_of_a_packed_set(tmp_path):
    n = 90
    with PackWriter(tmp_path / "p", (1, 3, 3), n, 10, name="numbered") as writer:
        writer.write("train", _numbered_images(n))
        writer.write("test", _numbered_images(10))
        writer.finish()
    script = tmp_path / "read.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFVAE_BACKEND": "gloo"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port()),
           str(script), str(tmp_path / "p"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [[int(v) for v in (tmp_path / f"rank{r}.txt").read_text().split()] for r in range(2)]
    for step in range(12):
        a, b = seen[0][8 * step:8 * step + 8], seen[1][8 * step:8 * step + 8]
        assert not set(a) & set(b)
        assert a + b == batch_indices(step, n, 16, 7).tolist()


# ---------------------------------------------------------------------------- memory on a big pack

BIG_SHAPE = (3, 64, 64)
BIG_TRAIN, BIG_TEST = 160_000, 2_000  # 2.0 GB of uint8


def _write_big_pack(path) -> int:
    """A generated pack of ~2 GB, written in 50 MB chunks (never built in memory); image k starts with k."""
    row = int(np.prod(BIG_SHAPE))
    chunk = np.zeros((4096, row), dtype=np.uint8)
    chunk[:, 4:] = (np.arange(4, row) % 251).astype(np.uint8)
    with PackWriter(path, BIG_SHAPE, BIG_TRAIN, BIG_TEST, name="generated", durable=False) as writer:
        for part, first, count in (("train", 0, BIG_TRAIN), ("test", BIG_TRAIN, BIG_TEST)):
            for start in range(first, first + count, len(chunk)):
                k = min(len(chunk), first + count - start)
                chunk[:k, :4] = np.arange(start, start + k, dtype="<u4").view(np.uint8).reshape(k, 4)
                writer.write(part, chunk[:k].reshape(k, *BIG_SHAPE))
        writer.finish()
    return (BIG_TRAIN + BIG_TEST) * row


MEMORY_SCRIPT = """
import resource, sys
import torch
from diffvae.data import load_data
from diffvae.loader import rank_batch_indices, training_batches
from diffvae.pack import shard_of

torch.set_num_threads(1)
dataset = load_data("packed:" + sys.argv[1])
dataset.content_hash()  # as a training run does at its start (config.json)
images = dataset.train
assert shard_of(images) is not None, "the loader would index the mapping instead of reading the shard"
n = images.shape[0]
for step, batch in enumerate(training_batches(images, batch_size=128, seed=0, stop_step=200, workers=1)):
    ids = batch.reshape(batch.shape[0], -1)[:, :4].contiguous().view(torch.int32).reshape(-1).long()
    assert torch.equal(ids, rank_batch_indices(step, n, 128, 0)), step
    loss = (batch.float() / 127.5 - 1).square().mean()  # a training step's use of the batch
# This process's own peak since exec: VmHWM. (Its ru_maxrss also counts the image of the process that forked it
# before the exec — the pytest process, gigabytes late in a full suite.) The loader's worker: getrusage.
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
peak = max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(peak * 1024)  # Linux: kilobytes
"""


@pytest.mark.slow
def test_training_over_a_big_pack_peaks_below_half_its_size(tmp_path):
    """200 batches of 128 random 12 KiB images (25,600 images, 16% of the set) from a 2 GB pack, with a
    worker: the peak resident memory of the trainer and of its worker stays below half the pack."""
    size = _write_big_pack(tmp_path / "big")
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT), str(tmp_path / "big")],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        peak = int(done.stdout.split()[-1])
        assert peak < size / 2, f"peak resident memory {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB pack"
    finally:
        for name in os.listdir(tmp_path / "big"):
            (tmp_path / "big" / name).unlink()


@pytest.mark.parametrize("world", [1, 2])
def test_loader_source_gives_the_engines_batch_source_batches(world, tmp_path):
    """LoaderSource against diffvae.train.BatchSource (the engine's in-memory source) as the oracle: the same
    inputs, labels and horizontal flips at every step, for each rank; a jump back (resume) restarts it."""
    from diffvae.loader import LoaderSource
    from diffvae.train import BatchSource

    dataset = load_data(f"packed:{pack('digits', tmp_path / 'p', limit=200)}")
    images, labels = dataset.train, dataset.train_labels
    for rank in range(world):
        oracle = BatchSource(images.clone(), 32, 3, labels, rank, world, hflip=True)
        source = LoaderSource(images, 32, 3, labels, rank, world, hflip=True, workers=1)
        for step in [0, 1, 2, 3, 4, 5, 6, 7, 2, 3]:  # 6 batches an epoch; then back to step 2
            (x, y), (ox, oy) = source.batch(step), oracle.batch(step)
            assert torch.equal(x, ox) and torch.equal(y, oy), (rank, step)
        assert torch.equal(source.probe(), oracle.probe()) and source.n == oracle.n
    flipped = sum(not torch.equal(x, images[batch_indices(s, 200, 32, 3)]) for s in range(6)
                  for x in [LoaderSource(images, 32, 3, hflip=True, workers=0).batch(s)[0]])
    assert flipped == 6  # the flips are on (every batch of 32 has some mirrored digit)


def test_the_engine_trains_identically_from_a_loader_source_over_a_pack(tmp_path):
    """train(..., source=LoaderSource(packed split)) ends bit-identical to train() on the same images in memory."""
    from diffvae.loader import LoaderSource
    from diffvae.train import TrainConfig, train
    from diffvae.vae.model import VAE, VAEConfig

    dataset = load_data(f"packed:{pack('digits', tmp_path / 'p')}")
    config = TrainConfig(steps=8, batch_size=32, precision="fp32", device="cpu", warmup_steps=2, seed=4)
    results = []
    for source in (None, LoaderSource(dataset.train, 32, 4, workers=1)):
        torch.manual_seed(0)
        model = VAE(VAEConfig(width=8, latent_dim=2), dataset.image_shape)
        ema, _ = train(model, dataset.train.clone(), config, progress=False, source=source)
        results.append(ema.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
