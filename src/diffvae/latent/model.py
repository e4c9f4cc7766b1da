"""The latent-diffusion family (``ldm``): a KL autoencoder compresses, a diffusion model is its prior.

Stage 1 trains :class:`~diffvae.latent.autoencoder.AutoencoderKL` on the images; its EMA weights are
then frozen, the training latents' scale s = 1/std(z) is measured and written to the run's
config.json (``LDMConfig.latent_scale``); stage 2 trains a :class:`~diffvae.diffusion.model.Denoiser`
— the same schedule, targets, samplers and bound as pixel diffusion — on z' = s·z, z ~ q(z|x).
Sampling draws z' with the diffusion sampler and decodes z'/s.

Both stages run through the one training engine (:func:`diffvae.train.train`) in one run directory:

* ``autoencoder.safetensors`` / ``autoencoder_metrics.jsonl`` — stage 1's checkpoint and log;
* ``checkpoint.safetensors`` / ``metrics.jsonl`` — stage 2 trains the whole :class:`LatentDiffusion`
  module (the frozen autoencoder gets no gradient and its EMA equals itself), so this checkpoint
  is the complete state of the composed model and :func:`diffvae.api.load` needs nothing else.

Stage 2 reads precomputed posterior moments (mean ‖ log-variance, one encoder pass over the
training set) and draws a fresh z ~ q(z|x) every step (``training_loss`` also accepts uint8 images
and then encodes them). Measured on MNIST (batch 64, bf16 CPU, one thread, best of 6): 148 ms per
diffusion step from moments vs 192 ms encoding on the fly; the one pass over 4,500 images takes
8 s, so precomputing pays off after ~180 steps. In budget mode that pass is outside both budgets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffvae.diffusion.model import DiffusionConfig, Denoiser
from diffvae.distributions import nats_to_bpd
from diffvae.errors import DiffvaeError
from diffvae.latent.autoencoder import AutoencoderKL, latent_scale_from
from diffvae.latent.bound import LATENT_PRIOR_PARTS, gaussian_entropy, latent_diffusion_bound, scale_jacobian_nats
from diffvae.nn.autoencoder import DOWNSAMPLE_FACTORS, GROUPS
from diffvae.runs import RunDir, split_prefixed
from diffvae.snapshots import Compute, count_gflop, training_gflop_per_image

__all__ = ["LDMConfig", "LatentDiffusion", "stage_train_configs"]

AUTOENCODER_STAGE = "autoencoder"  # file stem of stage 1's checkpoint and metrics
AUTOENCODER_SHAPE_FIELDS = ("downsample", "latent_channels", "ae_width", "ae_res_blocks")
ENCODE_BATCH = 500  # images per encoder pass when precomputing latents
DECODE_BATCH = 1000  # latents per decoder pass when sampling


@dataclass
class LDMConfig:
    """Latent diffusion: the autoencoder (stage 1), then the DiffusionConfig fields for the latent."""

    # stage 1: the KL autoencoder
    downsample: int = 4  # f ∈ {2, 4, 8}: 28×28 → 7×7 for f = 4
    latent_channels: int = 4
    ae_width: int = 32  # channels at full resolution (2× below); a multiple of 8
    ae_res_blocks: int = 1
    kl_weight: float = 1e-6  # weight of KL(q(z|x) ‖ N(0, I)) next to −log p(x|z)
    perceptual_weight: float = 0.0  # feature-space L2 with the dataset's feature network (0 = off)
    ae_steps_fraction: float = 0.3  # share of --steps / --budget spent on stage 1
    ae_steps: int = 0  # stage-1 steps out of --steps (0 = use ae_steps_fraction)
    ae_run: str | None = None  # reuse the autoencoder (and scale) of this ldm run; skips stage 1
    latent_scale: float | None = None  # s = 1/std(z) over the training latents; set after stage 1
    # stage 2: diffusion on s·z (see diffvae.diffusion.model.DiffusionConfig). The linear schedule, as
    # Rombach et al.: the cosine one's last step (β = 0.999) dominates the bound of an undertrained ε̂
    schedule: str = "linear"
    timesteps: int = 1000
    prediction: str = "eps"
    loss_weight: str = "uniform"
    min_snr_gamma: float = 5.0
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (-1,)
    dropout: float = 0.0
    sampler: str = "dpm++2m"
    sample_steps: int = 20
    eta: float = 0.0
    invert_steps: int = 50
    clip_x0: bool = False  # latents are not bounded: never clamp x̂₀

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(int(i) for i in self.attention_levels)

    def validate(self) -> None:
        """Raise DiffvaeError on a setting that cannot work."""
        if self.downsample not in DOWNSAMPLE_FACTORS:
            raise DiffvaeError(f"ldm downsample must be one of {', '.join(map(str, DOWNSAMPLE_FACTORS))}, got {self.downsample}")
        if self.latent_channels < 1:
            raise DiffvaeError(f"ldm latent_channels must be at least 1, got {self.latent_channels}")
        if self.ae_width < GROUPS or self.ae_width % GROUPS:
            raise DiffvaeError(f"ldm ae_width must be a positive multiple of {GROUPS}, got {self.ae_width}")
        if self.ae_res_blocks < 1:
            raise DiffvaeError(f"ldm ae_res_blocks must be at least 1, got {self.ae_res_blocks}")
        for name in ("kl_weight", "perceptual_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise DiffvaeError(f"ldm {name} must be a finite number >= 0, got {value}")
        if not 0.0 < self.ae_steps_fraction < 1.0:
            raise DiffvaeError(f"ldm ae_steps_fraction must be in (0, 1), got {self.ae_steps_fraction}")
        if self.ae_steps < 0:
            raise DiffvaeError(f"ldm ae_steps must be >= 0 (0 = use ae_steps_fraction), got {self.ae_steps}")
        if self.latent_scale is not None and not (self.latent_scale > 0 and math.isfinite(self.latent_scale)):
            raise DiffvaeError(f"ldm latent_scale must be a positive number, got {self.latent_scale}")
        self.diffusion_config()  # DiffusionConfig validates its own fields

    def diffusion_config(self) -> DiffusionConfig:
        """The stage-2 DiffusionConfig: every DiffusionConfig field this config has."""
        names = [f.name for f in dataclasses.fields(DiffusionConfig) if hasattr(self, f.name)]
        return DiffusionConfig(**{name: getattr(self, name) for name in names})


def stage_train_configs(train_config, config: LDMConfig, train_autoencoder: bool = True):
    """(stage-1 TrainConfig or None, stage-2 TrainConfig) from the run's TrainConfig.

    ``--steps N`` is the total: stage 1 gets ``ae_steps`` (or round(N · ae_steps_fraction), at
    least 1), stage 2 the rest. ``--budget B`` splits the same way: B·fraction minutes for stage 1
    (or exactly ``ae_steps`` steps if set) and B·(1 − fraction) for stage 2 — the caller may give
    stage 2 what stage 1 left over instead. Without stage 1 (``ae_run``), stage 2 gets everything.
    Snapshots (``snapshot_first_minutes``) are taken in stage 2 only.
    """
    if not train_autoencoder:
        return None, dataclasses.replace(train_config)
    ae, diffusion = _split_stages(train_config, config)
    return dataclasses.replace(ae, snapshot_first_minutes=None), diffusion


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


class _StageRunDir(RunDir):
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


class LatentDiffusion(nn.Module):
    """A KL autoencoder and a diffusion prior on its scaled latent; uint8 images in and out."""

    family = "ldm"

    def __init__(self, config: LDMConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        config = dataclasses.replace(config)
        config.validate()
        self.config = config
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_dims = math.prod(self.image_shape)
        self.autoencoder = AutoencoderKL(self.image_shape, config.latent_channels, config.downsample, config.ae_width,
                                         config.ae_res_blocks, config.kl_weight, config.perceptual_weight)
        self.latent_shape = self.autoencoder.latent_shape
        self.denoiser = Denoiser(config.diffusion_config(), self.latent_shape)

    # ------------------------------------------------------------------ helpers
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def latent_dims(self) -> int:
        """Dimensions of the latent (and of the diffusion's x_T): c·h·w."""
        return math.prod(self.latent_shape)

    @property
    def scale(self) -> float:
        """The latent scale s (the diffusion model sees s·z)."""
        if self.config.latent_scale is None:
            raise DiffvaeError("this latent-diffusion model has no latent_scale yet: its autoencoder stage has not finished")
        return float(self.config.latent_scale)

    def _noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    # ------------------------------------------------------------------ the autoencoder
    def encode(self, x_uint8: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) as (mean, logvar), unscaled, float32 (N, c, h, w)."""
        return self.autoencoder.posterior(x_uint8)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """uint8 images for unscaled latents z (the decoder's mode), in chunks of DECODE_BATCH."""
        if z.shape[0] == 0:
            return torch.zeros(0, *self.image_shape, dtype=torch.uint8, device=self._device)
        return torch.cat([self.autoencoder.decode(chunk) for chunk in z.split(DECODE_BATCH)])

    @torch.no_grad()
    def latent_moments(self, images: Tensor, batch_size: int = ENCODE_BATCH) -> Tensor:
        """Posterior moments of uint8 images as one float32 tensor (N, 2c, h, w): mean ‖ logvar."""
        chunks = [torch.cat(self.encode(chunk.to(self._device)), dim=1) for chunk in images.split(batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, 2 * self.latent_shape[0], *self.latent_shape[1:])

    # ------------------------------------------------------------------ contract
    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The diffusion loss on z' = s·z, z ~ q(z|x) drawn from the global RNG; the autoencoder is
        not trained here (stage 1 is :meth:`AutoencoderKL.training_loss`).

        ``x`` is uint8 images (encoded now, without gradient) or float posterior moments from
        :meth:`latent_moments` (mean ‖ logvar along channels).
        """
        if x.dtype == torch.uint8:
            with torch.no_grad():
                mean, logvar = self.encode(x)
        else:
            mean, logvar = x.float().chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        return self.denoiser.loss(self.scale * z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, progress: bool = False) -> Tensor:
        """n uint8 images: z' from the diffusion sampler, then decode(z' / s)."""
        if n < 0:
            raise DiffvaeError(f"number of samples must be >= 0, got {n}")
        if n == 0:
            return torch.zeros(0, *self.image_shape, dtype=torch.uint8, device=self._device)
        scale = self.scale
        z_scaled = self.denoiser.generate(n, generator, sampler, steps, eta, progress=progress)
        return self.decode(z_scaled / scale)

    def nfe(self, sampler: str | None = None, steps: int | None = None, **_) -> int:
        """Denoiser evaluations per sample (the one decoder pass is not counted)."""
        return self.denoiser.nfe(sampler, steps)

    @torch.no_grad()
    def to_latent(self, x_uint8: Tensor, steps: int | None = None, **_) -> Tensor:
        """x_T of x: the posterior mean, scaled, then DDIM inversion in latent space."""
        mean, _ = self.encode(x_uint8)
        return self.denoiser.invert(self.scale * mean, steps)

    @torch.no_grad()
    def from_latent(self, x_T: Tensor, steps: int | None = None, **_) -> Tensor:
        """uint8 images from x_T: deterministic DDIM to z', then decode(z' / s)."""
        return self.decode(self.denoiser.regenerate(x_T.to(self._device), steps) / self.scale)

    @torch.no_grad()
    def bound(self, x_uint8: Tensor, timesteps: int = 0, generator: torch.Generator | None = None,
              progress: bool = False, fit_data: Tensor | None = None, **_) -> dict[str, Tensor | str]:
        """Per-example bits/dim of −log p(x) ≤ E_q[−log p(x|z)] − H[q] + E_q[−log p(z)] (one z ~ q(z|x)),
        the last term bounded by the diffusion bound on s·z with a continuous Gaussian L₀
        (all T terms, or ``timesteps`` sampled ones) plus the scale's Jacobian; parts as
        :func:`diffvae.latent.bound.latent_diffusion_bound`. With ``fit_data`` (uint8 training images)
        the latent prior's reverse variances are fitted on their latents (``Denoiser.bound_nats``):
        ``bpd`` is the tightest choice (``variance``) and ``bpd_<choice>`` the whole bound for each."""
        mean, logvar = self.encode(x_uint8)
        z = mean + torch.exp(0.5 * logvar) * self._noise(mean, generator)
        reconstruction = -self.autoencoder.reconstruction_log_likelihood(x_uint8, z).double()
        entropy = gaussian_entropy(logvar.double()).flatten(1).sum(1)
        fit_z = self.scale * self._posterior_sample(fit_data, generator).double() if fit_data is not None else None
        prior = self.denoiser.bound_nats(self.scale * z.double(), decoder="continuous", timesteps=timesteps,
                                         generator=generator, progress=progress, fit_x=fit_z)
        jacobian = scale_jacobian_nats(self.scale, self.latent_dims)
        parts = {k: prior[k] for k in LATENT_PRIOR_PARTS if torch.is_tensor(prior.get(k))}
        out: dict[str, Tensor | str] = latent_diffusion_bound(reconstruction, entropy, prior["total"], jacobian, self.num_dims, parts)
        for key, value in prior.items():
            if key.startswith("total_"):
                out[key.replace("total_", "bpd_")] = nats_to_bpd(reconstruction - entropy + value + jacobian, self.num_dims)
        out["variance"] = prior["variance"]
        return out

    def _posterior_sample(self, x_uint8: Tensor, generator: torch.Generator | None) -> Tensor:
        """z ~ q(z|x), unscaled."""
        mean, logvar = self.encode(x_uint8)
        return mean + torch.exp(0.5 * logvar) * self._noise(mean, generator)

    @torch.no_grad()
    def diagnostics(self, x_uint8: Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """The autoencoder alone: −log p(x|z) in bits/dim (z ~ q), PSNR of decode(mean), KL to N(0, I), s."""
        from diffvae.distributions import normal_kl
        from diffvae.metrics.interpolation import roundtrip_error

        mean, logvar = self.encode(x_uint8)
        z = mean + torch.exp(0.5 * logvar) * self._noise(mean, generator)
        reconstruction = -self.autoencoder.reconstruction_log_likelihood(x_uint8, z)
        error = roundtrip_error(x_uint8.cpu(), self.decode(mean).cpu())
        return {
            "ae_reconstruction_bpd": float(nats_to_bpd(reconstruction.mean(), self.num_dims)),
            "ae_psnr_db": error["psnr_db"],
            "ae_kl_nats": float(normal_kl(mean, logvar, 0.0, 0.0).flatten(1).sum(1).mean()),
            "latent_scale": self.scale,
        }

    # ------------------------------------------------------------------ training both stages
    def check_fit(self, train_config, dataset) -> None:
        """Refuse what :meth:`fit` would refuse, before the run exists: the split of --steps/--budget
        between the stages and the ``--ae-run`` to reuse (loaded here, and again by fit)."""
        stage_train_configs(train_config, self.config, train_autoencoder=not self.config.ae_run)
        if self.config.ae_run:
            self._load_autoencoder_run(self.config.ae_run)

    def fit(self, dataset, train_config, run: RunDir, resume: bool = False, progress: bool = True) -> "LatentDiffusion":
        """Train stage 1 (autoencoder) then stage 2 (diffusion on the scaled latent) into ``run``;
        returns the model with EMA weights. ``resume`` continues whichever stage was interrupted.
        Snapshots are taken in stage 2; their minutes and GFLOP include what stage 1 and the encoder
        pass over the training set cost (``compute_before``)."""
        from diffvae.train import distributed_context, resolve_device, train, wall_clock

        rank, _ = distributed_context()
        self.to(resolve_device(train_config.device))
        reuse = self.config.ae_run
        ae_config, diffusion_config = stage_train_configs(train_config, self.config, train_autoencoder=not reuse)
        ae_steps, before = 0, Compute()
        if reuse:
            scale = self._load_autoencoder_run(reuse)
            if self.config.latent_scale is None:
                self._record_scale(run, scale, rank)
        else:
            result, before = self._fit_autoencoder(dataset, ae_config, run, resume, progress,
                                                   count_cost=bool(train_config.snapshot_first_minutes))
            ae_steps = result.steps
            if train_config.budget_minutes is not None and self.config.ae_steps:
                left = train_config.budget_minutes - result.seconds / 60.0
                diffusion_config.budget_minutes = max(left, 0.1 * train_config.budget_minutes)
        self.autoencoder.requires_grad_(False).eval()
        started = wall_clock()
        moments = self.latent_moments(dataset.train)
        if train_config.snapshot_first_minutes:
            before.seconds += wall_clock() - started
            before.gflop += self._encode_gflop_per_image(dataset.train) * dataset.train.shape[0]
        if self.config.latent_scale is None:
            generator = torch.Generator(device=moments.device).manual_seed(train_config.seed)
            mean, logvar = moments.chunk(2, dim=1)
            self._record_scale(run, latent_scale_from(mean + torch.exp(0.5 * logvar) * self._noise(mean, generator)), rank)
        ema, _ = train(self, moments, diffusion_config, run, resume=resume and run.checkpoint_path.is_file(),
                       progress=progress, description="ldm diffusion", compute_before=before,
                       extra_metadata={"stage": "diffusion", "autoencoder_steps": ae_steps, "ae_run": reuse})
        return ema

    def _fit_autoencoder(self, dataset, ae_config, run: RunDir, resume: bool, progress: bool, count_cost: bool):
        """Stage 1 into ``run``'s autoencoder files; loads its EMA weights into this model. Returns the
        engine's TrainResult and, with ``count_cost``, what the stage cost (seconds, GFLOP)."""
        from diffvae.train import train

        if self.config.perceptual_weight > 0:
            from diffvae.metrics.features import get_feature_extractor

            self.autoencoder.set_perceptual_network(get_feature_extractor(dataset, progress=progress).net)
        stage_run = _StageRunDir(run.path, AUTOENCODER_STAGE)
        ema_autoencoder, result = train(self.autoencoder, dataset.train, ae_config, stage_run,
                                        resume=resume and stage_run.checkpoint_path.is_file(), progress=progress,
                                        description="ldm autoencoder")
        self.autoencoder.load_state_dict(ema_autoencoder.state_dict())
        cost = Compute()
        if count_cost:  # measured with the perceptual network, part of the training cost, still attached
            probe = dataset.train[:8].to(self._device)
            images = result.steps * min(ae_config.batch_size, dataset.train.shape[0])
            cost = Compute(result.seconds, training_gflop_per_image(self.autoencoder, probe) * images)
        self.autoencoder.set_perceptual_network(None)
        return result, cost

    def _encode_gflop_per_image(self, images: Tensor) -> float:
        """GFLOP per image of :meth:`latent_moments` (the encoder pass that precedes stage 2)."""
        probe = images[:8].to(self._device)
        return count_gflop(lambda: self.latent_moments(probe), self._device) / max(1, probe.shape[0])

    def _record_scale(self, run: RunDir, scale: float, rank: int) -> None:
        """Set ``latent_scale`` and rewrite the run's config.json with it (atomically, rank 0)."""
        self.config.latent_scale = float(scale)
        if rank == 0:
            saved = run.read_config()
            saved["model"]["latent_scale"] = float(scale)
            run.write_config(saved)

    def _load_autoencoder_run(self, path: str) -> float:
        """Load the EMA autoencoder of the ldm run at ``path`` into this model; returns its scale."""
        from diffvae.families import config_from_dict

        other_run = RunDir(path)
        saved = other_run.read_config()
        if saved.get("family") != "ldm":
            raise DiffvaeError(f"--ae-run {path} is a {saved.get('family')} run, not an ldm run")
        other = config_from_dict(LDMConfig, saved["model"])
        if tuple(saved.get("data", {}).get("image_shape", ())) != self.image_shape:
            raise DiffvaeError(f"--ae-run {path} was trained on images of shape {saved.get('data', {}).get('image_shape')}, "
                               f"these are {list(self.image_shape)}")
        for name in AUTOENCODER_SHAPE_FIELDS:
            if getattr(other, name) != getattr(self.config, name):
                raise DiffvaeError(f"--ae-run {path} has {name}={getattr(other, name)} but this run asks for "
                                   f"{name}={getattr(self.config, name)}; pass the same autoencoder settings")
        if other.latent_scale is None:
            raise DiffvaeError(f"--ae-run {path} has not finished its autoencoder stage (no latent_scale)")
        if other_run.checkpoint_path.is_file():
            tensors, _ = other_run.load_checkpoint()
            prefix = "ema/autoencoder."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        else:
            tensors, _ = _StageRunDir(path, AUTOENCODER_STAGE).load_checkpoint()
            state = split_prefixed(tensors, "ema")
        try:
            self.autoencoder.load_state_dict(state, strict=True)
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:])[:160]
            raise DiffvaeError(f"--ae-run {path}: its autoencoder weights do not match ({detail})") from None
        return float(other.latent_scale)
