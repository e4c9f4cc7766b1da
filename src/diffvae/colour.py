"""Colour data that needs no download, and the horizontal-flip augmentation.

No installed (or small, standard) package ships a labelled natural-image set that loads offline:
torchvision and the CIFAR wrappers download, scikit-image and scipy fetch their photos through
pooch. scikit-learn does ship two colour photographs inside its wheel
(``sklearn.datasets.load_sample_images``: ``china.jpg`` and ``flower.jpg``, 427×640 RGB), so the
built-in colour sources are built from those and from procedural drawing:

* ``colours`` — 6,000 images 3×32×32 (``size`` sets the drawing resolution), 10 balanced classes.
  Class k is the shape ``COLOUR_SHAPES[k % 5]`` (circle, square, diamond, ring, plus) filled with
  the hue 36k degrees (saturation in [0.75, 1], value in [0.7, 1], hue jittered by ±5 degrees),
  at a random centre and size, on a background that is a random patch of one of the two photos
  dimmed to 40 % (natural colour texture, so the set is not flat-coloured). Attributes per image:
  ``x``, ``y`` (centre, pixel-index coordinates), ``size`` (pixels), ``hue`` (degrees),
  ``background`` (0 china, 1 flower).
* ``photos`` — 4,000 natural-image patches: a square crop of side ``scale·size`` (``scale``
  uniform in [1, 4]) at a random place in one of the two photos, resized to size×size
  (antialiased); labelled by the photo it came from (``china`` / ``flower``). Attributes ``x``,
  ``y`` (crop centre in the photo's pixels) and ``scale``.

Both are deterministic given the seed (the data split seed), like ``shapes``. Edges are
antialiased by coverage clamp(½ − d, 0, 1) with d the signed distance from the pixel centre to
the shape boundary in pixels (negative inside), as :func:`diffvae.data.make_shapes`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffvae.errors import DiffvaeError
from diffvae.sources import Source, check_fits_in_memory, package_file

COLOUR_SOURCES = ("colours", "photos")
COLOUR_SHAPES = ("circle", "square", "diamond", "ring", "plus")
HUE_NAMES = ("red", "orange", "lime", "green", "teal", "cyan", "azure", "violet", "magenta", "pink")
COLOUR_CLASSES = tuple(f"{HUE_NAMES[k]}-{COLOUR_SHAPES[k % 5]}" for k in range(10))
PHOTO_FILES = ("china.jpg", "flower.jpg")
PHOTO_CLASSES = ("china", "flower")
DEFAULT_COLOURS_COUNT = 6000
DEFAULT_PHOTOS_COUNT = 4000
DEFAULT_COLOUR_SIZE = 32
BACKGROUND_DIMMING = 0.4
BACKGROUND_PHOTO_SCALE = 2  # backgrounds are cut from the photos downscaled by 2 (more structure per patch)

_PHOTOS: dict[int, np.ndarray] = {}


def read_colour_source(kind: str, size: int | None, seed: int):
    """The ``colours`` or ``photos`` source for :func:`diffvae.data.load_data` (a :class:`diffvae.sources.Source`)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "colours":
        images, labels, attributes = make_colours(DEFAULT_COLOURS_COUNT, size or DEFAULT_COLOUR_SIZE, generator)
        return Source("colours", images, labels, len(COLOUR_CLASSES), attributes, list(COLOUR_CLASSES))
    if kind == "photos":
        images, labels, attributes = make_photo_patches(DEFAULT_PHOTOS_COUNT, size or DEFAULT_COLOUR_SIZE, generator)
        return Source("photos", images, labels, len(PHOTO_CLASSES), attributes, list(PHOTO_CLASSES))
    raise DiffvaeError(f"unknown colour source {kind!r}; choose one of {', '.join(COLOUR_SOURCES)}")


