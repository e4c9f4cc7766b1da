"""The Python API behind the CLI: train a family into a run directory, load a run back."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffvae.errors import DiffvaeError
from diffvae.families import config_from_dict, get_family
from diffvae.runs import RunDir, split_prefixed, state_dict_mismatch
from diffvae.train import TrainConfig, on_rank_zero, train, train_config_from_dict


@dataclass
class DataConfig:
    """How a run's data was loaded: enough to load the same images again."""

    spec: str
    size: int | None = None
    key: str | None = None
    binarize: bool = False
    limit: int | None = None
    split_seed: int = 0

    def load(self):
        from diffvae.data import load_data

        return load_data(self.spec, size=self.size, key=self.key, binarize=self.binarize, seed=self.split_seed, limit=self.limit)


def run_config(family: str, model_config, train_config: TrainConfig, data_config: DataConfig, dataset) -> dict[str, Any]:
    """The JSON document written as a run's config.json."""
    from diffvae import __version__

    return {
        "family": family,
        "model": dataclasses.asdict(model_config),
        "train": dataclasses.asdict(train_config),
        "data": {**dataclasses.asdict(data_config), "image_shape": list(dataset.image_shape),
                 "content_hash": dataset.content_hash(), "train_size": int(dataset.train.shape[0])},
        "diffvae_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def train_run(family: str, data: DataConfig, model_config=None, train_config: TrainConfig | None = None, *,
              out: str | Path, resume: bool = False, force: bool = False, progress: bool = True, dataset=None):
    """Train ``family`` on ``data`` into the run directory ``out``; returns the EMA model.

    A new run refuses an existing ``out`` unless ``force``; ``resume`` continues ``out`` exactly
    (its config.json wins over the arguments).
    """
    fam = get_family(family)
    config_class, model_class = fam.load()
    if resume:
        run = RunDir.prepare(out, resume=True)
        saved = run.read_config()
        if saved["family"] != family:
            raise DiffvaeError(f"--resume: {out} is a {saved['family']} run, not {family}")
        if data is not None and data.spec is not None and data.spec != saved["data"]["spec"]:
            raise DiffvaeError(f"--resume: {out} was trained on --data {saved['data']['spec']}, not {data.spec}")
        model_config = config_from_dict(config_class, saved["model"])
        train_config = train_config_from_dict(saved["train"])
        data = DataConfig(**{k: v for k, v in saved["data"].items() if k in DataConfig.__dataclass_fields__})
    model_config = model_config or config_class()
    train_config = train_config or TrainConfig(**fam.train_defaults)
    train_config.validate()
    dataset = dataset or data.load()
    torch.manual_seed(train_config.seed)  # the initialisation is part of the seeded run
    model = model_class(model_config, dataset.image_shape)  # validates the config against the data
    if not resume:
        def prepare() -> None:
            RunDir.prepare(out, force=force).write_config(run_config(family, model_config, train_config, data, dataset))

        on_rank_zero(prepare)  # under torchrun only rank 0 creates the run; the other ranks wait for it
        run = RunDir(out)
    fit = getattr(model, "fit", None)
    if fit is not None:  # families with several stages (latent diffusion) drive the engine themselves
        return fit(dataset, train_config, run, resume=resume, progress=progress)
    ema, _ = train(model, dataset.train, train_config, run, resume=resume, progress=progress, description=family)
    return ema


def load(run_path: str | Path, device: str = "cpu", weights: str = "ema"):
    """Load a trained run: the family model with its EMA weights (or ``weights="model"``), in eval mode.

    The model carries ``run_config`` (the run's config.json as a dict) and ``run_dir``.
    """
    run = RunDir(run_path)
    config = run.read_config()
    fam = get_family(config["family"])
    config_class, model_class = fam.load()
    model_config = config_from_dict(config_class, config["model"])
    image_shape = tuple(config["data"]["image_shape"])
    model = model_class(model_config, image_shape)
    tensors, meta = run.load_checkpoint()
    state = split_prefixed(tensors, weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DiffvaeError(f"{run.checkpoint_path} does not match {run.config_path} ({state_dict_mismatch(e)})") from None
    model.run_config = config
    model.run_dir = run.path
    model.trained_steps = int(meta.get("step", 0))
    from diffvae.train import resolve_device

    return model.to(resolve_device(device)).eval()


def run_data(model_or_config) -> "Any":
    """The dataset a loaded run was trained on (loaded again from its spec), checked by content hash."""
    config = getattr(model_or_config, "run_config", model_or_config)
    data = config["data"]
    dc = DataConfig(**{k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__})
    dataset = dc.load()
    if data.get("content_hash") and dataset.content_hash() != data["content_hash"]:
        raise DiffvaeError(f"the data {dc.spec!r} has changed since the run was trained (content hash differs)")
    return dataset
