"""Model presets by image shape: each family's spec says which of its config fields suit images of a
given (C, H, W) (``FamilySpec.preset_for``, in the family's own package); this module only applies them.

A new ``diffvae train`` run takes its family's preset for the data's shape under the flags the user
gave (and a ``--budget`` recipe's values), which always win; ``compare`` sizes its configs through the
family's ``compare_model_overrides``, which starts from the same preset. The presets (see each spec's
``preset_for``) keep 28 and 32 px at the families' defaults and grow what must grow with the image:

| image | pixel UNet (ddpm, flow) | latent diffusion | VAE |
|---|---|---|---|
| 1×28×28, 1×32×32 | levels 28/32 → 7/8 px, attention at 7/8 px | f = 4 (7×7 / 8×8 latent) | latent 16 |
| 3×32×32 | as above | as above | latent 32 |
| 1×64×64 | one more level (64 → 8 px), attention at 8×8 | f = 4 (16×16 latent), attention at 8×8 | latent 32 |
| 3×64×64 | as above | as above | latent 64 |
"""

from __future__ import annotations

import dataclasses
from typing import Any


def preset_values(spec, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The family's preset for ``image_shape`` (``spec.preset_for``; the contract's default is none)."""
    return dict(spec.preset_for(tuple(int(s) for s in image_shape)))


def preset_config(spec, config, image_shape: tuple[int, int, int], given: set[str] | frozenset[str] = frozenset()):
    """``config`` with the family's preset for ``image_shape`` on every field not in ``given`` (validated again)."""
    values = {name: value for name, value in preset_values(spec, image_shape).items() if name not in given}
    return dataclasses.replace(config, **values) if values else config


def levels_to(size: int, lowest: int = 8) -> int:
    """How many resolution levels a network halving ``size`` (rounding up) needs to reach ``lowest`` px or less:
    28 → 3 (28, 14, 7), 32 → 3 (32, 16, 8), 64 → 4 (64, 32, 16, 8), 16 → 2."""
    levels = 1
    while -(-size // 2 ** (levels - 1)) > lowest:
        levels += 1
    return levels


def unet_channel_mult(size: int, default: tuple[int, ...] = (1, 2, 2)) -> tuple[int, ...]:
    """A UNet's ``channel_mult`` for feature maps of ``size`` px: ``default``, with one more level of the same
    width (×2) for each halving needed beyond it so that the lowest level is 8 px or less, where the UNet's
    default ``attention_levels`` (-1,) puts self-attention, as at 28/32 px (7×7 / 8×8)."""
    extra = max(0, levels_to(size) - len(default))
    return tuple(default) + (default[-1],) * extra


def unet_preset(image_shape: tuple[int, int, int], default_mult: tuple[int, ...]) -> dict[str, Any]:
    """A UNet family's preset (pixel diffusion, flow matching): the default three levels up to 32 px (28 → 7,
    32 → 8 px, attention there), one more per halving above (64 px: (1, 2, 2, 2), attention at 8×8, not 16×16:
    4× fewer attention tokens). Grey or colour alike."""
    mult = unet_channel_mult(max(image_shape[1:]))
    return {"channel_mult": mult} if mult != default_mult else {}


def unet_compare_overrides(image_shape: tuple[int, int, int], default_mult: tuple[int, ...]) -> dict[str, Any]:
    """A UNet family in ``compare``: its preset; tiny images (≤ 16 px) get a smaller UNet, 32 wide, two levels."""
    return {"channels": 32, "channel_mult": (1, 2)} if image_shape[1] <= 16 else unet_preset(image_shape, default_mult)
