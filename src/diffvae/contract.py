"""The family contract: what a generative family must provide so that ``train``, ``sample``, ``eval``,
``interpolate``, ``invert`` and ``compare`` work with it unchanged.

A family is three things, all in its own package:

* a **config dataclass** (plain fields with defaults; ``validate()`` raises DiffvaeError);
* a **model** (:class:`FamilyModel`), an ``nn.Module`` built as ``Model(config, image_shape)``;
* a **spec** (:class:`FamilySpec`), the one description of the family: its config and model classes, training
  defaults, ``--budget`` recipes and presets by image shape, and what the CLI, the evaluation and the
  comparison need to know — its title, objective, latent, bound parts, sampling traits, samplers and the
  sampler sweep, its share of a comparison, how to size its configs and its evaluation for a budget,
  its report cells, the keyword arguments of its bound, and how it is fitted (one engine run, or
  several stages).

and one registry line in :mod:`diffvae.families` ("name": "package.module:SPEC"). This module is a leaf of the
layers: it imports the registry, conditioning and errors, never the engine, evaluation, api or compare
(what compare hands a family's own stage is the :class:`CompareContext` Protocol). Nothing outside the family's package names it
(tests/test_contract.py checks that). The DDPM family is the worked example: diffusion/model.py
(DDPMConfig, DDPM) and diffusion/family.py (its SPEC).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from diffvae.conditioning import is_conditional
from diffvae.errors import DiffvaeError
from diffvae.families import get_family


@runtime_checkable
class FamilyModel(Protocol):
    """A trained or trainable family model: uint8 images (N, C, H, W) in and out.

    ``family`` is its registry name; ``config`` its config dataclass; ``image_shape`` (C, H, W).
    """

    family: str
    config: Any
    image_shape: tuple[int, ...]

    def training_loss(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss to minimise, logs of plain floats). Uses the global torch RNG (the engine seeds
        it and saves its state for exact resume). ``x`` is a uint8 batch from the batch source.
        ``labels`` (int64 (N,)): given by the engine only to a conditional model (``config.conditional``,
        :mod:`diffvae.conditioning`); an unconditional family may keep the one-argument signature."""

    def sample(self, n: int, generator: torch.Generator | None = None, **sampling: Any) -> torch.Tensor:
        """n uint8 images. ``sampling`` holds ``sampler``/``steps``/``eta`` when the user gave them
        (only for a family with ``spec.samplers``); a one-shot family accepts and ignores ``**_``.
        A conditional model (``spec.conditional``) also takes ``labels`` (n,) and, if iterative,
        ``guidance`` (classifier-free guidance scale w, :mod:`diffvae.diffusion.guidance`; default 1)."""

    def bound(self, x: torch.Tensor, generator: torch.Generator | None = None, **options: Any) -> dict[str, Any]:
        """Per-example bits/dim of the tightest valid bound, key ``bpd`` (tensor (N,)), and its parts
        (the keys ``spec.bound_parts`` names, summing with their signs to ``bpd``); other tensors and
        strings may follow (``bpd_<choice>``, ``variance``). ``options`` are what
        ``spec.bound_kwargs`` returns."""

    def nfe(self, **sampling: Any) -> int:
        """Network evaluations per sample for these sampling options."""

    @property
    def latent_dims(self) -> int:
        """Dimensions of what :meth:`to_latent` returns (per image)."""

    def to_latent(self, x: torch.Tensor, **sampling: Any) -> torch.Tensor:
        """Images → the family's latent (VAE: posterior mean; diffusion: DDIM inversion)."""

    def from_latent(self, z: torch.Tensor, **sampling: Any) -> torch.Tensor:
        """The latent → uint8 images (the inverse path of :meth:`to_latent`)."""


@dataclass(frozen=True)
class BoundOptions:
    """What an evaluation asks of a bound; each family's ``spec.bound_kwargs`` picks what it uses."""

    importance_samples: int = 0  # K of an importance-weighted bound (VAE: IWAE-K; 0 = the plain bound)
    timesteps: int = 0  # K > 0 sampled time steps (an unbiased estimate); 0 = every term
    fit_data: torch.Tensor | None = None  # uint8 training images a bound may fit on (reverse variances)


