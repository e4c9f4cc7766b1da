"""Fitting latent diffusion: two ordinary engine runs (:func:`diffvae.train.train`) in one run directory.

1. the autoencoder (``autoencoder.safetensors`` / ``autoencoder_metrics.jsonl``), with the perceptual
   network injected when ``perceptual_weight > 0`` (the dataset's feature network unless one is given);
2. the scale s = 1/std(z) of the training latents, written into the run's config.json;
3. the diffusion prior on s·z from precomputed posterior moments (``checkpoint.safetensors`` /
   ``metrics.jsonl``: the whole :class:`~diffvae.latent.model.LatentDiffusion`, frozen autoencoder
   included, so :func:`diffvae.api.load` needs nothing else).

Or, with ``ae_run``, stage 1 is taken from another ldm run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from diffvae.colour import hflip_generator
from diffvae.errors import DiffvaeError
from diffvae.latent.autoencoder import latent_scale_from
from diffvae.latent.model import LDMConfig, LatentDiffusion
from diffvae.loader import batch_indices
from diffvae.metrics.features import get_feature_extractor
from diffvae.runs import RunDir, split_prefixed
from diffvae.snapshots import Compute, count_gflop, training_gflop_per_image
from diffvae.train import BatchSource, distributed_context, resolve_device, train, wall_clock

AUTOENCODER_STAGE = "autoencoder"  # file stem of stage 1's checkpoint and metrics
AUTOENCODER_SHAPE_FIELDS = ("downsample", "latent_channels", "ae_width", "ae_res_blocks")


def stage_train_configs(train_config, config: LDMConfig, train_autoencoder: bool = True):
    """(stage-1 TrainConfig or None, stage-2 TrainConfig) from the run's TrainConfig.

    ``--steps N`` is the total: stage 1 gets ``ae_steps`` (or round(N · ae_steps_fraction), at
    least 1), stage 2 the rest. ``--budget B`` splits the same way: B·fraction minutes for stage 1
    (or exactly ``ae_steps`` steps if set) and B·(1 − fraction) for stage 2 — the caller may give
    stage 2 what stage 1 left over instead. Without stage 1 (``ae_run``), stage 2 gets everything.
    Snapshots (``snapshot_first_minutes``) are taken in stage 2 only. Stage 1 trains at ``ae_batch_size`` and
    ``ae_lr`` where they are set (the colour preset: :meth:`diffvae.latent.family.LatentDiffusionSpec.preset_for`).
    """
    if not train_autoencoder:
        return None, dataclasses.replace(train_config)
    ae, diffusion = _split_stages(train_config, config)
    return dataclasses.replace(ae, snapshot_first_minutes=None, batch_size=config.ae_batch_size or ae.batch_size,
                               lr=config.ae_lr or ae.lr), diffusion


def _split_stages(train_config, config: LDMConfig):
    """(stage 1, stage 2) TrainConfigs: the split of :func:`stage_train_configs`."""
    replace = dataclasses.replace
    if train_config.steps is not None:
        total = train_config.steps
        ae_steps = config.ae_steps or max(1, round(total * config.ae_steps_fraction))
        if ae_steps >= total:
            raise DiffvaeError(f"ldm: {ae_steps} autoencoder steps leave none of --steps {total} for the diffusion stage; "
                               "raise --steps or lower --ae-steps / --ae-steps-fraction")
        return replace(train_config, steps=ae_steps), replace(train_config, steps=total - ae_steps)
    budget = train_config.budget_minutes
    if config.ae_steps:
        ae = replace(train_config, steps=config.ae_steps, budget_minutes=None)
    else:
        ae = replace(train_config, budget_minutes=budget * config.ae_steps_fraction)
    return ae, replace(train_config, budget_minutes=budget * (1.0 - config.ae_steps_fraction))


class StageRunDir(RunDir):
    """The run directory as seen by one stage: its own checkpoint and metrics file names."""

    def __init__(self, path: str | Path, stage: str):
        super().__init__(path)
        self.stage = stage

    @property
    def checkpoint_path(self) -> Path:
        return self.path / f"{self.stage}.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.path / f"{self.stage}_metrics.jsonl"


def check_fit(model: LatentDiffusion, train_config, dataset) -> None:
    """Refuse what :func:`fit` would refuse, before the run exists: the split of --steps/--budget
    between the stages and the ``--ae-run`` to reuse (loaded here, and again by fit)."""
    stage_train_configs(train_config, model.config, train_autoencoder=not model.config.ae_run)
    if model.config.ae_run:
        load_autoencoder_run(model, model.config.ae_run)


def fit(model: LatentDiffusion, dataset, train_config, run: RunDir, *, resume: bool = False, progress: bool = True,
        perceptual_network: nn.Module | None = None) -> LatentDiffusion:
    """Train stage 1 (autoencoder) then stage 2 (diffusion on the scaled latent) into ``run``;
    returns the model with EMA weights. ``resume`` continues whichever stage was interrupted.
    Snapshots are taken in stage 2; their minutes and GFLOP include what stage 1 and the encoder
    pass over the training set cost (``compute_before``)."""
    rank, _ = distributed_context()
    model.to(resolve_device(train_config.device))
    reuse = model.config.ae_run
    ae_config, diffusion_config = stage_train_configs(train_config, model.config, train_autoencoder=not reuse)
    ae_steps, before = 0, Compute()
    if reuse:
        scale = load_autoencoder_run(model, reuse)
        if model.config.latent_scale is None:
            record_scale(model, run, scale, rank)
    else:
        if model.config.perceptual_weight > 0 and perceptual_network is None:
            perceptual_network = _dataset_feature_network(dataset, progress)
        result, before = fit_autoencoder(model, dataset, ae_config, run, resume=resume, progress=progress,
                                         count_cost=bool(train_config.snapshot_first_minutes), perceptual_network=perceptual_network)
        ae_steps = result.steps
        if train_config.budget_minutes is not None and model.config.ae_steps:
            left = train_config.budget_minutes - result.seconds / 60.0
            diffusion_config.budget_minutes = max(left, 0.1 * train_config.budget_minutes)
    model.autoencoder.requires_grad_(False).eval()
    started = wall_clock()
    moments = model.latent_moments(dataset.train)
    if train_config.snapshot_first_minutes:
        before.seconds += wall_clock() - started
        before.gflop += _encode_gflop_per_image(model, dataset.train) * dataset.train.shape[0]
    if model.config.latent_scale is None:
        generator = torch.Generator(device=moments.device).manual_seed(train_config.seed)
        mean, logvar = moments.chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        record_scale(model, run, latent_scale_from(mean + torch.exp(0.5 * logvar) * noise), rank)
    labels = dataset.train_labels if model.denoiser.num_classes else None  # conditional: the labels travel
    source = mirrored_source(model, dataset.train, moments, diffusion_config, labels) if diffusion_config.hflip else None
    ema, _ = train(model, moments, diffusion_config, run, resume=resume and run.checkpoint_path.is_file(),
                   progress=progress, labels=labels, description="ldm diffusion", compute_before=before, source=source,
                   extra_metadata={"stage": "diffusion", "autoencoder_steps": ae_steps, "ae_run": reuse})
    return ema


class MirroredMomentsSource(BatchSource):
    """Stage 2's batches under ``--hflip``: the posterior moments of the image or of its mirror image, chosen
    per example exactly as :class:`~diffvae.train.BatchSource` flips uint8 images (the same draws of
    :func:`diffvae.colour.hflip_generator`, global batch before the rank slice), so a resume flips the same
    examples. The encoder is not mirror-symmetric: the mirrored images' moments are encoded once, up front."""

    def __init__(self, moments: torch.Tensor, mirrored: torch.Tensor, batch_size: int, seed: int,
                 labels: torch.Tensor | None, rank: int, world: int, device: torch.device):
        super().__init__(moments, batch_size, seed, labels, rank, world, device)
        self.mirrored = mirrored.to(self.device)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mine = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        idx = batch_indices(step, self.n, self.batch_size, self.seed).to(self.device)
        flip = torch.rand(idx.shape[0], generator=hflip_generator(self.seed, step)) < 0.5  # hflip's draw, p = 1/2
        flip = flip.to(self.device).view(-1, *[1] * (self.inputs.ndim - 1))
        chosen = torch.where(flip, self.mirrored[idx], self.inputs[idx])[mine]
        return chosen, self.labels[idx[mine]] if self.labels is not None else None


