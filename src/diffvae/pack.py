"""Packed data sets: a data spec decoded once into memory-mapped uint8 shards.

``diffvae.data.pack(spec, DIR)`` (CLI: ``diffvae data pack SPEC --out DIR``) decodes any data spec once, makes its
fixed held-out split, and writes ``DIR``; the data spec ``packed:DIR`` then yields the same
:class:`~diffvae.sources.ImageDataset` as the source (same images, labels, split and content hash)
whose image tensors are ``np.memmap`` views of the shards: nothing is decoded and the images are not
copied into memory, so a data set larger than RAM trains with the page cache as its only cache.

Layout of ``DIR``:

* ``pack.json``           the manifest, read back through :func:`check_manifest` (schema below)
* ``train.u8``            the training images, raw uint8 in C order, shape (N_train, C, H, W), no header
* ``test.u8``             the held-out images, same layout
* ``labels.safetensors``  ``train_labels`` / ``test_labels`` (int64) and ``attr/<name>`` (one value per
                          image, train then test), only when the source has labels or attributes

One shard per split, because a split must be one tensor (``torch.from_numpy`` on one mapping) and the
engine reads batches at random positions of the whole split anyway (``diffvae.loader``).

Writes are atomic: everything is written into a temporary folder next to ``DIR`` (files fsync'd), then
renamed onto ``DIR``. Inputs are validated before the disk is touched; an existing directory that is
not a pack is never replaced, an existing pack only with ``force``.

The content hash recorded in the manifest is never trusted: the first ``content_hash()`` of a packed
data set re-reads the shard files (plain reads, so the pages stay in the page cache, not in the
process's resident memory) and refuses a pack whose bytes no longer match.

Folder data (``folder:PATH``) packs itself into a cache (:func:`cached_folder`) keyed by the folder's
path, the resize option and the split, and fingerprinted by every image's name, size and mtime; a
changed folder or a damaged cache entry is rebuilt. The cache lives in ``$DIFFVAE_CACHE/packs``
(default ``$XDG_CACHE_HOME/diffvae`` or ``~/.cache/diffvae``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from diffvae.errors import DiffvaeError
from diffvae.marker import enclosing_folder
from diffvae.runs import _fsync_dir, cache_dir, is_unmarked_run, load_tensors, read_json, save_tensors, write_error, write_json
from diffvae.schema import check_fields
from diffvae.sources import MAX_CLASSES, ImageDataset, hash_header

FORMAT = "diffvae-pack"
VERSION = 1
MANIFEST = "pack.json"
SHARDS = {"train": "train.u8", "test": "test.u8"}
LABELS = "labels.safetensors"
PACK_FILES = frozenset({MANIFEST, LABELS, *SHARDS.values()})
READ_CHUNK = 8 << 20  # bytes per read when hashing shard files

# The manifest: field -> expected JSON type (diffvae.schema.matches).
MANIFEST_FIELDS: dict[str, Any] = {
    "format": str,
    "version": int,
    "name": str,
    "spec": str | None,
    "options": dict,
    "image_shape": list[int],
    "train_size": int,
    "test_size": int,
    "content_hash": str,
    "num_classes": int | None,
    "class_names": list[str] | None,
    "labels": bool,
    "attributes": list[str],
    "split_seed": int | None,
    "test_fraction": float | None,
    "source_fingerprint": str | None,
}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def pack_dataset(dataset, out_dir: str | Path, *, spec: str | None = None, size: int | None = None,
                 key: str | None = None, binarize: bool = False, test_fraction: float = 0.1, seed: int = 0,
                 limit: int | None = None, force: bool = False, fingerprint: str | None = None) -> Path:
    """Write ``dataset`` (an :class:`~diffvae.sources.ImageDataset`) as a pack at ``out_dir``; returns the
    pack's path. ``spec`` and the options record how it was loaded (:func:`diffvae.data.pack` loads a spec
    and calls this); ``test_fraction`` and ``seed`` record how its split was made (``packed:DIR`` then
    refuses another split).
    """
    if not isinstance(dataset, ImageDataset):
        raise DiffvaeError(f"pack needs a data spec or an ImageDataset, got {type(dataset).__name__}")
    out = check_out_dir(out_dir, force=force)
    options = {"size": size, "key": key, "binarize": binarize, "limit": limit}
    if dataset.origin:  # what was done to the files (a folder's size decision), for data info
        options["origin"] = dataset.origin
    with PackWriter(out, dataset.image_shape, dataset.train.shape[0], dataset.test.shape[0], name=dataset.name,
                    spec=spec, options=options, split_seed=seed, test_fraction=test_fraction, force=force,
                    fingerprint=fingerprint) as writer:
        for part in ("train", "test"):
            images = getattr(dataset, part)
            for start in range(0, images.shape[0], _images_per_chunk(dataset.image_shape)):
                writer.write(part, images[start:start + _images_per_chunk(dataset.image_shape)])
        return writer.finish(train_labels=dataset.train_labels, test_labels=dataset.test_labels,
                             num_classes=dataset.num_classes, class_names=dataset.class_names,
                             attributes=dataset.attributes)


def _images_per_chunk(shape: tuple[int, int, int]) -> int:
    return max(1, (64 << 20) // math.prod(shape))


def check_out_dir(out_dir: str | Path, *, force: bool) -> Path:
    """Where a pack may be written: a new path, an empty directory, or (with ``force``) an existing pack.
    Never a file, never a non-empty directory that is not a pack."""
    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip():
        raise DiffvaeError(f"the pack's output must be a directory path, got {out_dir!r}")
    out = Path(os.path.abspath(Path(out_dir).expanduser()))  # '..' resolved: 'missing/..' named the folder above, then moved it
    if out.exists() and not out.is_dir():
        raise DiffvaeError(f"--out {out} is a file, not a directory; give a new directory for the pack")
    if out.is_dir() and any(out.iterdir()):
        if not is_pack(out):
            raise DiffvaeError(f"refusing to write into {out}: it is a non-empty directory that is not a diffvae pack")
        if not force:
            raise DiffvaeError(f"{out} already holds a pack; pass --force to replace it")
    parent = _existing_parent(out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiffvaeError(f"cannot write the pack: {parent} is not writable")
    _check_outside_runs(out)
    return out


def _check_outside_runs(out: Path) -> None:
    """A pack is never written into a run folder (its files belong to the run)."""
    run = enclosing_folder(_existing_parent(out), "run", legacy=is_unmarked_run)
    if run is not None:
        raise DiffvaeError(f"--out {out} is inside the run {run}; write the pack outside run folders")


def _existing_parent(path: Path) -> Path:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DiffvaeError(f"cannot write the pack under {parent}: it is a file")
    return parent


def is_pack(path: Path) -> bool:
    """A directory holding a pack manifest and nothing but pack files (so replacing it loses nothing else)."""
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return MANIFEST in names and names <= PACK_FILES


class PackWriter:
    """Streams images into a new pack: ``write(part, chunk)`` any number of times (all of ``train``
    before ``test``), then ``finish(...)``. Nothing needs to fit in memory but one chunk; the content
    hash is computed as the bytes go by (the same bytes :meth:`ImageDataset.content_hash` hashes).
    Used as a context manager, an exception removes the temporary folder and leaves ``out`` untouched.
    """

    def __init__(self, out: str | Path, image_shape, train_size: int, test_size: int, *, name: str,
                 spec: str | None = None, options: dict | None = None, split_seed: int | None = None,
                 test_fraction: float | None = None, force: bool = False, fingerprint: str | None = None,
                 durable: bool = True):
        self.out = check_out_dir(out, force=force)
        shape = tuple(int(v) for v in image_shape)
        if len(shape) != 3 or min(shape) < 1 or min(train_size, test_size) < 1:
            raise DiffvaeError(f"a pack needs images of shape (C, H, W) and at least one train and one test image, "
                               f"got shape {shape}, {train_size} train, {test_size} test")
        self.shape, self.sizes, self.durable = shape, {"train": int(train_size), "test": int(test_size)}, durable
        self.written = {"train": 0, "test": 0}
        self.manifest = {"format": FORMAT, "version": VERSION, "name": name, "spec": spec, "options": options or {},
                         "image_shape": list(shape), "train_size": int(train_size), "test_size": int(test_size),
                         "split_seed": split_seed, "test_fraction": test_fraction, "source_fingerprint": fingerprint}
        self.made = _first_missing(self.out.parent)  # the folders mkdir makes here are removed again if the pack fails
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".pack-tmp", dir=self.out.parent))
        except OSError as e:  # a read-only or forbidden place: one line, not an internal error
            _remove_made(self.out.parent, self.made)
            raise write_error(self.out, e) from None
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the pack gets the mode mkdir would give
        self.digest = hashlib.sha256()
        self.digest.update(hash_header("train", (train_size, *shape)))
        self.files = {part: open(self.tmp / name_, "wb") for part, name_ in SHARDS.items()}

    def __enter__(self) -> "PackWriter":
        return self

    def __exit__(self, exc_type, exc, _) -> None:
        if exc_type is not None:
            self.abort()
        if isinstance(exc, OSError):  # ENOSPC, EACCES, ...: one line; the partial pack is gone with the temporary folder
            raise write_error(self.out, exc, self.bytes_needed()) from None

    def bytes_needed(self) -> int:
        """The size of the pack's shards."""
        return math.prod(self.shape) * (self.sizes["train"] + self.sizes["test"])

    def write(self, part: str, images) -> None:
        """Append a chunk of uint8 images (k, C, H, W) (tensor or array) to split ``part``."""
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.dtype != np.uint8 or tuple(array.shape[1:]) != self.shape:
            raise DiffvaeError(f"pack: expected uint8 images of shape (k, {', '.join(map(str, self.shape))}), "
                               f"got {array.dtype} {tuple(array.shape)}")
        if part == "train" and self.written["test"] or part not in SHARDS:
            raise DiffvaeError(f"pack: write every train image before the test images (got part {part!r})")
        if self.written[part] + array.shape[0] > self.sizes[part]:
            raise DiffvaeError(f"pack: more {part} images than the {self.sizes[part]} declared")
        if part == "test" and self.written["test"] == 0:
            self._check_complete("train")
            self.digest.update(hash_header("test", (self.sizes["test"], *self.shape)))
        array = np.ascontiguousarray(array)
        self.files[part].write(memoryview(array).cast("B"))
        self.digest.update(array)
        self.written[part] += array.shape[0]

    def _check_complete(self, part: str) -> None:
        if self.written[part] != self.sizes[part]:
            raise DiffvaeError(f"pack: {self.written[part]} {part} images written, {self.sizes[part]} declared")

    def finish(self, *, train_labels=None, test_labels=None, num_classes=None, class_names=None,
               attributes=None) -> Path:
        """Write labels and manifest, then move the pack into place; returns its path."""
        self._check_complete("train")
        self._check_complete("test")
        for handle in self.files.values():
            handle.flush()
            if self.durable:
                os.fsync(handle.fileno())
            handle.close()
        tensors = _label_tensors(train_labels, test_labels, attributes or {}, self.sizes)
        if tensors:
            save_tensors(self.tmp / LABELS, tensors)
        self.manifest.update(content_hash=self.digest.hexdigest()[:16], num_classes=num_classes,
                             class_names=None if class_names is None else list(class_names),
                             labels=train_labels is not None, attributes=list(attributes or {}))
        check_manifest(self.manifest, self.tmp / MANIFEST)
        write_json(self.tmp / MANIFEST, self.manifest)
        _install(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        for handle in self.files.values():
            handle.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        _remove_made(self.out.parent, self.made)


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s ancestry (itself included) that does not exist yet, or None."""
    missing = None
    while not folder.exists():
        missing, folder = folder, folder.parent
    return missing


def _remove_made(folder: Path, made: Path | None) -> None:
    """Remove the empty folders from ``folder`` up to ``made`` (those a failed pack created)."""
    if made is None:
        return
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()
        except OSError:
            return
        if candidate == made:
            return


def _umask() -> int:
    mask = os.umask(0o022)  # the umask can only be read by setting it
    os.umask(mask)
    return mask


def _label_tensors(train_labels, test_labels, attributes: dict, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    if (train_labels is None) != (test_labels is None):
        raise DiffvaeError("pack: give labels for both splits or for neither")
    tensors: dict[str, torch.Tensor] = {}
    if train_labels is not None:
        tensors["train_labels"] = torch.as_tensor(train_labels, dtype=torch.int64).reshape(-1)
        tensors["test_labels"] = torch.as_tensor(test_labels, dtype=torch.int64).reshape(-1)
        if len(tensors["train_labels"]) != sizes["train"] or len(tensors["test_labels"]) != sizes["test"]:
            raise DiffvaeError("pack: one label per image is needed")
    for name, values in attributes.items():
        tensors[f"attr/{name}"] = torch.as_tensor(values).reshape(-1).contiguous()
        if len(tensors[f"attr/{name}"]) != sizes["train"] + sizes["test"]:
            raise DiffvaeError(f"pack: attribute {name!r} needs one value per image")
    return tensors


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``out`` (an old pack there is moved aside, then removed)."""
    _fsync_dir(tmp)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".pack-old", dir=out.parent))
        os.replace(out, old / "pack")
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old / "pack", out)
        raise
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def check_manifest(manifest: Any, path: Path) -> None:
    """The pack manifest's schema: every field present with its type, sizes and shape positive."""
    check_fields(manifest, MANIFEST_FIELDS, path, "manifest", known_only=False)
    if manifest.get("format") != FORMAT:
        raise DiffvaeError(f"{path} is not a diffvae pack manifest (field 'format' is {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise DiffvaeError(f"{path}: pack version {manifest.get('version')!r} is not supported (this diffvae "
                           f"reads version {VERSION}); pack the data again")
    missing = [name for name in MANIFEST_FIELDS if name not in manifest]
    if missing:
        raise DiffvaeError(f"{path}: field {missing[0]!r} is missing")
    shape = manifest["image_shape"]
    if len(shape) != 3 or min(shape) < 1:
        raise DiffvaeError(f"{path}: field 'image_shape' must be 3 positive integers, got {shape}")
    for name in ("train_size", "test_size"):
        if manifest[name] < 1:
            raise DiffvaeError(f"{path}: field {name!r} must be >= 1, got {manifest[name]}")
    names = manifest["class_names"]
    if names is not None and (manifest["num_classes"] is None or len(names) != manifest["num_classes"]):
        raise DiffvaeError(f"{path}: field 'class_names' must name each of the 'num_classes' classes")


def read_manifest(root: Path) -> dict[str, Any]:
    """``root/pack.json``, checked by :func:`check_manifest`."""
    path = root / MANIFEST
    if not path.is_file():
        raise DiffvaeError(f"{root} is not a diffvae pack (no {MANIFEST}); create one with: diffvae data pack SPEC --out {root}")
    manifest = read_json(path)
    check_manifest(manifest, path)
    return manifest


@dataclass(eq=False)
class PackBacking:
    """The shard files behind a packed data set's ``train`` and ``test`` tensors.

    :meth:`content_hash` hashes the files themselves (never trusting the manifest), once.
    """

    root: Path
    recorded_hash: str
    train: torch.Tensor
    test: torch.Tensor
    verified: str | None = field(default=None, repr=False)

    def backs(self, train: torch.Tensor, test: torch.Tensor) -> bool:
        """Whether these are still the tensors mapped from the shards (not a subset or a copy)."""
        return train is self.train and test is self.test

    def content_hash(self) -> str:
        if self.verified is None:
            actual = hash_shards(self.root, {"train": tuple(self.train.shape), "test": tuple(self.test.shape)})
            if actual != self.recorded_hash:
                raise DiffvaeError(f"the pack {self.root} is damaged: its shards hash to {actual} but {MANIFEST} "
                                   f"records {self.recorded_hash}; pack the data again")
            self.verified = actual
        return self.verified


def hash_shards(root: Path, shapes: dict[str, tuple[int, ...]]) -> str:
    """The content hash of the shard files: ImageDataset.content_hash's digest, read with plain reads."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    for part in ("train", "test"):
        digest.update(hash_header(part, shapes[part]))
        try:
            with open(root / SHARDS[part], "rb", buffering=0) as f:
                while count := f.readinto(buffer):
                    digest.update(memoryview(buffer)[:count])
        except OSError as e:
            raise DiffvaeError(f"cannot read {root / SHARDS[part]}: {e.strerror}") from None
    return digest.hexdigest()[:16]


def open_pack(path: str | Path, *, size: int | None = None, key: str | None = None,
              test_fraction: float | None = None, seed: int | None = None):
    """The :class:`~diffvae.sources.ImageDataset` stored at ``path``, its images memory-mapped (read-only).

    ``size`` must be the packed size (or None); ``test_fraction`` and ``seed``, when given, must be the
    split the pack was made with (a pack cannot re-split without copying the data).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DiffvaeError(f"packed:{path}: {'no such directory' if not root.exists() else 'not a directory'}")
    root = root.resolve()
    manifest = read_manifest(root)
    _check_request(manifest, root, size, key, test_fraction, seed)
    c, h, w = manifest["image_shape"]
    train = map_shard(root / SHARDS["train"], (manifest["train_size"], c, h, w))
    test = map_shard(root / SHARDS["test"], (manifest["test_size"], c, h, w))
    labels = _read_labels(root, manifest)
    return ImageDataset(name=manifest["name"], train=train, test=test, train_labels=labels.get("train_labels"),
                        test_labels=labels.get("test_labels"), num_classes=manifest["num_classes"],
                        attributes={n: labels[f"attr/{n}"] for n in manifest["attributes"]},
                        class_names=manifest["class_names"], origin=manifest["options"].get("origin"),
                        backing=PackBacking(root, manifest["content_hash"], train, test))


def _check_request(manifest, root: Path, size, key, test_fraction, seed) -> None:
    c, h, w = manifest["image_shape"]
    if size is not None and (h, w) != (size, size):
        raise DiffvaeError(f"packed:{root} holds {h}×{w} images; to train at {size}×{size}, pack the source "
                           f"again with --size {size}")
    if key is not None:
        raise DiffvaeError(f"packed:{root}: --key applies to npz sources; it was chosen when the data was packed")
    for name, given in (("test_fraction", test_fraction), ("split_seed", seed)):
        stored = manifest[name]
        if given is not None and stored is not None and given != stored:
            raise DiffvaeError(f"packed:{root} was split with {name} {stored}, not {given}; pack the source "
                               "again to change the split")


def map_shard(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A read-only uint8 tensor of ``shape`` over the file ``path`` (np.memmap; nothing is read now).

    Read-only (not copy-on-write) so that no memory is reserved for it: a data set larger than RAM maps.
    Do not write into it; copy first.
    """
    expected = math.prod(shape)
    try:
        actual = path.stat().st_size
    except OSError:
        raise DiffvaeError(f"{path} is missing; the pack is incomplete, pack the data again") from None
    if actual != expected:
        raise DiffvaeError(f"{path} is {'truncated' if actual < expected else 'over-long'}: {actual} bytes, its "
                           f"manifest declares {expected} ({shape}); pack the data again")
    try:
        array = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    except (OSError, ValueError) as e:
        raise DiffvaeError(f"cannot map {path}: {e}") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        tensor = torch.from_numpy(array)
    _MAPPED[id(tensor)] = (weakref.ref(tensor, functools.partial(_forget, key=id(tensor))), ShardFile(path, shape))
    return tensor


def _forget(ref: weakref.ref, key: int) -> None:
    """A mapped tensor died: drop its entry, and only its own (defensive: if its id already named a newer mapped
    tensor, popping that entry would send the loader to fault the mapping in instead of reading the shard)."""
    entry = _MAPPED.get(key)
    if entry is not None and entry[0] is ref:
        del _MAPPED[key]


@dataclass
class ShardFile:
    """A shard read with plain ``pread`` calls: only the requested bytes enter the process's memory.

    Touching a memory-mapped shard instead maps whole page-cache folios (up to 2 MiB each on recent
    kernels) into the process, so 128 random 12 KiB images can add 250 MiB of resident memory; the
    engine's batches therefore go through :meth:`gather`, and whole-split scans through :meth:`rows`.
    """

    path: Path
    shape: tuple[int, ...]
    _fd: int | None = field(default=None, repr=False, compare=False)
    _pid: int | None = field(default=None, repr=False, compare=False)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            try:
                self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            except OSError as e:
                raise DiffvaeError(f"cannot read {self.path}: {e.strerror}") from None
        return self._fd

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images ``index`` (any order, repeats allowed) as a new tensor (len(index), C, H, W)."""
        row = math.prod(self.shape[1:])
        out = np.empty((len(index), row), dtype=np.uint8)
        fd = self._descriptor()
        for k, i in enumerate(index.tolist()):
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"image {i} is outside {self.path} ({self.shape[0]} images)")
            self._read_exactly(fd, out[k], i * row)
        return torch.from_numpy(out).view(len(index), *self.shape[1:])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """uint8 images ``start:stop`` as a new tensor, read in one call."""
        start, stop = max(0, start), min(stop, self.shape[0])
        row = math.prod(self.shape[1:])
        out = np.empty((max(0, stop - start), row), dtype=np.uint8)
        if len(out):
            self._read_exactly(self._descriptor(), out.reshape(-1), start * row)
        return torch.from_numpy(out).view(len(out), *self.shape[1:])

    def _read_exactly(self, fd: int, buffer: np.ndarray, offset: int) -> None:
        view = memoryview(buffer).cast("B")
        while len(view):
            count = os.preadv(fd, [view], offset)
            if count == 0:
                raise DiffvaeError(f"{self.path} was truncated while being read; pack the data again")
            view, offset = view[count:], offset + count

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "_fd": None, "_pid": None}

    def __del__(self) -> None:
        try:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
        except (OSError, TypeError, AttributeError):  # at interpreter shutdown os may be gone
            pass


