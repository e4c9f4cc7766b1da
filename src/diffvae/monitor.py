"""Watching a run while it trains (``diffvae train ... --sample-every N --eval-every M --tensorboard``).

* ``--sample-every N``: a grid of :data:`GRID_SAMPLES` EMA samples, always from the same noise
  (``torch.Generator().manual_seed(seed)``), as ``RUN/samples/step_<N>.png``;
* ``--eval-every M``: one cheap held-out row in ``metrics.jsonl``, ``{"step", "eval_bpd", "eval_fid",
  "eval_kid", "eval_precision", "eval_recall", "eval_n"}``: the family's bound (``spec.bound_kwargs`` of
  ``BoundOptions(timesteps=EVAL_BOUND_TIMESTEPS)``: the cheap K-draw estimate, no importance samples) on
  the first :data:`EVAL_IMAGES` held-out images, and FID/KID/precision/recall of :data:`EVAL_IMAGES`
  samples against the held-out split in the data set's feature space (:func:`diffvae.evaluate.sample_quality`);
  FID of 64 samples is biased upwards: it tracks progress, it is not ``eval``'s figure;
* ``--tensorboard``: the same scalars (every metrics row) and grids as TensorBoard event files in
  ``RUN/tensorboard`` (the optional ``tensorboard`` package, ``pip install 'diffvae[tensorboard]'``).

Exact resume: the monitor runs before the step's metrics row and checkpoint, inside
``torch.random.fork_rng`` (the training RNG streams are untouched), so a run resumed from step C
truncates ``metrics.jsonl`` to C, rewrites the grids after C under the same names and purges its
TensorBoard events from C+1 (``SummaryWriter(purge_step=...)``): every asked step has one grid and one
eval row. Only rank 0 watches; an engine stage whose model is not a family model (a latent family's
autoencoder stage) is not watched.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from diffvae.configs import check_tensorboard
from diffvae.contract import BoundOptions, spec_of
from diffvae.data import data_config_from_dict
from diffvae.evaluate import EvalConfig, sample_quality
from diffvae.images import make_grid
from diffvae.metrics.features import check_feature_cache, get_feature_extractor
from diffvae.runs import atomic_write_bytes

GRID_SAMPLES = 16
EVAL_IMAGES = 64
EVAL_BOUND_TIMESTEPS = 2
SAMPLES_FOLDER = "samples"
TENSORBOARD_FOLDER = "tensorboard"


def check_before_run(config, dataset) -> None:
    """What the monitor will need, checked before the run folder is created: ``--eval-every`` trains the data's feature
    network at its first row when the cache is cold, so a cold cache must be writable."""
    if config.eval_every:
        check_feature_cache(dataset)


class Monitor:
    """Grids, eval rows and TensorBoard events of one engine run (module docstring)."""

    def __init__(self, run, config, device: torch.device, step: int, resume: bool):
        self.run, self.config, self.device = run, config, device
        self.dataset = self.extractor = self.real_features = None
        self.writer = None
        if config.tensorboard:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.path / TENSORBOARD_FOLDER), purge_step=step + 1 if resume else None)

    @classmethod
    def open(cls, run, config, state, *, device: torch.device, rank: int, resume: bool) -> "Monitor | None":
        """A monitor when something is asked, the run has a folder, this is rank 0 and the model is a family model."""
        wanted = config.sample_every or config.eval_every or config.tensorboard
        if not wanted or run is None or rank != 0 or not isinstance(getattr(state.model, "family", None), str):
            return None
        return cls(run, config, device, state.step, resume)

    def after_step(self, step: int, ema) -> None:
        grid = bool(self.config.sample_every) and step % self.config.sample_every == 0
        evaluate = bool(self.config.eval_every) and step % self.config.eval_every == 0
        if not (grid or evaluate):
            return
        was_training = ema.training
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if evaluate:
                self._dataset()  # a cold cache trains the feature network: with autograd, before inference mode
            with torch.inference_mode():
                ema.eval()
                try:
                    if grid:
                        self.write_grid(step, ema)
                    if evaluate:
                        self.write_eval_row(step, ema)
                finally:
                    ema.train(was_training)

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.config.seed)

    def write_grid(self, step: int, ema) -> None:
        from PIL import Image

        images = ema.sample(GRID_SAMPLES, generator=self._generator()).cpu()
        grid = make_grid(images)
        buf = io.BytesIO()
        Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(buf, format="PNG")
        folder = self.run.path / SAMPLES_FOLDER
        folder.mkdir(exist_ok=True)
        atomic_write_bytes(folder / f"step_{step}.png", buf.getvalue())
        if self.writer is not None:
            self.writer.add_image("samples", grid, step, dataformats="HWC")
            self.writer.flush()

    def write_eval_row(self, step: int, ema) -> None:
        row = {"step": step, **self.eval_figures(ema)}
        self.run.append_metrics(row)
        if self.writer is not None:
            for name, value in row.items():
                if name != "step":
                    self.writer.add_scalar(f"eval/{name[len('eval_'):]}", value, step)
            self.writer.flush()

    def eval_figures(self, ema) -> dict[str, float]:
        """The cheap held-out figures (module docstring)."""
        dataset = self._dataset()
        held_out = dataset.test[:EVAL_IMAGES].to(self.device)
        kwargs = spec_of(ema).bound_kwargs(BoundOptions(timesteps=EVAL_BOUND_TIMESTEPS))
        bpd = float(ema.bound(held_out, generator=self._generator(), **kwargs)["bpd"].float().mean())
        samples = ema.sample(EVAL_IMAGES, generator=self._generator()).cpu()
        quality = sample_quality(samples, dataset, EvalConfig(bootstrap=0, seed=self.config.seed),
                                 extractor=self.extractor, real_features=self.real_features)
        return {"eval_bpd": bpd, "eval_n": EVAL_IMAGES,
                **{f"eval_{k}": _number(quality.get(k)) for k in ("fid", "kid", "precision", "recall")}}

    def _dataset(self):
        """The run's data (from its config.json) and its feature network, loaded once."""
        if self.dataset is None:
            self.dataset = data_config_from_dict(self.run.read_config()["data"]).load()
            self.extractor = get_feature_extractor(self.dataset)
            self.real_features = self.extractor.features(self.dataset.test)
        return self.dataset

    def log_row(self, row: dict[str, Any]) -> None:
        """A training metrics row as TensorBoard scalars (``train/<name>``)."""
        if self.writer is None:
            return
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"train/{name}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _number(value) -> float:
    return float("nan") if value is None else float(value)
