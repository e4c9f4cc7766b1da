"""The latent-diffusion family's diffusers export: only the denoiser (``unet/``, ``scheduler/`` and
``latent.json`` with the latent scale; no ``model_index.json``). Its autoencoder has no diffusers twin
(diffusers' AutoencoderKL pads its downsampling asymmetrically and has a mid-block attention), so the
latents are decoded with ``diffvae.load(RUN).decode(latents / scale)``. The UNet and scheduler mapping
is the pixel-diffusion one (:mod:`diffvae.diffusion.export`)."""

from __future__ import annotations

import json
from pathlib import Path

from diffvae.diffusion.export import diffusers_parts


def export_denoiser(model, folder: Path, pipeline: str = "ddim", run_path: str | Path = "run") -> None:
    """Write the denoiser of a latent-diffusion ``model`` into ``folder`` (module docstring)."""
    unet, scheduler = diffusers_parts(model.denoiser, pipeline)
    save_denoiser(unet, scheduler, Path(folder), run_path, model, pipeline)


def save_denoiser(unet, scheduler, folder: Path, run_path, model, pipeline: str) -> None:
    """A latent-diffusion run's denoiser: ``unet/`` and ``scheduler/`` (diffusers loads each with
    ``from_pretrained(OUT, subfolder=...)``), and ``latent.json`` (latent shape and scale s). Its autoencoder
    has no diffusers twin, so there is no pipeline: decode z = latents / s with ``diffvae.load(RUN).decode``."""
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    info = {"latent_shape": list(model.latent_shape), "latent_scale": model.scale, "run": str(Path(run_path).resolve()),
            "decode": "z = latents / latent_scale; images = diffvae.load(run).decode(z)  # uint8"}
    (folder / "latent.json").write_text(json.dumps(info, indent=2) + "\n")
    name = "DDIMScheduler" if pipeline == "ddim" else "DDPMScheduler"
    c, h, w = model.latent_shape
    (folder / "README.md").write_text(
        f"# diffvae export: the denoiser of latent-diffusion run `{Path(run_path).resolve().name}`\n\n"
        f"Diffusion on scaled latents s·z of shape {c}×{h}×{w} (s = {model.scale:.6g}); EMA weights.\n\n"
        f"```python\nimport torch, diffvae\nfrom diffusers import UNet2DModel, {name}\n\n"
        f"unet = UNet2DModel.from_pretrained(\"OUT\", subfolder=\"unet\")\n"
        f"scheduler = {name}.from_pretrained(\"OUT\", subfolder=\"scheduler\")\nscheduler.set_timesteps(50)\n"
        f"x = torch.randn(16, {c}, {h}, {w}, generator=torch.Generator().manual_seed(0))\n"
        f"with torch.no_grad():\n    for t in scheduler.timesteps:\n"
        f"        x = scheduler.step(unet(x, t).sample, t, x).prev_sample\n"
        f"images = diffvae.load(\"RUN\").decode(x / {model.scale!r})  # uint8 (16, C, H, W)\n```\n")
