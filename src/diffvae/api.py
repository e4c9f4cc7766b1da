"""The Python API behind the CLI: train a family into a run directory, load a run back."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from diffvae import __version__
from diffvae.conditioning import conditioned_config, is_conditional
from diffvae.configs import saved_config
from diffvae.data import DataConfig, data_config_from_dict, run_data  # noqa: F401 (DataConfig, run_data: re-exported)
from diffvae.device import resolve_device
from diffvae.errors import DiffvaeError
from diffvae.families import get_family
from diffvae.monitor import check_before_run
from diffvae.presets import preset_config
from diffvae.runs import RunDir, WriterLock, split_prefixed, state_dict_mismatch
from diffvae.train import TrainConfig, on_rank_zero, train, train_config_from_dict


def run_config(family: str, model_config, train_config: TrainConfig, data_config: DataConfig, dataset) -> dict[str, Any]:
    """The JSON document written as a run's config.json."""
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
              out: str | Path, resume: bool = False, force: bool = False, progress: bool = True, dataset=None,
              requested: dict[str, dict[str, Any]] | None = None, note: str | None = None):
    """Train ``family`` on ``data`` into the run directory ``out``; returns the EMA model.

    A new run refuses an existing ``out`` unless ``force``; ``resume`` continues ``out`` exactly
    (its config.json wins; ``requested`` — the explicitly given {"data", "model", "train"} values —
    must agree with it). Everything is validated before the disk is touched, and the run is written
    under its :class:`~diffvae.runs.WriterLock`.
    """
    fam = get_family(family)
    config_class, model_class = fam.load()
    if resume and force:
        raise DiffvaeError("--resume continues the run and --force replaces it: pass one of them")
    if resume:
        saved = RunDir.prepare(out, resume=True).read_config()
        given = requested if requested is not None else {"data": {"spec": data.spec} if data and data.spec else {}}
        check_resume(saved, family, out, given)
        model_config = saved_config(config_class, saved["model"])
        train_config = train_config_from_dict(saved["train"])
        data = data_config_from_dict(saved["data"])
    else:
        RunDir.check_new(out, force=force)
    # a new run takes the family's preset for the data's shape under the given fields (diffvae.presets): from the
    # CLI, all but its flags; with no config, all of it; a config object given here is used as it is
    given_model = None
    if not resume and (requested is not None or model_config is None):
        given_model = set((requested or {}).get("model", {}))
    model_config = model_config or config_class()
    train_config = train_config or TrainConfig(**fam.train_defaults)
    train_config.validate()
    dataset = dataset or data.load()
    if resume:
        check_same_data(saved["data"], dataset, out)
    if given_model is not None:
        model_config = preset_config(fam.spec(), model_config, dataset.image_shape, given_model)

    model_config = conditioned_config(model_config, dataset, fam.spec())  # --conditional: K from the labels
    torch.manual_seed(train_config.seed)  # the initialisation is part of the seeded run
    model = model_class(model_config, dataset.image_shape)  # validates the config against the data
    spec = fam.spec()
    spec.check_fit(model, train_config, dataset)  # refuse now what training would refuse at its first step
    check_before_run(train_config, dataset)  # --eval-every with a cache it cannot write: refused before the run exists
    make_config = lambda: run_config(family, model_config, train_config, data, dataset)  # noqa: E731
    lock = on_rank_zero(lambda: open_run(out, resume=resume, force=force, make_config=make_config))
    if note and lock is not None:  # e.g. the --budget recipe: said once everything was accepted, never before a refusal
        print(note, file=sys.stderr, flush=True)
    try:  # under torchrun only rank 0 creates the run and holds its lock; the other ranks wait for it
        fit = spec.fit or fit_once  # a family with stages fits itself; the others are one engine run
        return fit(model, dataset, train_config, RunDir(out), resume=resume, progress=progress)
    finally:
        if lock is not None:
            lock.release()


def fit_once(model, dataset, train_config, run, *, resume: bool, progress: bool):
    """The default fit of a family (:attr:`diffvae.contract.FamilySpec.fit` None): one engine run on the training
    images (and their labels, for a conditional model); returns the EMA model."""
    labels = dataset.train_labels if is_conditional(model) else None
    ema, _ = train(model, dataset.train, train_config, run, resume=resume, progress=progress, description=model.family,
                   labels=labels)
    return ema


def open_run(out: str | Path, *, resume: bool, force: bool, make_config) -> WriterLock:
    """Create (or, to resume, reopen) the run at ``out`` and take its writer lock, returned held. A new
    run's config.json is written under the lock; a folder created here is removed if that fails."""
    path = Path(os.path.normpath(out))  # 'missing/../run': mkdir(parents=True) made 'missing' too, and left it
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffvaeError(f"cannot create {path}: {e.strerror}") from None
    try:
        lock = WriterLock.acquire(path)
    except DiffvaeError:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        if not resume:
            RunDir.prepare(path, force=force).write_config(make_config())
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return lock


FLAG_NAMES = {"spec": "--data", "steps": "--steps", "budget_minutes": "--budget", "batch_size": "--batch",
              "warmup_steps": "--warmup"}


def check_resume(saved: dict[str, Any], family: str, out: str | Path, requested: dict[str, dict[str, Any]]) -> None:
    """``--resume`` with the original command's flags: every given value must equal the stored one."""
    if saved["family"] != family:
        raise DiffvaeError(f"--resume: {out} is a {saved['family']} run, not {family}")
    differences = []
    for section in ("data", "model", "train"):
        stored = saved[section]
        for name, value in requested.get(section, {}).items():
            have = stored.get(name)
            if _json_value(value) != _json_value(have):
                flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
                differences.append(f"{flag} {_flag_text(value)} (the run has {_flag_text(have)})")
    if differences:
        raise DiffvaeError(f"--resume: {out} was made with other settings: {'; '.join(differences)}; "
                           "drop these flags or start a new run")


def check_same_data(stored: dict[str, Any], dataset, out: str | Path) -> None:
    """``--resume`` trains on the data the run was made with: the content hash (and shape) recorded in
    config.json must match the data read again (a swapped .npz or folder is refused, not trained on)."""
    shape = list(dataset.image_shape)
    if stored.get("image_shape") is not None and list(stored["image_shape"]) != shape:
        raise DiffvaeError(f"--resume: the data {stored.get('spec')!r} is now {'×'.join(map(str, shape))} images; "
                           f"{out} was trained on {'×'.join(map(str, stored['image_shape']))}: the data has changed since")
    if stored.get("content_hash") and dataset.content_hash() != stored["content_hash"]:
        raise DiffvaeError(f"--resume: the data {stored.get('spec')!r} has changed since {out} was trained "
                           f"(content hash {dataset.content_hash()}, the run has {stored['content_hash']})")


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _flag_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def load(run_path: str | Path, device: str = "cpu", weights: str = "ema"):
    """Load a trained run: the family model with its EMA weights (or ``weights="model"``), in eval mode.

    The model carries ``run_config`` (the run's config.json as a dict) and ``run_dir``.
    """
    run = RunDir(run_path)
    config = run.read_config()
    fam = get_family(config["family"])
    config_class, model_class = fam.load()
    model_config = saved_config(config_class, config["model"])
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

    return model.to(resolve_device(device)).eval()