def photo(index: int, downscale: int = 1) -> np.ndarray:
    """One of scikit-learn's two sample photographs (0 china, 1 flower) as uint8 (H, W, 3), optionally
    downscaled by an integer factor (antialiased, PIL's reduce: the mean of each factor² block)."""
    from PIL import Image

    key = index * 100 + downscale
    if key not in _PHOTOS:
        path = package_file("sklearn", "datasets", "images", PHOTO_FILES[index])
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                if downscale > 1:
                    rgb = rgb.reduce(downscale)
                _PHOTOS[key] = np.asarray(rgb, dtype=np.uint8).copy()
        except (OSError, ValueError) as err:
            raise DiffvaeError(f"cannot read scikit-learn's sample photo {path}: {err}") from None
    return _PHOTOS[key]


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV → RGB in [0, 1], element-wise; h in turns ([0, 1) is one turn), s, v in [0, 1].

    Channel n ∈ {5, 3, 1} (R, G, B) is v − v·s·clamp(min(k, 4 − k), 0, 1) with k = (n + 6h) mod 6
    (the piecewise-linear hue wheel). Returns shape (*h.shape, 3).
    """
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        channels.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=-1)


def _shape_distance(shape: int, dx: torch.Tensor, dy: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) to shape ``COLOUR_SHAPES[shape]`` of size ``side``
    centred at the origin: circle of diameter s; square of side s; diamond |dx| + |dy| ≤ s/2 (L1
    distance / √2, exact along the edges); ring of radius 0.35 s, half-width 0.12 s; plus of two
    bars s long and s/3 wide."""
    radius = torch.sqrt(dx**2 + dy**2)
    if shape == 0:
        return radius - side / 2
    if shape == 1:
        return torch.maximum(dx.abs(), dy.abs()) - side / 2
    if shape == 2:
        return (dx.abs() + dy.abs() - side / 2) / math.sqrt(2.0)
    if shape == 3:
        return (radius - 0.35 * side).abs() - 0.12 * side
    horizontal = torch.maximum(dx.abs() - side / 2, dy.abs() - side / 6)
    vertical = torch.maximum(dy.abs() - side / 2, dx.abs() - side / 6)
    return torch.minimum(horizontal, vertical)


def _backgrounds(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random size×size patches of the two photos (downscaled), float (n, 3, size, size) in [0, 255],
    and which photo each came from."""
    which = torch.randint(0, len(PHOTO_FILES), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for index in range(len(PHOTO_FILES)):
        image = photo(index, BACKGROUND_PHOTO_SCALE)
        h, w, _ = image.shape
        if min(h, w) < size:
            raise DiffvaeError(f"colours: size {size} is larger than the sample photos ({h}×{w} after downscaling)")
        for i in torch.nonzero(which == index).flatten().tolist():
            top, left = int(u[i, 0] * (h - size + 1)), int(u[i, 1] * (w - size + 1))
            out[i] = image[top:top + size, left:left + size]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float(), which


def make_colours(
    n: int, size: int = DEFAULT_COLOUR_SIZE, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Draw ``n`` images of the ``colours`` set (module docstring): (uint8 (n, 3, size, size), int64
    labels, attributes). Pixel = coverage·object colour + (1 − coverage)·dimmed background."""
    if size < 8:
        raise DiffvaeError(f"colours need size >= 8 pixels, got {size}")
    check_fits_in_memory(n * size * size * 4 * 8, f"{n} colour images of {size}×{size}")
    generator = generator or torch.Generator().manual_seed(0)
    classes = len(COLOUR_CLASSES)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=generator)]
    side = size * (0.45 + 0.35 * torch.rand(n, generator=generator))
    reach = side / 2 + 0.5  # every shape lies inside the square of side s around its centre
    x = reach + (size - 1 - 2 * reach).clamp(min=0) * torch.rand(n, generator=generator)
    y = reach + (size - 1 - 2 * reach).clamp(min=0) * torch.rand(n, generator=generator)
    hue = (labels * 36.0 + 10.0 * (torch.rand(n, generator=generator) - 0.5)) % 360.0
    saturation = 0.75 + 0.25 * torch.rand(n, generator=generator)
    value = 0.7 + 0.3 * torch.rand(n, generator=generator)
    background, which = _backgrounds(n, size, generator)

    coords = torch.arange(size, dtype=torch.float32)
    distance = torch.empty(n, size, size)
    for shape in range(len(COLOUR_SHAPES)):
        chosen = labels % len(COLOUR_SHAPES) == shape
        dx = coords.view(1, 1, size) - x[chosen].view(-1, 1, 1)
        dy = coords.view(1, size, 1) - y[chosen].view(-1, 1, 1)
        distance[chosen] = _shape_distance(shape, dx, dy, side[chosen].view(-1, 1, 1))
    coverage = (0.5 - distance).clamp(0.0, 1.0).unsqueeze(1)  # (n, 1, size, size)
    colour = 255.0 * hsv_to_rgb(hue / 360.0, saturation, value).view(n, 3, 1, 1)
    images = coverage * colour + (1.0 - coverage) * BACKGROUND_DIMMING * background
    attributes = {"x": x, "y": y, "size": side, "hue": hue, "background": which.float()}
    return images.round().clamp(0, 255).to(torch.uint8), labels, attributes