def mirrored_source(model: LatentDiffusion, images: torch.Tensor, moments: torch.Tensor, config, labels) -> MirroredMomentsSource:
    """The batch source of stage 2 with ``--hflip`` (:class:`MirroredMomentsSource`), for this rank and device."""
    rank, world = distributed_context()
    mirrored = model.latent_moments(images.flip(-1))
    return MirroredMomentsSource(moments, mirrored, config.batch_size, config.seed, labels, rank, world, resolve_device(config.device))


def _dataset_feature_network(dataset, progress: bool) -> nn.Module:
    """The dataset's feature network (:mod:`diffvae.metrics.features`), the default perceptual network."""
    return get_feature_extractor(dataset, progress=progress).net


def fit_autoencoder(model: LatentDiffusion, dataset, ae_config, run: RunDir, *, resume: bool, progress: bool,
                    count_cost: bool, perceptual_network: nn.Module | None = None):
    """Stage 1 into ``run``'s autoencoder files; loads its EMA weights into ``model``. Returns the
    engine's TrainResult and, with ``count_cost``, what the stage cost (seconds, GFLOP)."""
    model.autoencoder.set_perceptual_network(perceptual_network if model.config.perceptual_weight > 0 else None)
    stage_run = StageRunDir(run.path, AUTOENCODER_STAGE)
    ema_autoencoder, result = train(model.autoencoder, dataset.train, ae_config, stage_run,
                                    resume=resume and stage_run.checkpoint_path.is_file(), progress=progress,
                                    description="ldm autoencoder")
    model.autoencoder.load_state_dict(ema_autoencoder.state_dict())
    cost = Compute()
    if count_cost:  # measured with the perceptual network, part of the training cost, still attached
        probe = dataset.train[:8].to(model._device)
        images = result.steps * min(ae_config.batch_size, dataset.train.shape[0])
        cost = Compute(result.seconds, training_gflop_per_image(model.autoencoder, probe) * images)
    model.autoencoder.set_perceptual_network(None)
    return result, cost


