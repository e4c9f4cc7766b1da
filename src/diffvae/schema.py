"""Schemas of the files diffvae reads back: a run's config.json, its checkpoint metadata, its
metrics.jsonl rows and the state files of ``diffvae compare``.

Every reader checks what it read here before using it, so that a damaged or hand-edited file is one
``DiffvaeError`` naming the file and the field (``RUN/config.json: field 'model.width' must be an
integer, got "wide"``), never a KeyError or TypeError deep inside a model. The expected types of a
config come from the dataclass type hints of the config class, so the schema cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from diffvae.configs import DataFields, TrainConfig
from diffvae.errors import DiffvaeError
from diffvae.families import FAMILIES

# Checkpoint metadata written by diffvae.train (plus the ldm stage fields): field -> expected type.
CHECKPOINT_FIELDS: dict[str, Any] = {
    "step": int,
    "total_steps": int | None,
    "optimizer_param_groups": list,
    "loss": float | None,
    "elapsed": float,
    "world_size": int,
    "stage": str,
    "autoencoder_steps": int,
    "ae_run": str | None,
}
REQUIRED_CHECKPOINT_FIELDS = ("step", "optimizer_param_groups")
DATA_EXTRA_FIELDS: dict[str, Any] = {"image_shape": list, "content_hash": str, "train_size": int}
VERSION_FIELDS = ("diffvae_version", "torch_version", "python_version")


def _show(value: Any) -> str:
    return json.dumps(value, default=str)[:60]


def matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type ``hint`` (int, float, str, bool, list, dict, X | None, tuple[int, ...])."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint is list:
        inner = typing.get_args(hint)[:1]
        return isinstance(value, list) and all(matches(v, inner[0]) for v in value) if inner else isinstance(value, list)
    if hint is dict:
        return isinstance(value, dict)
    return True  # a type this schema does not know: the config class checks it


def describe(hint: Any) -> str:
    """``int | None`` → 'an integer or null'."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    if origin is tuple:
        return "a list of integers"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_fields(values: Any, hints: dict[str, Any], path: Path, prefix: str, *, known_only: bool) -> None:
    """Every field of the object ``values`` has its type in ``hints``; with ``known_only`` a field not
    in ``hints`` is an error too."""
    if not isinstance(values, dict):
        raise DiffvaeError(f"{path}: field {prefix!r} must be an object, got {_show(values)}")
    for name, value in values.items():
        if name not in hints:
            if known_only:
                raise DiffvaeError(f"{path}: unknown field {prefix + '.' + name!r}")
            continue
        if not matches(value, hints[name]):
            raise DiffvaeError(f"{path}: field {prefix + '.' + name!r} must be {describe(hints[name])}, got {_show(value)}")


def dataclass_hints(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_run_config(config: Any, path: Path) -> None:
    """A run's config.json: family, model (the family's config class), train, data, versions."""
    if not isinstance(config, dict):
        raise DiffvaeError(f"{path} is not a diffvae run config (not a JSON object)")
    family = config.get("family")
    if family not in FAMILIES:
        raise DiffvaeError(f"{path}: field 'family' must be one of {', '.join(FAMILIES)}, got {_show(family)}")
    for name in ("model", "train", "data"):
        if name not in config:
            raise DiffvaeError(f"{path}: field {name!r} is missing")
    config_class, _ = FAMILIES[family].load()
    check_fields(config["model"], dataclass_hints(config_class), path, "model", known_only=True)
    check_fields(config["train"], dataclass_hints(TrainConfig), path, "train", known_only=False)
    check_fields(config["data"], {**dataclass_hints(DataFields), **DATA_EXTRA_FIELDS}, path, "data", known_only=False)
    _check_data_section(config["data"], path)
    for name in VERSION_FIELDS:
        if name in config and not isinstance(config[name], str):
            raise DiffvaeError(f"{path}: field {name!r} must be a string, got {_show(config[name])}")


def _check_data_section(data: dict[str, Any], path: Path) -> None:
    if not isinstance(data.get("spec"), str):
        raise DiffvaeError(f"{path}: field 'data.spec' must be a string, got {_show(data.get('spec'))}")
    shape = data.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(matches(v, int) and v > 0 for v in shape)):
        raise DiffvaeError(f"{path}: field 'data.image_shape' must be a list of 3 positive integers, got {_show(shape)}")