_MAPPED: dict[int, tuple[weakref.ref, ShardFile]] = {}


def shard_of(images: torch.Tensor) -> ShardFile | None:
    """The shard file a tensor made by :func:`map_shard` maps (the tensor itself, not a view of it), else None."""
    entry = _MAPPED.get(id(images))
    return entry[1] if entry is not None and entry[0]() is images else None


def _read_labels(root: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    wanted = {f"attr/{name}": manifest["train_size"] + manifest["test_size"] for name in manifest["attributes"]}
    if manifest["labels"]:
        wanted.update(train_labels=manifest["train_size"], test_labels=manifest["test_size"])
    if not wanted:
        return {}
    tensors, _ = load_tensors(root / LABELS)
    for name, count in wanted.items():
        value = tensors.get(name)
        if value is None or value.ndim != 1 or len(value) != count:
            raise DiffvaeError(f"{root / LABELS}: {name!r} must hold {count} values; pack the data again")
    for name in ("train_labels", "test_labels"):
        labels = tensors.get(name)
        classes = manifest["num_classes"]
        if labels is not None and (labels.dtype != torch.int64 or (classes is not None and len(labels)
                                   and not 0 <= int(labels.min()) <= int(labels.max()) < classes)):
            raise DiffvaeError(f"{root / LABELS}: {name!r} must be int64 class labels in 0..{classes}-1")
    _check_class_count(root, manifest, tensors)
    return tensors


def _check_class_count(root: Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """The manifest's ``num_classes`` against the labels: a pack made by ``data pack`` has K = largest label + 1
    (or as many as its ``class_names`` name); a manifest edited to declare 20 classes of 10 is refused."""
    classes = manifest["num_classes"]
    if classes is None or not manifest["labels"]:
        return
    seen = max(int(tensors[name].max()) for name in ("train_labels", "test_labels") if len(tensors[name])) + 1
    named = manifest["class_names"] is not None and len(manifest["class_names"]) == classes
    if classes > MAX_CLASSES or (classes != seen and not named):
        raise DiffvaeError(f"{root / MANIFEST}: 'num_classes' is {classes} but the labels are 0..{seen - 1}; "
                           "the pack is damaged: pack the data again")


# --------------------------------------------------------------------------------------------
# The folder cache
# --------------------------------------------------------------------------------------------



def folder_fingerprint(root: Path, files: list[Path]) -> str:
    """Names, sizes and mtimes of a folder's images: changes whenever an image is added, removed or edited."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_folder(root: Path, files: list[Path], size: int, test_fraction: float, seed: int,
                  decode: Callable[[], Any]):
    """The split ``folder:root`` data set from its cached pack, or ``decode()``d and cached now.

    The cache slot is keyed by (root, size, test_fraction, seed); the entry is used only when its
    fingerprint (:func:`folder_fingerprint`) matches the folder now and its shards hash to the content
    hash it records. Anything else (changed folder, damaged entry) is decoded and cached again. A cache
    that cannot be written is skipped: the decoded data set is returned.
    """
    slot = json.dumps({"root": str(root), "size": size, "test_fraction": test_fraction, "seed": seed})
    entry = cache_dir() / "packs" / f"folder-{hashlib.sha256(slot.encode()).hexdigest()[:16]}"
    fingerprint = folder_fingerprint(root, files)
    cached = _usable_entry(entry, fingerprint, test_fraction, seed)
    if cached is not None:
        return cached
    dataset = decode()
    try:
        shutil.rmtree(entry, ignore_errors=True)
        pack_dataset(dataset, entry, size=size, test_fraction=test_fraction, seed=seed, fingerprint=fingerprint)
    except (OSError, DiffvaeError):  # another process installed it first, or the cache is not writable
        return dataset
    return _usable_entry(entry, fingerprint, test_fraction, seed) or dataset


def _usable_entry(entry: Path, fingerprint: str, test_fraction: float, seed: int):
    """The cached data set at ``entry`` if it is a sound pack of the folder as it is now, else None."""
    if not (entry / MANIFEST).is_file():
        return None
    try:
        if read_manifest(entry)["source_fingerprint"] != fingerprint:
            return None
        dataset = open_pack(entry, test_fraction=test_fraction, seed=seed)
        dataset.content_hash()  # re-reads the shards: a damaged entry is rebuilt, never trusted
    except DiffvaeError:
        return None
    return dataset