@dataclass(frozen=True)
class ExtraStage:
    """A family's own stage of ``compare`` (e.g. the VAE's posterior-collapse study).

    ``run(ctx, seconds)`` returns a JSON-able dict stored as ``results[key]``; ``share`` is its
    share of the budget, next to training 0.62, evaluation 0.22 and the learning curves 0.08 (diffvae.compare.pipeline)."""

    name: str  # the stage's name in stages.json (also the results key)
    share: float
    run: Callable[[Any, float], dict[str, Any]]


@dataclass(frozen=True)
class ExtraFigure:
    """A family's own plot in the report: ``draw(results, family_name, path) -> bool`` (False: nothing
    to draw), saved as figures/<name>.png with ``caption``."""

    name: str
    caption: str
    draw: Callable[[dict[str, Any], str, Any], bool]


@dataclass(frozen=True)
class FamilySpec:
    """Everything outside a family's own package needs to know about it. Subclass it in the family's
    package, override what differs, and point the registry line at an instance."""

    title: str  # "Pixel diffusion (DDPM)": the report's column header
    short: str  # "DDPM": in the report's sentences
    objective: str  # the training objective, one line
    latent_space: str  # what the latent is
    interpolation: str  # how the family interpolates
    bound_label: str = "bound "  # prefix of the bound in the report's bits/dim row
    bpd_is_bound: bool = True  # bpd is a valid upper bound (False: an estimate, e.g. an ODE solve; ranked apart)
    bound_parts: tuple[tuple[str, str, int], ...] = ()  # (bound key, label, sign): Σ sign·part = bpd
    bound_extras: tuple[tuple[str, str], ...] = ()  # (prefix, results key) after the bound in the report
    iterative: bool = False  # sampling makes several network evaluations (a sampler and steps apply)
    invertible: bool = False  # to_latent is the exact inverse of a deterministic sampler
    has_encoder: bool = False  # a learned encoder (the latent is compressed and meaningful)
    samplers: tuple[str, ...] = ()  # names accepted by sample(sampler=...); () = --sampler/--steps/--eta refused
    stochastic_samplers: tuple[str, ...] = ()  # drawn dotted in the quality-vs-NFE plot
    sweep: tuple[tuple[str, int], ...] = ()  # (sampler, steps) for compare's sampler sweep, cheapest first
    train_share: float = 1.0  # relative training time in compare when --split is not given
    color: str = "#7f7f7f"  # in every plot
    collapse_text: str = "not applicable"  # the report's "Posterior collapse" cell, unless report_cells says more
    extra_stages: tuple[ExtraStage, ...] = field(default=())
    extra_figures: tuple[ExtraFigure, ...] = field(default=())
    conditional: bool = False  # the family can be trained --conditional (its config has diffvae.conditioning's fields)
    config_class: Any = None  # the config dataclass (plain fields with defaults; validate() raises DiffvaeError)
    model_class: Any = None  # the FamilyModel class, built as model_class(config, image_shape)
    summary: str = ""  # one line for ``diffvae train --help``
    train_defaults: dict[str, Any] = field(default_factory=dict, compare=False)  # TrainConfig fields it changes
    recipes: tuple = ()  # compute-aware defaults for --budget runs, small to large (diffvae.recipes.Recipe)
    forecast_refusal: str = ""  # why compare's learning curve of the family cannot forecast a longer compare ("": it can)

    # ------------------------------------------------------------------ a new run's config
    def preset_for(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """Config fields for images of ``image_shape`` (C, H, W) that differ from the defaults
        (:mod:`diffvae.presets` applies them under the flags given). Default: none."""
        return {}

    # ------------------------------------------------------------------ sampling and evaluation
    def sampler_name(self, model, sampling: dict[str, Any]) -> str | None:
        """The sampler an evaluation used (results' ``sampler``)."""
        if not self.iterative:
            return "decode"
        return sampling.get("sampler", getattr(getattr(model, "config", None), "sampler", None))

    def bound_kwargs(self, options: BoundOptions) -> dict[str, Any]:
        """Keyword arguments of ``model.bound`` for these options (``generator`` is passed apart)."""
        return {}

    def sweep_settings(self, model) -> list[tuple[str, int]]:
        """The sweep's (sampler, steps) this model can run."""
        return list(self.sweep)

    def unit_cost_seconds(self, model, batch: int = 64) -> float:
        """Seconds per image of one network evaluation (sizes the evaluation and the sweep): by
        default one timed ``sample(batch)`` after a warm-up, divided by its NFE."""
        with torch.inference_mode():
            g = torch.Generator().manual_seed(0)
            model.sample(batch, generator=g)
            t0 = time.perf_counter()
            model.sample(batch, generator=g)
            return (time.perf_counter() - t0) / batch / max(1, int(model.nfe()))

    def evaluation_cost(self, model, eval_config) -> float | None:
        """Network evaluations of ``evaluate(model, eval_config)``; None = cheap, never shrunk."""
        return None

    def ode_likelihood(self, model, x_uint8: torch.Tensor, steps: int,
                       generator: torch.Generator | None = None) -> dict[str, Any] | None:
        """Bits/dim of ``x_uint8`` under the model's probability-flow ODE (``ode_bpd``, per example, beside
        the variational bound), with ``steps`` solver steps; None where the family offers none."""
        return None

    def eval_main_share(self) -> float:
        """Share of a family's evaluation time for :func:`diffvae.evaluate.evaluate` (the rest: the sweep)."""
        return 0.6 if self.sweep else 0.95

    def diagnostics(self, model, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Family-specific figures for the evaluation (e.g. posterior collapse); default: the model's
        ``diagnostics`` if it has one."""
        diagnose = getattr(model, "diagnostics", None)
        return {} if diagnose is None else diagnose(x, generator=generator)

    # ------------------------------------------------------------------ compare
    def compare_model_overrides(self, image_shape: tuple[int, int, int], seconds: float) -> dict[str, Any]:
        """Config fields for compare on images of ``image_shape`` with ``seconds`` of training (a
        ``--budget`` recipe and then these are applied over the config's defaults)."""
        return {}

    def compare_train_overrides(self, seconds: float) -> dict[str, Any]:
        """TrainConfig fields for compare beyond the family's train defaults and the budget."""
        return {}

    def report_cells(self, prefix: str) -> dict[str, list]:
        """Report rows this family fills differently (row name -> cell parts; see
        :mod:`diffvae.compare.report`: a str, (prefix, results path) or (prefix, path, kind)).
        ``prefix`` is "families.<name>."."""
        return {}

    def claims(self, results: dict[str, Any], name: str) -> list[dict[str, str]]:
        """The family's own classic claims (claim, verdict, evidence) checked on ``results``."""
        return []

    # ------------------------------------------------------------------ export
    def export(self, model, target: str, folder, **options: Any) -> None:
        """Write ``model`` in another library's format (``target``, e.g. "diffusers") into ``folder``.
        Default: refused. A family that can be exported overrides this in its package."""
        raise DiffvaeError(f"export --to {target} does not support {self.short} runs")

    # ------------------------------------------------------------------ fitting
    def check_fit(self, model, train_config, dataset) -> None:
        """Refuse, before the run exists, what fitting would refuse. Default: one loss evaluation
        on two training images, on a copy, with the RNG state put back."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if is_conditional(model):
                copy.deepcopy(model).training_loss(dataset.train[:2], labels=dataset.train_labels[:2])
            else:
                copy.deepcopy(model).training_loss(dataset.train[:2])

    # How the family is trained into a run directory: None (the default) is one engine run on the training
    # images (:func:`diffvae.api.fit_once`). A family with several stages defines
    # ``fit(model, dataset, train_config, run, *, resume, progress) -> EMA model``, running the engine once per stage.
    fit = None


class CompareContext(Protocol):
    """What ``compare`` hands a family's own stage (:class:`ExtraStage`); :class:`diffvae.compare.stages.StageInputs`
    is the one implementation."""

    config: Any  # diffvae.compare.pipeline.CompareConfig: budget_minutes, seed, device, quiet, ...
    data_config: Any  # diffvae.data.DataConfig
    dataset: Any  # diffvae.sources.ImageDataset
    out: Any  # pathlib.Path of the compare folder; runs go under out / "runs"

    def model_config(self, family: str, **overrides: Any):
        """The family's config for compare on this data (its ``compare_model_overrides``), then ``overrides``."""

    def train_config(self, family: str, seconds: float, **overrides: Any):
        """A TrainConfig for ``seconds`` of training of ``family`` under compare's seed and device."""

    def train(self, family: str, run_dir, model_config, train_config):
        """Train into ``run_dir`` (replaced if it exists); returns the EMA model."""

    def load(self, run_dir):
        """The trained model of ``run_dir``, on the CPU."""


def spec_of(model_or_name) -> FamilySpec:
    """The spec of a family, from its name or a model (its ``family`` attribute)."""
    name = model_or_name if isinstance(model_or_name, str) else model_or_name.family
    return get_family(name).spec()
