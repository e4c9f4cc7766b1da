"""A small feature network per dataset, trained locally, for FID/KID/precision-recall offline.

Inception features need downloaded weights and 299×299 inputs; diffvae instead trains a small
conv net on the dataset itself, at the dataset's own resolution, and caches it by the data's
``content_hash()``. Its numbers are comparable between models evaluated on the same dataset only,
and are labelled honestly ("diffvae features, mnist"), never as "FID" in the Inception sense.

* **Labelled data → classifier.** Conv trunk → 128-d penultimate layer (ReLU) → class logits,
  trained with cross-entropy; features are the penultimate layer, ``predict_proba`` the softmax.
* **Unlabelled data → autoencoder (fallback).** The same trunk → a 128-d linear bottleneck →
  a small conv decoder, trained to reconstruct the image (MSE on [-1, 1]); features are the
  bottleneck. Without labels there is no ``predict_proba``.

Training is fixed-length (``TRAIN_STEPS`` AdamW steps of batch 64, cosine learning rate, random
translations by up to ~7% of the image side), so its cost is bounded. It is deterministic given ``seed``:
initialisation, shuffling and augmentation draw from generators seeded by it and the global
torch RNG is left untouched.

The cache is :func:`diffvae.runs.cache_dir` (``$DIFFVAE_CACHE``, default ``~/.cache/diffvae``)
``/features/<content hash>-<kind>[-labels<labels digest>]-seed<S>-<config digest>.safetensors`` (a classifier's
file names its labels too: a relabelled data set gets its own classifier): the weights, with the
configuration and training record as JSON in the safetensors metadata, written atomically
(temporary file + ``os.replace``, via :func:`diffvae.runs.save_tensors`). A file that cannot be
read or does not match its configuration is rebuilt, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffvae.errors import DiffvaeError
from diffvae.images import to_signed
from diffvae.runs import cache_dir as runs_cache_dir, load_tensors, save_tensors

FORMAT_VERSION = 1
FEATURE_DIM = 128
TRAIN_STEPS = 800
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
EVAL_BATCH = 500
CONFIDENT_PROBABILITY = 0.9


@dataclass
class FeatureNetConfig:
    """Everything that decides a feature network's weights besides the data and the seed:
    its shape and its training length. Stored in the cache and hashed into the file name."""

    image_shape: tuple[int, int, int]
    kind: str  # "classifier" or "autoencoder"
    num_classes: int | None
    widths: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = FEATURE_DIM
    pooled_size: int = 4
    steps: int = TRAIN_STEPS
    format_version: int = FORMAT_VERSION

    def digest(self) -> str:
        """8 hex digits naming this configuration in cache file names."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


