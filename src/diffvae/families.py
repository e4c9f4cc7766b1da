"""The registry: a family name → its config dataclass, its model class, its spec
(:class:`diffvae.contract.FamilySpec`: everything the CLI, evaluation and compare know about it)
and its training defaults. Adding a family is one line here; see diffvae.contract.

Imports are lazy so that ``diffvae --help`` and the data commands stay fast.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from diffvae.errors import DiffvaeError
from diffvae.recipes import Recipe


@dataclass(frozen=True)
class Family:
    name: str
    module: str
    model_class: str
    config_class: str
    summary: str
    train_defaults: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields this family changes
    recipes: tuple = ()  # compute-aware defaults for --budget runs, small to large (diffvae.recipes.Recipe)
    spec_path: str = ""  # "package.module:NAME" of its FamilySpec (default: NAME = SPEC in ``module``)

    def load(self):
        """(ConfigClass, ModelClass)."""
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config_class), getattr(mod, self.model_class)

    def spec(self):
        """The family's :class:`diffvae.contract.FamilySpec`."""
        module, _, name = (self.spec_path or f"{self.module}:SPEC").partition(":")
        return getattr(importlib.import_module(module), name or "SPEC")


# Compute-aware defaults (diffvae.recipes). Swept on mnist at 2 CPU-minutes on one core (bf16 on AMX, about
# 56,000 reference GFLOP: 120 s at 470 GFLOP/s): the 16-wide UNet at batch 32, lr 2e-3 trained 866 steps to
# the 32-wide default's 284 and reached FID 347 against 440, both with ancestral sampling on 100 steps
# (benchmarks/RESULTS.md). Where the 32-wide UNet overtakes it was not measured: its threshold assumes it
# needs the 4× compute that gives it as many optimizer steps.
DDPM_RECIPES = (
    Recipe("ddpm-small", 0.0, {"channels": 16}, {"batch_size": 32, "lr": 2e-3},
           "16-wide UNet, batch 32: more steps win at a few CPU-minutes"),
    Recipe("ddpm-default", 225_000.0, {}, {}, "32-wide UNet, batch 64"),
)

FAMILIES: dict[str, Family] = {
    "vae": Family("vae", "diffvae.vae.model", "VAE", "VAEConfig",
                  "variational autoencoder: learned encoder, compressed latent, single decode",
                  {"lr": 2e-3, "batch_size": 64, "ema_decay": 0.995}, spec_path="diffvae.vae.family:SPEC"),  # swept: benchmarks/RESULTS.md, recipe sweep
    "ddpm": Family("ddpm", "diffvae.diffusion.model", "DDPM", "DDPMConfig",
                   "pixel-space diffusion: fixed Gaussian forward process, iterative denoising",
                   {"lr": 1e-3, "batch_size": 64, "ema_decay": 0.995, "warmup_steps": 200}, recipes=DDPM_RECIPES,
                   spec_path="diffvae.diffusion.family:SPEC"),
    "ldm": Family("ldm", "diffvae.latent.model", "LatentDiffusion", "LDMConfig",
                  "latent diffusion: a KL autoencoder compresses, diffusion models its latent",
                  {"lr": 1e-3, "batch_size": 64, "ema_decay": 0.995, "warmup_steps": 200},
                  spec_path="diffvae.latent.family:SPEC"),
    "flow": Family("flow", "diffvae.flow.model", "FlowMatching", "FlowConfig", "flow matching: straight noise-to-data paths, ODE sampling and ODE likelihood", {"lr": 1e-3, "batch_size": 64, "ema_decay": 0.995, "warmup_steps": 200}, recipes=tuple(dataclasses.replace(r, name=r.name.replace("ddpm", "flow")) for r in DDPM_RECIPES), spec_path="diffvae.flow.family:SPEC"),  # the same UNet and cost per step as ddpm, so its recipes (flow-small measured: FID 96 on mnist after 2 CPU-min, heun 25)
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise DiffvaeError(f"unknown family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def config_from_dict(config_class, values: dict[str, Any]):
    """Build a config dataclass from JSON values, refusing unknown keys (a config that does not
    match the code is an error, not something to guess around)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise DiffvaeError(f"unknown {config_class.__name__} field(s): {', '.join(unknown)}")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as e:
        raise DiffvaeError(f"invalid {config_class.__name__}: {e}") from None