def make_photo_patches(
    n: int, size: int = DEFAULT_COLOUR_SIZE, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` patches of the ``photos`` set (module docstring): (uint8 (n, 3, size, size), int64 labels
    0 china / 1 flower, balanced, attributes ``x``, ``y``, ``scale``)."""
    from PIL import Image

    if size < 8:
        raise DiffvaeError(f"photos need size >= 8 pixels, got {size}")
    check_fits_in_memory(n * size * size * 3 * 2, f"{n} photo patches of {size}×{size}")
    generator = generator or torch.Generator().manual_seed(0)
    labels = (torch.arange(n) % len(PHOTO_FILES))[torch.randperm(n, generator=generator)]
    scale = 1.0 + 3.0 * torch.rand(n, generator=generator)
    u = torch.rand(n, 2, generator=generator)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    centres = torch.empty(n, 2)
    for index in range(len(PHOTO_FILES)):
        image = Image.fromarray(photo(index))
        w, h = image.size
        for i in torch.nonzero(labels == index).flatten().tolist():
            crop = min(round(float(scale[i]) * size), h, w)
            top, left = int(u[i, 0] * (h - crop + 1)), int(u[i, 1] * (w - crop + 1))
            patch = image.crop((left, top, left + crop, top + crop))
            out[i] = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))
            centres[i] = torch.tensor([left + (crop - 1) / 2, top + (crop - 1) / 2])
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images, labels, {"x": centres[:, 0], "y": centres[:, 1], "scale": scale}


def hflip(images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``; a new tensor, the input is untouched.

    Image i is flipped where u_i < p with u = ``torch.rand(N, generator=generator)`` (one draw per
    image, whatever p is, so the stream advances the same for every p). ``images``: uint8 (N, C, H, W).
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        what = f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DiffvaeError(f"hflip expects uint8 images (N, C, H, W), got {what}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise DiffvaeError(f"the flip probability must be a number in [0, 1], got {p!r}")
    chosen = torch.rand(images.shape[0], generator=generator, device=generator.device if generator else "cpu") < p
    chosen = chosen.to(images.device).view(-1, 1, 1, 1)
    return torch.where(chosen, images.flip(-1), images)


def hflip_generator(seed: int, step: int) -> torch.Generator:
    """The generator of training step ``step``'s flips: seeded from sha256("hflip:{seed}:{step}"), a pure
    function of (seed, step) — so an exactly resumed run flips the same images, every DDP rank draws the same
    flips for the global batch, and the stream is independent of the data order's (``train.batch_indices``)."""
    import hashlib

    digest = hashlib.sha256(f"hflip:{int(seed)}:{int(step)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
