"""The denoising UNet ε_θ(x_t, t) for pixel diffusion and latent diffusion (a network only: no schedule, no loss).

Layout (DDPM / improved-diffusion style)::

    conv_in ─ [ResBlock (+Attention)] × num_res_blocks ─ Downsample ─ ... ─ middle: Res, Attn, Res
            ─ [concat skip, ResBlock (+Attention)] × (num_res_blocks + 1) ─ Upsample ─ ... ─ GroupNorm, SiLU, conv_out

* ``channel_mult[i] * channels`` channels at level ``i``; level ``i`` works at resolution
  ``ceil(H / 2**i)`` (stride-2 convolutions), so odd sizes work: 28 → 14 → 7 → 4.
* Upsampling is told the size of the skip it meets (nearest-neighbour to that size), so 7 → 14 and
  4 → 7 both come back exactly.
* Self-attention (``scaled_dot_product_attention``, one head per 64 channels) at the levels listed in
  ``attention_levels`` (indices into ``channel_mult``, negative counts from the lowest resolution) and
  always in the middle block.
* The final convolution starts at zero, so the untrained network predicts 0 (the standard choice).

Speed on CPU (measured, ``benchmarks/bench_train.py``): train under ``torch.autocast("cpu", dtype=torch.bfloat16)``
(oneDNN bf16 convolutions; GroupNorm and SiLU stay bf16) with contiguous NCHW tensors. ``channels_last``
is not faster here: the convolutions gain ~8% but GroupNorm's CPU kernel is 7-15× slower on it.
Convolutions are ~85% of a training step and run near the machine's matmul peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffvae.errors import DiffvaeError

__all__ = ["UNetConfig", "UNet", "timestep_embedding", "attention"]

ATTENTION_HEAD_CHANNELS = 64
# Up to this many positions (16×16), attention is two batched matmuls and a softmax; above it,
# ``scaled_dot_product_attention`` (memory-efficient: never builds the L×L matrix). Measured on CPU at
# 16-196 positions: the matmul form trains 2.4-6× faster in bf16 (the flash kernel's bf16 backward is
# slow) and within ±20% in fp32.
DENSE_ATTENTION_MAX_POSITIONS = 256


@dataclass
class UNetConfig:
    """Widths and depth of a :class:`UNet`; ``dataclasses.asdict`` → JSON → ``UNetConfig(**d)`` round-trips.

    channels:          width of the first level (the base width).
    channel_mult:      width of level ``i`` is ``channels * channel_mult[i]``; ``len - 1`` downsamplings.
    num_res_blocks:    residual blocks per level on the way down (one more on the way up).
    attention_levels:  levels (indices into ``channel_mult``, negative allowed) with self-attention.
    groups:            GroupNorm groups; every level width must be divisible by it.
    dropout:           dropout probability inside residual blocks.
    time_embed_mult:   the time-embedding MLP has ``channels * time_embed_mult`` features.
    num_classes:       K > 0: class-conditional, with K + 1 learned class embeddings (the last, K, is the
                       null label of classifier-free guidance) added to the time embedding; 0: none
                       (the network and its state dict are exactly the unconditional ones).
    """

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (-1,)
    groups: int = 32
    dropout: float = 0.0
    time_embed_mult: int = 4
    num_classes: int = 0

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(int(i) for i in self.attention_levels)
        if self.channels < 1:
            raise DiffvaeError(f"unet channels must be >= 1, got {self.channels}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise DiffvaeError(f"unet channel_mult must be a non-empty list of positive integers, got {list(self.channel_mult)}")
        if self.num_res_blocks < 1:
            raise DiffvaeError(f"unet num_res_blocks must be >= 1, got {self.num_res_blocks}")
        levels = len(self.channel_mult)
        for level in self.attention_levels:
            if not -levels <= level < levels:
                raise DiffvaeError(
                    f"unet attention level {level} is out of range for {levels} levels (channel_mult={list(self.channel_mult)})"
                )
        if self.groups < 1:
            raise DiffvaeError(f"unet groups must be >= 1, got {self.groups}")
        for width in {self.channels * m for m in self.channel_mult}:
            if width % self.groups:
                raise DiffvaeError(
                    f"unet width {width} is not divisible by groups={self.groups}; choose channels/groups so that it is"
                )
        self._check_embedding_reaches_output()
        if not 0.0 <= self.dropout < 1.0:
            raise DiffvaeError(f"unet dropout must be in [0, 1), got {self.dropout}")
        if self.time_embed_mult < 1:
            raise DiffvaeError(f"unet time_embed_mult must be >= 1, got {self.time_embed_mult}")
        if self.num_classes < 0:
            raise DiffvaeError(f"unet num_classes must be >= 0, got {self.num_classes}")

    def _check_embedding_reaches_output(self) -> None:
        """Each residual block adds the time (and label) embedding as one constant per channel, then GroupNorm
        subtracts each group's mean: with one channel per group it removes that constant exactly. Where every
        level has one channel per group the network cannot see t or the label at all: refused."""
        widest = self.channels * max(self.channel_mult)
        if widest // self.groups < 2:
            raise DiffvaeError(
                f"unet groups={self.groups} leaves one channel per GroupNorm group at every level (widths "
                f"{sorted({self.channels * m for m in self.channel_mult})}): the norm removes the time/label embedding "
                "exactly and the network cannot see t or the label; use wider levels or fewer groups"
            )

    def attends_at(self, level: int) -> bool:
        """Whether level ``level`` (0 = full resolution) has self-attention."""
        levels = len(self.channel_mult)
        return any(a % levels == level for a in self.attention_levels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and DDPM.

    With ``half = dim // 2`` and frequencies ``ω_k = max_period^(−k / half)`` for ``k = 0 … half−1``::

        emb(t) = [cos(t·ω_0), …, cos(t·ω_{half−1}), sin(t·ω_0), …, sin(t·ω_{half−1})]   (zero-padded if dim is odd)

    Computed in float32 whatever ``t``'s dtype. ``t``: shape (N,). Returns (N, dim).
    """
    half = dim // 2
    exponents = torch.arange(half, device=t.device, dtype=torch.float32) / half
    frequencies = torch.exp(-math.log(max_period) * exponents)
    angles = t.to(torch.float32)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention ``softmax(q kᵀ / √d) v`` over the last two dims (…, L, d).

    Dense matmuls for L ≤ ``DENSE_ATTENTION_MAX_POSITIONS`` (the softmax in at least float32), otherwise
    ``F.scaled_dot_product_attention``; both compute the same function.
    """
    if q.shape[-2] > DENSE_ATTENTION_MAX_POSITIONS:
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return torch.matmul(weights, v)


class ResBlock(nn.Module):
    """``h = conv(SiLU(GN(x))) + W·SiLU(emb)``; ``out = skip(x) + conv(dropout(SiLU(GN(h))))``."""

    def __init__(self, in_channels: int, out_channels: int, embed_channels: int, groups: int, dropout: float):
        super().__init__()
        self.norm_in = nn.GroupNorm(groups, in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(embed_channels, out_channels)
        self.norm_out = nn.GroupNorm(groups, out_channels)
        self.dropout = dropout
        self.conv_out = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        h = h + self.time_proj(emb)[:, :, None, None]
        h = F.silu(self.norm_out(h))
        if self.dropout > 0.0:
            h = F.dropout(h, self.dropout, self.training)
        return self.skip(x) + self.conv_out(h)


class Attention(nn.Module):
    """Residual multi-head self-attention over the H·W positions: ``x + proj(SDPA(q, k, v))``, q,k,v = 1×1 conv of GN(x)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // ATTENTION_HEAD_CHANNELS)
        if channels % self.heads:
            raise DiffvaeError(f"unet attention width {channels} is not divisible into {self.heads} heads")
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.qkv(tokens).view(batch, height * width, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = attention(q, k, v)  # (N, heads, HW, C/heads)
        attended = attended.transpose(1, 2).reshape(batch, height * width, channels)
        out = self.proj(attended).transpose(1, 2).reshape(batch, channels, height, width)
        return x + out


class Downsample(nn.Module):
    """Stride-2 3×3 convolution: H → ceil(H / 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to the skip's size ``(H, W)`` followed by a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """ε-network: ``forward(x (N, in_channels, H, W), t (N,), labels (N,) | None) -> (N, out_channels, H, W)``.

    ``t`` holds int64 or float timesteps in ``[0, T)``; they enter through :func:`timestep_embedding`
    and an MLP, and every residual block adds a learned projection of that embedding.
    With ``config.num_classes = K > 0`` a learned embedding of the class label (0..K−1, or the null
    label K) is added to the time embedding before its SiLU (improved-diffusion's ``label_emb``);
    ``labels=None`` means the null label. ``labels`` may also be float class weights w (N, K+1) (rows on the
    simplex): the embedding is then Σ_c w_c e(c) = w @ E (interpolating between classes); a one-hot row gives
    exactly the embedding of its int label.
    ``image_size`` is only checked (any H, W from 1 up works); it documents what the net was built for.
    """

    def __init__(self, config: UNetConfig, in_channels: int, out_channels: int | None = None, image_size: int = 32):
        super().__init__()
        if in_channels < 1:
            raise DiffvaeError(f"unet in_channels must be >= 1, got {in_channels}")
        if image_size < 1:
            raise DiffvaeError(f"unet image_size must be >= 1, got {image_size}")
        self.config = config
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.image_size = image_size
        base = config.channels
        embed_channels = base * config.time_embed_mult
        groups, dropout = config.groups, config.dropout
        widths = [base * m for m in config.channel_mult]

        self.time_embed = nn.Sequential(nn.Linear(base, embed_channels), nn.SiLU(), nn.Linear(embed_channels, embed_channels))
        if config.num_classes:  # absent when unconditional: old checkpoints load unchanged
            self.class_embed = nn.Embedding(config.num_classes + 1, embed_channels)
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)

        self.down = nn.ModuleList()
        skip_widths = [base]
        width = base
        for level, level_width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                block = nn.ModuleList([ResBlock(width, level_width, embed_channels, groups, dropout)])
                width = level_width
                if config.attends_at(level):
                    block.append(Attention(width, groups))
                self.down.append(block)
                skip_widths.append(width)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([Downsample(width)]))
                skip_widths.append(width)

        self.middle_res_1 = ResBlock(width, width, embed_channels, groups, dropout)
        self.middle_attention = Attention(width, groups)
        self.middle_res_2 = ResBlock(width, width, embed_channels, groups, dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for index in range(config.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(width + skip_widths.pop(), widths[level], embed_channels, groups, dropout)])
                width = widths[level]
                if config.attends_at(level):
                    block.append(Attention(width, groups))
                if level > 0 and index == config.num_res_blocks:
                    block.append(Upsample(width))
                self.up.append(block)

        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = nn.Conv2d(width, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise DiffvaeError(f"unet expects input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise DiffvaeError(f"unet expects one timestep per image, shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = F.silu(self._embedding(t, labels, x.shape[0]))

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            for layer in block:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)

        h = self.middle_res_1(h, emb)
        h = self.middle_attention(h)
        h = self.middle_res_2(h, emb)

        for block in self.up:
            skip = skips.pop()
            for layer in block:
                if isinstance(layer, ResBlock):
                    h = layer(torch.cat([h, skip], dim=1), emb)
                elif isinstance(layer, Upsample):
                    h = layer(h, skips[-1].shape[-2:])
                else:
                    h = layer(h)

        return self.conv_out(F.silu(self.norm_out(h)))

    def _embedding(self, t: Tensor, labels: Tensor | None, n: int) -> Tensor:
        """time MLP(t) (+ class embedding of ``labels``, the null label K where None)."""
        emb = self.time_embed(timestep_embedding(t, self.config.channels))
        k = self.config.num_classes
        if not k:
            if labels is not None:
                raise DiffvaeError("this network is unconditional (num_classes=0); it takes no labels")
            return emb
        if labels is None:
            labels = torch.full((n,), k, dtype=torch.long, device=t.device)
        if labels.dtype.is_floating_point:  # class weights (n, K+1): the mixture Σ_c w_c e(c) of class embeddings
            if labels.shape != (n, k + 1):
                raise DiffvaeError(f"unet expects class weights of shape ({n}, {k + 1}), got {tuple(labels.shape)}")
            return emb + (labels.to(t.device, torch.float32) @ self.class_embed.weight.float()).to(emb.dtype)
        if labels.shape != (n,):
            raise DiffvaeError(f"unet expects one label per image, shape ({n},), got {tuple(labels.shape)}")
        return emb + self.class_embed(labels.to(t.device)).to(emb.dtype)