def _encode_gflop_per_image(model: LatentDiffusion, images: torch.Tensor) -> float:
    """GFLOP per image of ``latent_moments`` (the encoder pass that precedes stage 2)."""
    probe = images[:8].to(model._device)
    return count_gflop(lambda: model.latent_moments(probe), model._device) / max(1, probe.shape[0])


def record_scale(model: LatentDiffusion, run: RunDir, scale: float, rank: int) -> None:
    """Set ``latent_scale`` and rewrite the run's config.json with it (atomically, rank 0)."""
    model.config.latent_scale = float(scale)
    if rank == 0:
        saved = run.read_config()
        saved["model"]["latent_scale"] = float(scale)
        run.write_config(saved)


def load_autoencoder_run(model: LatentDiffusion, path: str) -> float:
    """Load the EMA autoencoder of the ldm run at ``path`` into ``model``; returns its scale."""
    other_run = RunDir(path)
    saved = other_run.read_config()
    if saved.get("family") != model.family:
        raise DiffvaeError(f"--ae-run {path} is a {saved.get('family')} run, not an {model.family} run")
    other = LDMConfig.from_saved(saved["model"])
    if tuple(saved.get("data", {}).get("image_shape", ())) != model.image_shape:
        raise DiffvaeError(f"--ae-run {path} was trained on images of shape {saved.get('data', {}).get('image_shape')}, "
                           f"these are {list(model.image_shape)}")
    for name in AUTOENCODER_SHAPE_FIELDS:
        if getattr(other, name) != getattr(model.config, name):
            raise DiffvaeError(f"--ae-run {path} has {name}={getattr(other, name)} but this run asks for "
                               f"{name}={getattr(model.config, name)}; pass the same autoencoder settings")
    if other.latent_scale is None:
        raise DiffvaeError(f"--ae-run {path} has not finished its autoencoder stage (no latent_scale)")
    _load_autoencoder_state(model, path, _autoencoder_state(path, other_run))
    return float(other.latent_scale)


def _autoencoder_state(path: str, other_run: RunDir) -> dict[str, torch.Tensor]:
    """The EMA autoencoder weights of a finished ldm run (its whole-model checkpoint), or of one that
    finished only stage 1 (its autoencoder checkpoint)."""
    if other_run.checkpoint_path.is_file():
        tensors, _ = other_run.load_checkpoint()
        prefix = "ema/autoencoder."
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    tensors, _ = StageRunDir(path, AUTOENCODER_STAGE).load_checkpoint()
    return split_prefixed(tensors, "ema")


def _load_autoencoder_state(model: LatentDiffusion, path: str, state: dict[str, torch.Tensor]) -> None:
    try:
        model.autoencoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])[:160]
        raise DiffvaeError(f"--ae-run {path}: its autoencoder weights do not match ({detail})") from None