class ConvTrunk(nn.Module):
    """3 conv stages (3×3 conv, ReLU, 2×2 max-pool while the map is larger than 4 pixels), then an
    adaptive average pool to ``pooled_size``² and a linear layer to ``feature_dim``."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], feature_dim: int, pooled_size: int, height: int, width: int):
        super().__init__()
        self.convs = nn.ModuleList()
        self.pool_after = []
        channels, h, w = in_channels, height, width
        for out_channels in widths:
            self.convs.append(nn.Conv2d(channels, out_channels, 3, padding=1))
            pool = min(h, w) > 4
            self.pool_after.append(pool)
            h, w = (h // 2, w // 2) if pool else (h, w)
            channels = out_channels
        self.pool = nn.AdaptiveAvgPool2d(pooled_size)
        self.project = nn.Linear(channels * pooled_size * pooled_size, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, pool in zip(self.convs, self.pool_after):
            x = F.relu(conv(x))
            if pool:
                x = F.max_pool2d(x, 2)
        return self.project(self.pool(x).flatten(1))


class FeatureNet(nn.Module):
    """Trunk + head: class logits (classifier) or a reconstruction in [-1, 1] (autoencoder)."""

    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        self.trunk = ConvTrunk(c, config.widths, config.feature_dim, config.pooled_size, h, w)
        if config.kind == "classifier":
            self.head = nn.Linear(config.feature_dim, config.num_classes)
        else:
            self.decoder_input = nn.Linear(config.feature_dim, config.widths[-1] * config.pooled_size ** 2)
            self.decoder_convs = nn.ModuleList([
                nn.Conv2d(config.widths[-1], config.widths[1], 3, padding=1),
                nn.Conv2d(config.widths[1], config.widths[0], 3, padding=1),
                nn.Conv2d(config.widths[0], c, 3, padding=1),
            ])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier: the ReLU penultimate layer; autoencoder: the linear bottleneck."""
        z = self.trunk(x)
        return F.relu(z) if self.config.kind == "classifier" else z

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the bottleneck: a pooled_size² map, upsampled through (H/4, W/4) and (H/2, W/2)
        (never below pooled_size) to (H, W), a 3×3 conv at each size; a linear output (a tanh saturates
        and collapses to the background on mnist)."""
        _, h, w = self.config.image_shape
        p = self.config.pooled_size
        y = self.decoder_input(self.features(x)).view(x.shape[0], self.config.widths[-1], p, p)
        sizes = [(max(p, h // 4), max(p, w // 4)), (max(p, h // 2), max(p, w // 2)), (h, w)]
        for index, (conv, size) in enumerate(zip(self.decoder_convs, sizes)):
            y = conv(F.interpolate(F.relu(y) if index else y, size=size, mode="bilinear", align_corners=False))
        return y

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.config.kind == "classifier":
            return F.cross_entropy(self.logits(x), labels)
        return F.mse_loss(self.reconstruct(x), x)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer (dy, dx) ∈ [−max_shift, max_shift]², filling with the
    border value (replicate padding, then a crop)."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = offsets[:, 0, None] + torch.arange(h)  # (n, h)
    cols = offsets[:, 1, None] + torch.arange(w)  # (n, w)
    batch = torch.arange(n)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def max_shift_for(height: int, width: int) -> int:
    """Augmentation range: about 7% of the smaller side, at least 1 pixel (28 → 2, 8 → 1)."""
    return max(1, round(min(height, width) / 14))


def _as_uint8_images(images: np.ndarray | torch.Tensor, image_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    images = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise DiffvaeError(f"expected uint8 images (N, C, H, W), got {images.dtype} of shape {tuple(images.shape)}")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise DiffvaeError(
            f"the feature network was trained on {tuple(image_shape)} images, got {tuple(images.shape[1:])}; "
            "evaluate at the dataset's own resolution"
        )
    # one memory layout: (N, H, W, 1) permuted to (N, 1, H, W) counts as contiguous but keeps odd strides, which
    # change the convolution kernels' summation order (features ~1e-6 apart)
    return images.detach().cpu().clone(memory_format=torch.contiguous_format)


def train_feature_net(
    config: FeatureNetConfig,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    seed: int = 0,
    progress: bool = False,
) -> FeatureNet:
    """Train a :class:`FeatureNet` with AdamW (cosine-decayed learning rate) for ``config.steps``
    steps on random ±shift translations; deterministic given ``seed``, global RNG untouched."""
    steps = config.steps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(config)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    shift = max_shift_for(*config.image_shape[1:])
    n = images.shape[0]
    order, position = torch.randperm(n, generator=generator), 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"feature net ({config.kind})", leave=False)
    net.train()
    for _ in range(steps):
        if position + BATCH_SIZE > n:
            order, position = torch.randperm(n, generator=generator), 0
        index = order[position:position + BATCH_SIZE]
        position += BATCH_SIZE
        batch = random_shift(to_signed(images[index]), shift, generator)
        loss = net.loss(batch, None if labels is None else labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    return net.eval()


class FeatureExtractor:
    """A trained :class:`FeatureNet` for one dataset: ``features`` for FID/KID/PR, and for a
    classifier ``predict_proba`` for recognisability. ``info`` holds how it was trained
    (seed, steps, training seconds, held-out accuracy or reconstruction MSE)."""

    def __init__(self, net: FeatureNet, dataset_name: str, info: dict):
        self.net = net.eval()
        self.kind = net.config.kind
        self.name = f"diffvae features, {dataset_name}"
        self.image_shape = tuple(net.config.image_shape)
        self.feature_dim = net.config.feature_dim
        self.info = info

    @torch.inference_mode()
    def _batched(self, images: np.ndarray | torch.Tensor, fn) -> np.ndarray:
        images = _as_uint8_images(images, self.image_shape)
        outputs = [fn(to_signed(images[start:start + EVAL_BATCH])).double() for start in range(0, images.shape[0], EVAL_BATCH)]
        if not outputs:
            return np.zeros((0, self.feature_dim))
        return torch.cat(outputs).numpy()

    def features(self, images_uint8: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, feature_dim) float64 features of uint8 (N, C, H, W) images."""
        return self._batched(images_uint8, self.net.features)

    def predict_proba(self, images_uint8: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, num_classes) class probabilities (softmax of the logits); classifier only."""
        if self.kind != "classifier":
            raise DiffvaeError(f"{self.name}: the dataset has no labels, so there is no classifier to predict classes")
        return self._batched(images_uint8, lambda x: self.net.logits(x).softmax(dim=1))


def _labels_of(dataset) -> tuple[torch.Tensor | None, torch.Tensor | None, int | None]:
    train_labels, test_labels, num_classes = dataset.train_labels, dataset.test_labels, dataset.num_classes
    if train_labels is None or test_labels is None or not num_classes or num_classes < 2:
        return None, None, None
    return torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long(), int(num_classes)


def labels_digest(train_labels: torch.Tensor, test_labels: torch.Tensor) -> str:
    """8 hex digits of sha256 over both splits' labels (the data's content hash covers the images only)."""
    digest = hashlib.sha256()
    for part, labels in (("train", train_labels), ("test", test_labels)):
        digest.update(f"{part}:{labels.shape[0]};".encode())
        digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def _held_out_score(net: FeatureNet, test: torch.Tensor, test_labels: torch.Tensor | None) -> dict:
    extractor = FeatureExtractor(net, "", {})
    if net.config.kind == "classifier":
        predictions = extractor.predict_proba(test).argmax(axis=1)
        return {"held_out_accuracy": float((predictions == test_labels.numpy()).mean())}
    with torch.inference_mode():
        x = to_signed(test[:EVAL_BATCH * 4])
        return {"held_out_mse": float(F.mse_loss(net.reconstruct(x), x))}


def _load_cached(path: Path, config: FeatureNetConfig) -> tuple[FeatureNet, dict] | None:
    """The cached network if ``path`` holds one for exactly ``config``; None (with a warning if a
    file was there) otherwise."""
    if not path.is_file():
        return None
    try:
        tensors, metadata = load_tensors(path)
        stored = metadata.get("config", {})
        stored_config = FeatureNetConfig(**{**stored, "image_shape": tuple(stored["image_shape"]), "widths": tuple(stored["widths"])})
        if stored_config != config:
            raise ValueError("it was made for another configuration")
        net = FeatureNet(config)
        net.load_state_dict(tensors, strict=True)
        return net.eval(), dict(metadata.get("info", {}))
    except (DiffvaeError, ValueError, TypeError, KeyError, RuntimeError) as err:
        warnings.warn(f"rebuilding the feature network cache {path}: {str(err).splitlines()[0][:160]}", stacklevel=3)
        return None


def get_feature_extractor(
    dataset,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    steps: int = TRAIN_STEPS,
) -> FeatureExtractor:
    """Load this dataset's feature network from the cache, or train it (on ``dataset.train``,
    scored on ``dataset.test``) and cache it. A classifier when the dataset has labels, else
    the autoencoder fallback (see the module docstring). ``dataset`` is a
    :class:`diffvae.data.ImageDataset`; ``steps`` shortens training (tests only)."""
    if steps < 1:
        raise DiffvaeError(f"the feature network needs at least one training step, got steps={steps}")
    train_labels, test_labels, num_classes = _labels_of(dataset)
    train = _as_uint8_images(dataset.train)
    config, path = _config_and_path(dataset, cache_dir, seed, steps)
    dataset_name = getattr(dataset, "name", None) or "dataset"
    cached = _load_cached(path, config)
    if cached is not None:
        return FeatureExtractor(cached[0], dataset_name, cached[1])

    _check_cache_writable(path.parent)  # before minutes of training, not after
    started = time.perf_counter()
    net = train_feature_net(config, train, train_labels, seed=seed, progress=progress)
    info = {"seed": seed, "steps": config.steps, "train_seconds": time.perf_counter() - started,
            "dataset": dataset_name, "content_hash": dataset.content_hash()}
    info.update(_held_out_score(net, _as_uint8_images(dataset.test), test_labels))
    save_tensors(path, net.state_dict(), {"config": asdict(config), "info": info})
    return FeatureExtractor(net, dataset_name, info)


def _config_and_path(dataset, cache_dir: str | Path | None, seed: int, steps: int) -> tuple[FeatureNetConfig, Path]:
    """The feature network's config for ``dataset`` and the cache file that holds it once trained."""
    train_labels, test_labels, num_classes = _labels_of(dataset)
    config = FeatureNetConfig(
        image_shape=tuple(int(s) for s in dataset.train.shape[1:]),
        kind="classifier" if num_classes else "autoencoder",
        num_classes=num_classes,
        steps=steps,
    )
    folder = Path(cache_dir) if cache_dir is not None else runs_cache_dir()
    labels = f"-labels{labels_digest(train_labels, test_labels)}" if num_classes else ""  # a relabelled set: another classifier
    return config, folder / "features" / f"{dataset.content_hash()}-{config.kind}{labels}-seed{seed}-{config.digest()}.safetensors"


