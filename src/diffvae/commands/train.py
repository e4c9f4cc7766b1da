"""``diffvae train FAMILY --data SPEC --out RUN (--steps N | --budget MINUTES)``: one family into a run directory
(:func:`diffvae.api.train_run`); ``--budget`` takes the family's compute-aware recipe under the flags given."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from diffvae.api import DataConfig, train_run
from diffvae.commands.options import add_config_argument, add_data_arguments, add_dataclass_arguments, add_train_arguments
from diffvae.configs import TrainConfig, config_from_dict
from diffvae.device import resolve_device
from diffvae.errors import DiffvaeError
from diffvae.families import FAMILIES, get_family
from diffvae.recipes import apply, describe, for_budget


NEW_RUN_DEFAULTS = {"precision": "auto", "seed": 0, "device": "auto"}


def add_arguments(train: argparse.ArgumentParser) -> None:
    fam_sub = train.add_subparsers(dest="family", required=True, parser_class=type(train))
    for name, fam in FAMILIES.items():
        p = fam_sub.add_parser(name, help=fam.summary)
        add_data_arguments(p, required=False)  # required unless --resume (checked in run)
        p.add_argument("--out", required=True, metavar="RUN")
        add_config_argument(p)
        add_train_arguments(p)
        try:
            config_class, _ = fam.load()
        except ImportError:
            continue
        group = p.add_argument_group(f"{name} model")
        add_dataclass_arguments(group, config_class, skip=("binarize",))  # --binarize is the data flag


def run(args) -> int:
    fam = get_family(args.family)
    config_class, _ = fam.load()
    given = _given_train_flags(args, config_class)
    if args.resume:
        train_run(args.family, None, out=args.out, resume=True, force=args.force, progress=not args.quiet, requested=given)
    else:
        if args.data is None:
            raise DiffvaeError(f"train {args.family}: the following arguments are required: --data")
        model_values, train_values, note = _with_recipe(fam, given)
        model_config = config_from_dict(config_class, model_values)
        train_config = TrainConfig(**train_values)
        train_config.validate()
        data = DataConfig(**given["data"])
        train_run(args.family, data, model_config, train_config, out=args.out, force=args.force, progress=not args.quiet,
                  requested={**given, "model": model_values}, note=note)  # the shape's preset fills the model fields not given
    if os.environ.get("RANK", "0") == "0":  # under torchrun, say it once
        print(f"diffvae: trained {args.family} → {args.out}{_auto_device_note(args)}", file=sys.stderr)
    return 0


def _auto_device_note(args) -> str:
    """`` on cpu (--device auto)`` where auto chose: the user sees where the work ran."""
    if getattr(args, "resume", False):
        return ""  # a resumed run trains on the device its config.json names
    device = getattr(args, "train__device", None) or getattr(args, "device", None)
    return f" on {resolve_device('auto')} (--device auto)" if device in (None, "auto") else ""


def _with_recipe(fam, given: dict[str, dict]) -> tuple[dict, dict, str | None]:
    """Model and train values of a new run: with ``--budget``, the family's compute-aware recipe for
    it (:mod:`diffvae.recipes`) under the flags the user gave, which always win; and the line that
    describes the recipe (said by train_run once the run is accepted, never before a refusal)."""
    train = {**fam.train_defaults, **NEW_RUN_DEFAULTS, **given["train"]}
    if train.get("budget_minutes") is None:
        return given["model"], train, None
    recipe, info = for_budget(fam.recipes, train["budget_minutes"], train.get("device", "auto"), train.get("precision", "auto"))
    note = f"diffvae: {describe(info)}" if recipe is not None else None
    model, train = apply(recipe, given["model"], train, set(given["model"]) | set(given["train"]))
    return model, {**train, "recipe": recipe.name if recipe is not None else None}, note


def _given_train_flags(args, config_class) -> dict[str, dict]:
    """The values the user gave explicitly, as {"data", "model", "train"} config fields."""
    model = {k[len("model__"):]: v for k, v in vars(args).items() if k.startswith("model__") and v is not None}
    if args.binarize and "binarize" in {f.name for f in dataclasses.fields(config_class)}:
        model.setdefault("binarize", True)
    train = {k[len("train__"):]: v for k, v in vars(args).items() if k.startswith("train__") and v is not None}
    data = {"spec": args.data, "size": args.size, "key": args.key, "limit": args.limit}
    data = {k: v for k, v in data.items() if v is not None}
    if args.binarize:
        data["binarize"] = True
    return {"data": data, "model": model, "train": train}
