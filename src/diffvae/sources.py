"""The data-source layer: what every reader and store of images shares, below :mod:`diffvae.data`.

* :class:`ImageDataset`, the uint8 (N, C, H, W) train/test split every command trains and measures on,
  and its content hash (:func:`hash_header` is the header a pack's shards are hashed under too);
* :class:`Source`, what a reader returns before the split;
* :func:`check_options`, the checks of a data spec and its options; :data:`VALID_SPECS`;
* :func:`package_file` (a data file shipped in an installed package) and the memory checks
  (:func:`check_fits_in_memory`, :func:`available_memory`).

:mod:`diffvae.pack`, :mod:`diffvae.colour` and the readers of :mod:`diffvae.data` import it;
``data.load_data`` sits on top and dispatches a spec to them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffvae.errors import DiffvaeError


VALID_SPECS = "mnist, digits, shapes, colours, photos, folder:PATH, npz:PATH, idx:PATH (or idx:IMAGES,LABELS), packed:DIR"
MAX_CLASSES = 100_000  # a class embedding has K + 1 rows: a label of 10^12 was an allocation failure


@dataclass
class ImageDataset:
    """A dataset with its fixed held-out split; images are uint8 (N, C, H, W).

    ``attributes`` maps a name to one value per image of ``train`` followed by ``test``
    (length ``len(train) + len(test)``, in that order), e.g. the shapes' ``x``, ``y``, ``size``.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    num_classes: int | None
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None
    backing: Any = field(default=None, repr=False, compare=False)  # diffvae.pack.PackBacking of packed data
    origin: str | None = field(default=None, compare=False)  # what was done to the files (a folder's size), for data info

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)

    def content_hash(self) -> str:
        """First 16 hex digits of sha256 over the train and test shapes and bytes: names the data for caches.

        Packed data (``backing``) hashes its shard files with plain reads instead, the same bytes, so that
        hashing a data set larger than RAM does not pull it into the process's resident memory.
        """
        if self.backing is not None and self.backing.backs(self.train, self.test):
            return self.backing.content_hash()
        digest = hashlib.sha256()
        for part, images in (("train", self.train), ("test", self.test)):
            digest.update(f"{part}:{tuple(images.shape)}:{images.dtype};".encode())
            digest.update(images.contiguous().numpy())  # the buffer itself: no copy of the data set
        return digest.hexdigest()[:16]


def hash_header(part: str, shape: tuple[int, ...]) -> bytes:
    """What :meth:`ImageDataset.content_hash` hashes before the bytes of uint8 split ``part``."""
    return f"{part}:{tuple(int(v) for v in shape)}:{torch.uint8};".encode()


@dataclass
class Source:
    """What a reader returns before the split: all images, their labels and extra attributes."""

    name: str
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None = None  # int64 (N,)
    num_classes: int | None = None
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None


def check_options(spec, size, key, test_fraction, seed, limit) -> None:
    if not isinstance(spec, str) or not spec.strip():
        raise DiffvaeError(f"data spec must be a non-empty string; valid specs: {VALID_SPECS}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise DiffvaeError(f"size must be a positive integer, got {size!r}")
    if key is not None and not isinstance(key, str):
        raise DiffvaeError(f"key must be an array name, got {key!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
        raise DiffvaeError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise DiffvaeError(f"seed must be an integer, got {seed!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise DiffvaeError(f"limit must be a positive integer, got {limit!r}")


def package_file(package: str, *relative: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    found = importlib.util.find_spec(package)
    locations = list(found.submodule_search_locations or []) if found else []
    for location in locations:
        candidate = Path(location, *relative)
        if candidate.is_file():
            return candidate
    raise DiffvaeError(f"cannot find {'/'.join(relative)} of the '{package}' package; is {package} installed?")


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse, in one line, an allocation of ``nbytes`` larger than the memory available now."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise DiffvaeError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory but only "
                           f"{available / 2**30:.1f} GiB is available; use fewer or smaller images")


def available_memory() -> int | None:
    """Bytes of memory available to allocate (Linux MemAvailable, else physical memory), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
