"""The diffusion families' diffusers export (``diffvae export RUN --to diffusers OUT``, :mod:`diffvae.export`):
a pixel-diffusion run as a diffusers pipeline folder, a latent-diffusion run's denoiser as ``unet/`` + ``scheduler/``.

diffvae's UNet (:mod:`diffvae.nn.unet`) has the block structure of diffusers' ``UNet2DModel``
(improved-diffusion layout), so the EMA weights map onto it tensor for tensor, without retraining
and without a second backbone:

=============================  ==========================================================
diffvae                        diffusers ``UNet2DModel``
=============================  ==========================================================
timestep_embedding (cos, sin)  ``time_proj``: ``flip_sin_to_cos=True``, ``freq_shift=0``
time_embed.0 / .2              ``time_embedding.linear_1`` / ``linear_2`` (SiLU between)
ResBlock norm_in, conv_in,     ``ResnetBlock2D`` norm1, conv1, time_emb_proj, norm2, conv2,
time_proj, norm_out,           conv_shortcut (``resnet_time_scale_shift="default"``:
conv_out, skip                 h + W·SiLU(emb))
Attention norm, qkv, proj      ``Attention`` group_norm, to_q | to_k | to_v (rows of qkv), to_out.0
level with attention           ``AttnDownBlock2D`` / ``AttnUpBlock2D``, else ``DownBlock2D`` / ``UpBlock2D``
Downsample / Upsample          ``downsamplers.0`` (stride-2 conv) / ``upsamplers.0`` (nearest ×2, conv)
middle_res_1, attention, _2    ``mid_block`` resnets.0, attentions.0, resnets.1
norm_out, conv_out             ``conv_norm_out``, ``conv_out``
=============================  ==========================================================

Two conditions, checked before anything is written: the image side must halve exactly at every
downsampling (diffusers upsamples by 2, diffvae to the skip's size: 28 with three levels works, 7
with two does not), and every attention layer must have the same head width (diffvae uses one
head per 64 channels, at least one), which becomes ``attention_head_dim`` (None = one head each).

The scheduler gets the run's forward process: ``num_train_timesteps`` T, ``beta_schedule``
``"linear"`` with diffvae's rescaled ends (1e-4·1000/T, 0.02·1000/T) or ``"squaredcos_cap_v2"``
for cosine (``trained_betas`` when a named schedule would not reproduce ᾱ to 1e-6, e.g. the
capped linear schedule of T < 21), ``prediction_type`` epsilon / v_prediction / sample,
``clip_sample`` = the run's ``clip_x0`` (range 1), ``set_alpha_to_one=True``, ``steps_offset=0``,
``timestep_spacing="leading"`` (diffvae's DDIM and DDPM grids). diffvae's DDIM re-derives ε̂
from the clipped x̂₀; diffusers does so with ``pipe(..., use_clipped_model_output=True)``, and then
DDIM samples from the same generator agree with ``diffvae sample --sampler ddim`` to float
rounding (the README.md written into OUT says so). Only the EMA weights are exported, as
safetensors. Of a latent-diffusion run only the denoiser is exported (``unet/``, ``scheduler/`` and
``latent.json`` with the latent scale; no ``model_index.json``): its autoencoder has no diffusers twin
(diffusers' AutoencoderKL pads its downsampling asymmetrically and has a mid-block attention), so the
latents are decoded with ``diffvae.load(RUN).decode(latents / scale)``.

Measured (digits, 32-wide UNet, 200 steps; images on [0, 1]): diffusers' DDIM (50 steps) differs from
diffvae's by at most 1.6e-6 (eps, linear) and 6.9e-7 (v, cosine), DDPMPipeline (100 steps, same seed) by
6.6e-6 and 2.3e-5; without ``use_clipped_model_output=True`` DDIM differs by up to 0.9. Training with
diffusers' implementation of the same network would be 1.0-1.05× (fp32) and 1.2× (bf16) slower per step on
one CPU thread (``benchmarks/bench_diffusers_unet.py``), so diffvae keeps its own UNet and exports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffvae.errors import DiffvaeError
from diffvae.nn.unet import Attention, Downsample, ResBlock, Upsample

PIPELINES = ("ddim", "ddpm")
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
MATCH_TOLERANCE = 1e-4  # the exported network must reproduce diffvae's output to this (max |Δ|) before OUT is written


def check_pipeline(pipeline: str) -> None:
    """Refuse a pipeline this module cannot write (before anything is written)."""
    if pipeline not in PIPELINES:
        raise DiffvaeError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")


def export_pipeline(model, folder: Path, pipeline: str = "ddim", run_path: str | Path = "run") -> None:
    """A pixel-diffusion model as a diffusers DDIMPipeline / DDPMPipeline folder (module docstring)."""
    import diffusers

    unet, scheduler = diffusers_parts(model.denoiser, pipeline)
    pipe = (diffusers.DDIMPipeline if pipeline == "ddim" else diffusers.DDPMPipeline)(unet=unet, scheduler=scheduler)
    save_pipeline(pipe, Path(folder), run_path, model, pipeline)


def diffusers_parts(denoiser, pipeline: str = "ddim"):
    """(UNet2DModel with the denoiser's weights, DDIMScheduler or DDPMScheduler of its schedule), both checked
    against diffvae's own network and ᾱ table."""
    import diffusers

    unet = diffusers.UNet2DModel(**diffusers_unet_config(denoiser.unet))
    unet.load_state_dict(diffusers_state_dict(denoiser.unet), strict=True)
    check_same_network(denoiser.unet, unet.eval(), denoiser.schedule.T)
    scheduler_class = diffusers.DDIMScheduler if pipeline == "ddim" else diffusers.DDPMScheduler
    scheduler = scheduler_class(**scheduler_config(denoiser, pipeline))
    check_same_schedule(denoiser.schedule, scheduler)
    return unet, scheduler


def attention_head_dim(unet) -> int | None:
    """The ``attention_head_dim`` that gives every diffvae attention layer its head count, or an error:
    None when every layer has one head (diffusers then uses each layer's width), else the common width."""
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    widths = {m.qkv.in_features // m.heads for m in layers}
    if all(m.heads == 1 for m in layers):
        return None
    if len(widths) == 1:
        return widths.pop()
    raise DiffvaeError("this UNet's attention layers have different head widths "
                       f"({', '.join(f'{m.qkv.in_features} channels in {m.heads} heads' for m in layers)}); "
                       "diffusers' UNet2DModel needs one head width")


def diffusers_unet_config(unet) -> dict[str, Any]:
    """The ``UNet2DModel`` keyword arguments of a diffvae :class:`~diffvae.nn.unet.UNet` (module docstring)."""
    config = unet.config
    levels = len(config.channel_mult)
    side = unet.image_size
    if side % 2 ** (levels - 1):
        raise DiffvaeError(f"{side}×{side} images do not halve exactly {levels - 1} times; diffusers' UNet2DModel "
                           "upsamples by 2, so this UNet cannot be exported (use fewer levels in --channel-mult)")
    if config.time_embed_mult != 4:
        raise DiffvaeError(f"diffusers' UNet2DModel has a 4× time embedding; this UNet has {config.time_embed_mult}×")
    attends = [config.attends_at(level) for level in range(levels)]
    return dict(
        sample_size=side, in_channels=unet.in_channels, out_channels=unet.out_channels,
        center_input_sample=False, time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        block_out_channels=tuple(config.channels * m for m in config.channel_mult),
        layers_per_block=config.num_res_blocks, mid_block_scale_factor=1, downsample_padding=1,
        downsample_type="conv", upsample_type="conv", dropout=config.dropout, act_fn="silu",
        attention_head_dim=attention_head_dim(unet), norm_num_groups=config.groups, norm_eps=1e-5,
        resnet_time_scale_shift="default", add_attention=True,
    )


def _resnet(block, prefix: str) -> dict[str, torch.Tensor]:
    names = {"norm_in": "norm1", "conv_in": "conv1", "time_proj": "time_emb_proj", "norm_out": "norm2",
             "conv_out": "conv2", "skip": "conv_shortcut"}
    return {f"{prefix}.{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in block.state_dict().items()}


def _attention(block, prefix: str) -> dict[str, torch.Tensor]:
    """diffvae's fused qkv rows are [q; k; v] (each head-major, as diffusers splits heads)."""
    weight, bias = block.qkv.weight.chunk(3, dim=0), block.qkv.bias.chunk(3, dim=0)
    out = {f"{prefix}.group_norm.weight": block.norm.weight, f"{prefix}.group_norm.bias": block.norm.bias,
           f"{prefix}.to_out.0.weight": block.proj.weight, f"{prefix}.to_out.0.bias": block.proj.bias}
    for name, w, b in zip(("to_q", "to_k", "to_v"), weight, bias):
        out[f"{prefix}.{name}.weight"], out[f"{prefix}.{name}.bias"] = w, b
    return out


def diffusers_state_dict(unet) -> dict[str, torch.Tensor]:
    """diffvae UNet weights under ``UNet2DModel``'s parameter names (module docstring), cloned and contiguous."""
    out = {"conv_in.weight": unet.conv_in.weight, "conv_in.bias": unet.conv_in.bias,
           "time_embedding.linear_1.weight": unet.time_embed[0].weight, "time_embedding.linear_1.bias": unet.time_embed[0].bias,
           "time_embedding.linear_2.weight": unet.time_embed[2].weight, "time_embedding.linear_2.bias": unet.time_embed[2].bias,
           "conv_norm_out.weight": unet.norm_out.weight, "conv_norm_out.bias": unet.norm_out.bias,
           "conv_out.weight": unet.conv_out.weight, "conv_out.bias": unet.conv_out.bias}
    out.update(_resnet(unet.middle_res_1, "mid_block.resnets.0"))
    out.update(_attention(unet.middle_attention, "mid_block.attentions.0"))
    out.update(_resnet(unet.middle_res_2, "mid_block.resnets.1"))
    for direction, blocks, per_level in (("down", unet.down, unet.config.num_res_blocks),
                                         ("up", unet.up, unet.config.num_res_blocks + 1)):
        level, index = 0, 0
        for block in blocks:
            prefix = f"{direction}_blocks.{level}"
            for layer in block:
                if isinstance(layer, ResBlock):
                    out.update(_resnet(layer, f"{prefix}.resnets.{index}"))
                elif isinstance(layer, Attention):
                    out.update(_attention(layer, f"{prefix}.attentions.{index}"))
                elif isinstance(layer, (Downsample, Upsample)):
                    kind = "downsamplers" if isinstance(layer, Downsample) else "upsamplers"
                    out.update({f"{prefix}.{kind}.0.conv.{k.split('.')[-1]}": v for k, v in layer.state_dict().items()})
            if isinstance(block[0], Downsample):
                level, index = level + 1, 0
            else:
                index += 1
                if direction == "up" and index == per_level:
                    level, index = level + 1, 0
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def check_same_network(unet, exported, T: int, generator: torch.Generator | None = None) -> None:
    """The exported network must give diffvae's output (max |Δ| ≤ ``MATCH_TOLERANCE``) on random inputs
    at the first, a middle and the last timestep; otherwise nothing is written."""
    generator = generator or torch.Generator().manual_seed(0)
    size = unet.image_size
    x = torch.randn(3, unet.in_channels, size, size, generator=generator)
    t = torch.tensor([0, T // 2, T - 1])
    with torch.no_grad():
        ours, theirs = unet(x, t), exported(x, t).sample
    error = float((ours - theirs).abs().max())
    if not error <= MATCH_TOLERANCE * max(1.0, float(ours.abs().max())):
        raise DiffvaeError(f"internal error: the diffusers UNet differs from diffvae's by {error:.3g}; nothing was written")


def scheduler_config(denoiser, pipeline: str = "ddim") -> dict[str, Any]:
    """DDIMScheduler / DDPMScheduler arguments that reproduce the run's schedule and sampling (module docstring)."""
    config, schedule = denoiser.config, denoiser.schedule
    T = schedule.T
    common = dict(num_train_timesteps=T, prediction_type=PREDICTION_TYPES[config.prediction],
                  clip_sample=bool(config.clip_x0), clip_sample_range=1.0, thresholding=False,
                  steps_offset=0, timestep_spacing="leading")
    if config.schedule == "linear":
        named = dict(beta_schedule="linear", beta_start=1e-4 * 1000.0 / T, beta_end=0.02 * 1000.0 / T)
    elif config.schedule == "cosine":
        named = dict(beta_schedule="squaredcos_cap_v2")
    else:
        named = {}
    if not named or not _named_schedule_matches(named, schedule):
        named = dict(trained_betas=schedule.betas.tolist())
    if pipeline == "ddim":
        return {**common, **named, "set_alpha_to_one": True}
    return {**common, **named, "variance_type": "fixed_small"}


def _named_schedule_matches(named: dict[str, Any], schedule) -> bool:
    from diffusers import DDPMScheduler

    alphas_cumprod = DDPMScheduler(num_train_timesteps=schedule.T, **named).alphas_cumprod.double()
    return bool(torch.allclose(alphas_cumprod, schedule.alphas_cumprod, rtol=1e-5, atol=1e-6))


def check_same_schedule(schedule, scheduler) -> None:
    error = float((scheduler.alphas_cumprod.double() - schedule.alphas_cumprod).abs().max())
    if error > 1e-6:
        raise DiffvaeError(f"internal error: the diffusers schedule differs from diffvae's (ᾱ by {error:.3g}); nothing was written")


def save_pipeline(pipe, folder: Path, run_path, model, pipeline: str) -> None:
    pipe.save_pretrained(folder, safe_serialization=True)
    steps = model.config.sample_steps if model.config.sampler == pipeline else 50
    name = "DDIMPipeline" if pipeline == "ddim" else "DDPMPipeline"
    clipped = ", use_clipped_model_output=True" if pipeline == "ddim" else ""
    readme = (f"# diffvae export\n\nPixel-diffusion run `{Path(run_path).resolve().name}` "
              f"({model.trained_steps} steps, EMA weights), {'×'.join(map(str, model.image_shape))} images.\n\n"
              f"```python\nimport torch\nfrom diffusers import {name}\n\npipe = {name}.from_pretrained(\"OUT\")\n"
              f"images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0), num_inference_steps={steps}"
              f"{clipped}, output_type=\"np\").images\n```\n\n"
              + ("`use_clipped_model_output=True` re-derives ε̂ from the clipped x̂₀ as diffvae's DDIM does; with it the samples "
                 "match `diffvae sample --sampler ddim` from the same seed to float rounding.\n" if clipped else "")
              + f"\nFeature space, schedule and training: see the run's config.json:\n\n```json\n"
              f"{json.dumps(model.run_config.get('model', {}), indent=2, sort_keys=True)}\n```\n")
    (folder / "README.md").write_text(readme)


