"""The size a ``folder:`` data set is made at, decided from its images' own sizes (read from the file headers).

* Without ``--size`` a folder keeps its images' own size: every image is centre-cropped to a square whose side is
  the **smallest shorter side** among the images, so no image is ever enlarged (an image whose shorter side is
  longer is resized down to it; a folder of 64×64 images stays 64×64, pixel for pixel). That side must lie in
  [``MIN_FOLDER_SIZE``, ``MAX_FOLDER_SIZE``] = [8, 64] px: the presets (:mod:`diffvae.presets`) cover 28, 32 and
  64 px, and a larger image costs every family far more per step. Outside it the folder is refused in one line
  that names the size found and says to pass ``--size N`` (nothing is resized silently).
* With ``--size N`` every image's shorter side is resized to N and its centre cropped, whatever its size.

:func:`folder_size` returns the side and a line saying what was done (``diffvae data info`` prints it); the folder
cache (:func:`diffvae.pack.cached_folder`) is keyed by that side, so another decision is another cache entry.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from diffvae.errors import DiffvaeError

MIN_FOLDER_SIZE = 8
MAX_FOLDER_SIZE = 64  # the largest side kept without --size: the largest preset (diffvae.presets)
LISTED_SIZES = 3  # at most this many distinct image sizes are named, else their range


@dataclass(frozen=True)
class FolderSize:
    """The square side a folder's images are made at, and what was done to them (one line)."""

    size: int
    note: str


def folder_size(root: Path, files: list[Path], size: int | None) -> FolderSize:
    """The side for ``folder:root`` (``size`` from ``--size``, or None for the images' own: see the module)."""
    dims = image_sizes(files)
    if size is None:
        side, how = native_size(root, dims), "the images' own size (their smallest shorter side)"
    else:
        side, how = size, f"resized by --size {size}"
    return FolderSize(side, f"{side}×{side} px, {how}; from {len(dims)} images of {sizes_text(dims)}: {actions_text(dims, side)}")


def image_sizes(files: list[Path]) -> list[tuple[int, int]]:
    """(width, height) of each image, from its header (nothing is decoded)."""
    dims = []
    for path in files:
        try:
            with Image.open(path) as img:
                dims.append((int(img.size[0]), int(img.size[1])))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DiffvaeError(f"cannot read image {path}: {err}") from None
    return dims


def native_size(root: Path, dims: list[tuple[int, int]]) -> int:
    """The smallest shorter side, refused outside [MIN_FOLDER_SIZE, MAX_FOLDER_SIZE] in one line."""
    side = min(min(w, h) for w, h in dims)
    if side > MAX_FOLDER_SIZE:
        raise DiffvaeError(f"folder:{root}: the images are {sizes_text(dims)}, {side} px on their shorter side, above the "
                           f"{MAX_FOLDER_SIZE} px a folder keeps without resizing (presets: 28, 32, 64 px); pass --size N "
                           f"to resize them, e.g. --size {MAX_FOLDER_SIZE}")
    if side < MIN_FOLDER_SIZE:
        raise DiffvaeError(f"folder:{root}: the smallest image is {side} px on its shorter side, below the "
                           f"{MIN_FOLDER_SIZE} px a model needs; pass --size N (N ≥ {MIN_FOLDER_SIZE}) to resize every image")
    return side


def sizes_text(dims: list[tuple[int, int]]) -> str:
    """"64×64", "48×60, 64×64" or "5 sizes, 40×48 to 300×200" (ordered by shorter side)."""
    distinct = sorted(Counter(dims), key=lambda d: (min(d), d))
    if len(distinct) <= LISTED_SIZES:
        return ", ".join(f"{w}×{h}" for w, h in distinct)
    (w0, h0), (w1, h1) = distinct[0], distinct[-1]
    return f"{len(distinct)} sizes, {w0}×{h0} to {w1}×{h1}"


def actions_text(dims: list[tuple[int, int]], side: int) -> str:
    """What making every image side×side does: how many are centre-cropped, resized down, enlarged."""
    counts = [(sum(w != h for w, h in dims), "non-square centre-cropped to a square"),
              (sum(min(w, h) > side for w, h in dims), f"resized down to {side} px"),
              (sum(min(w, h) < side for w, h in dims), f"enlarged to {side} px")]
    done = [f"{count} {what}" for count, what in counts if count]
    return ", ".join(done) if done else "kept as they are (no cropping, no resampling)"