def check_feature_cache(dataset, cache_dir: str | Path | None = None, seed: int = 0) -> None:
    """Where ``dataset``'s feature network is not cached yet, the cache must be writable: checked before a command
    creates what would need it (``train --eval-every`` left a run folder behind when the first eval row failed)."""
    _, path = _config_and_path(dataset, cache_dir, seed, TRAIN_STEPS)
    if not path.is_file():
        _check_cache_writable(path.parent)


def _check_cache_writable(folder: Path) -> None:
    """The feature cache folder exists (created) and can be written, else one line naming it and $DIFFVAE_CACHE."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DiffvaeError(f"cannot create the feature cache folder {folder}: {err.strerror} (set DIFFVAE_CACHE to a "
                           "writable folder)") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DiffvaeError(f"cannot write in the feature cache folder {folder} (set DIFFVAE_CACHE to a writable folder)")


def recognisability(probs: np.ndarray | torch.Tensor) -> dict:
    """How recognisable samples are to the classifier, from (N, K) class probabilities:

    * ``confident_fraction`` — share of samples whose largest probability is ≥ 0.9;
    * ``class_histogram`` — share of samples predicted (argmax) as each class, length K;
    * ``class_entropy_bits`` — entropy −Σ p log₂ p of that histogram: log₂ K when samples cover
      the classes evenly, 0 when they all fall in one (mode collapse).
    """
    probs = torch.as_tensor(np.asarray(probs) if not isinstance(probs, torch.Tensor) else probs).detach().cpu().double()
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 1:
        raise DiffvaeError(f"recognisability expects (N, K) class probabilities, got shape {tuple(probs.shape)}")
    histogram = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).double() / probs.shape[0]
    nonzero = histogram[histogram > 0]
    return {
        "confident_fraction": float((probs.max(dim=1).values >= CONFIDENT_PROBABILITY).double().mean()),
        "class_entropy_bits": float(-(nonzero * nonzero.log2()).sum()) + 0.0,  # one class: 0, not −0
        "class_histogram": histogram.tolist(),
    }