def check_checkpoint_metadata(meta: Any, path: Path) -> None:
    """The JSON metadata of a checkpoint written by :func:`diffvae.train.train`."""
    check_fields(meta, CHECKPOINT_FIELDS, path, "metadata", known_only=False)
    for name in REQUIRED_CHECKPOINT_FIELDS:
        if name not in meta:
            raise DiffvaeError(f"{path}: metadata field {name!r} is missing")
    if meta["step"] < 0:
        raise DiffvaeError(f"{path}: metadata field 'step' must be >= 0, got {meta['step']}")
    if meta.get("world_size", 1) < 1:
        raise DiffvaeError(f"{path}: metadata field 'world_size' must be >= 1, got {meta['world_size']}")
    for group in meta["optimizer_param_groups"]:
        if not (isinstance(group, dict) and matches(group.get("params"), list[int])):
            raise DiffvaeError(f"{path}: metadata field 'optimizer_param_groups' must be a list of objects "
                               f"with integer 'params', got {_show(group)}")


def check_metrics_row(line: str, path: Path, number: int) -> dict[str, Any]:
    """One complete line of metrics.jsonl: an object with an integer ``step`` and numeric values."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise DiffvaeError(f"{path} is damaged: line {number} is not JSON") from None
    if not isinstance(row, dict):
        raise DiffvaeError(f"{path}: line {number} must be a JSON object, got {_show(row)}")
    if not matches(row.get("step"), int):
        raise DiffvaeError(f"{path}: line {number}: field 'step' must be an integer, got {_show(row.get('step'))}")
    for name, value in row.items():
        if not matches(value, float):
            raise DiffvaeError(f"{path}: line {number}: field {name!r} must be a number, got {_show(value)}")
    return row


def check_stages(status: Any, path: Path) -> None:
    """``stages.json`` of diffvae compare: stage name → {"status": "done" | "failed", "seconds": number, ...}."""
    check_fields(status, {}, path, "stages", known_only=False)
    for name, entry in status.items():
        if not (isinstance(entry, dict) and entry.get("status") in ("done", "failed")):
            raise DiffvaeError(f"{path}: field {name!r} must be an object with \"status\": \"done\" or \"failed\", "
                               f"got {_show(entry)}")
        if not matches(entry.get("seconds", 0.0), float):
            raise DiffvaeError(f"{path}: field {name + '.seconds'!r} must be a number, got {_show(entry.get('seconds'))}")


def check_compare_settings(settings: Any, path: Path, family_order: tuple[str, ...]) -> None:
    """``compare.json``: the data spec and content hash, families, budget, split and seed of a compare run."""
    hints = {"data": dict, "content_hash": str, "families": list[str], "budget_minutes": float,
             "split": dict | None, "seed": int}
    check_fields(settings, hints, path, "settings", known_only=False)
    missing = [name for name in hints if name not in settings]
    if missing:
        raise DiffvaeError(f"{path}: field {missing[0]!r} is missing")
    check_fields(settings["data"], dataclass_hints(DataFields), path, "data", known_only=False)
    if not settings["families"] or any(f not in family_order for f in settings["families"]):
        raise DiffvaeError(f"{path}: field 'families' must list some of {', '.join(family_order)}, "
                           f"got {_show(settings['families'])}")
    for name in ("conditional", "recipes_at_forecast"):
        if not isinstance(settings.get(name, False), bool):
            raise DiffvaeError(f"{path}: field {name!r} must be true or false, got {_show(settings[name])}")
    if not settings["budget_minutes"] > 0:
        raise DiffvaeError(f"{path}: field 'budget_minutes' must be > 0, got {settings['budget_minutes']}")
    split = settings["split"]
    if split is not None and (set(split) != set(settings["families"]) or not all(matches(v, float) for v in split.values())):
        raise DiffvaeError(f"{path}: field 'split' must give a number for each family, got {_show(split)}")
