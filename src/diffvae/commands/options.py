"""The flags several commands share (data, training, sampling, ``--config``), their ranges, and what they
resolve to: the device, the sampling keywords a run accepts, and whether ``--n`` images fit in memory."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from diffvae.configs import TRAIN_CLI_FIELDS, TrainConfig
from diffvae.contract import spec_of
from diffvae.device import resolve_device
from diffvae.errors import DiffvaeError
from diffvae.ranges import MAX_IMAGES, MAX_SEED, MAX_SIZE, TRAIN_RANGES, Range, finite_float, train_flag
from diffvae.sources import check_fits_in_memory

SEED = Range(int, 0, MAX_SEED)
IMAGES = Range(int, 1, MAX_IMAGES)
SIZE = Range(int, 1, MAX_SIZE)
SAMPLING_STEPS = Range(int, 1, 100_000)
ETA = Range(float, 0, 1)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


FLAG_ALIASES = {"timesteps": ("--num-train-timesteps",)}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per field of a config dataclass, typed from its default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        hint = str(hints.get(f.name, ""))
        if isinstance(default, bool):
            parser.add_argument(flag_name(f.name), dest=f"model__{f.name}", action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {default})")
        elif isinstance(default, tuple):
            parser.add_argument(flag_name(f.name), dest=f"model__{f.name}", type=int_tuple, default=None, metavar="A,B,..",
                                help=f"comma-separated (default {','.join(map(str, default))})")
        else:
            kind = finite_float if isinstance(default, float) or "float" in hint else int if isinstance(default, int) else str
            parser.add_argument(flag_name(f.name), *FLAG_ALIASES.get(f.name, ()), dest=f"model__{f.name}", type=kind, default=None, metavar=f.name.upper(),
                                help=f"(default {default})")


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_data_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, metavar="SPEC",
                   help="mnist | digits | shapes | colours | photos | folder:PATH | npz:PATH | idx:PATH")
    p.add_argument("--size", type=SIZE.parser(), default=None, help=f"resize images to SIZE×SIZE, SIZE in {SIZE.text()}")
    p.add_argument("--key", default=None, help="array name inside an .npz")
    p.add_argument("--binarize", action="store_true", help="threshold the images to {0, 255}")
    p.add_argument("--limit", type=Range(int, 1, 10**9).parser(), default=None, help="use only the first N training images")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per user-facing TrainConfig field (``diffvae.configs.TRAIN_CLI_FIELDS``), typed and
    range-checked from ``diffvae.ranges``; ``--steps`` and ``--budget`` exclude each other."""
    length = p.add_mutually_exclusive_group()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in TRAIN_CLI_FIELDS:
        f = fields[name]
        allowed = TRAIN_RANGES.get(name)
        kind = allowed.parser() if allowed is not None else str
        target = length if name in ("steps", "budget_minutes") else p
        flag = train_flag(name)
        if isinstance(f.default, bool):  # --x / --no-x
            target.add_argument(flag, dest=f"train__{name}", action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata.get("help"))
            continue
        if allowed is None and isinstance(f.default, int):
            kind = int  # its range is checked by TrainConfig.validate
        target.add_argument(flag, dest=f"train__{name}", type=kind, default=None,
                            metavar=f.metadata.get("metavar") or flag[2:].upper().replace("-", "_"), help=f.metadata.get("help"))
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly (the original flags may be repeated; none may differ)")
    p.add_argument("--force", action="store_true", help="replace an existing run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="the sampler of an iterative family (e.g. ddpm | ddim | dpm++2m)")
    p.add_argument("--steps", type=SAMPLING_STEPS.parser(), default=None, help="sampling steps (iterative families)")
    p.add_argument("--eta", type=ETA.parser(), default=None, help="DDIM η")
    p.add_argument("--seed", type=SEED.parser(), default=0)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda[:N] | mps (default auto)")


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.json|FILE.toml",
                   help="flags from a file: one key per flag (flag or field name, e.g. lr, batch, data, channel_mult); "
                        "flags on the command line override it; unknown keys are refused")


def device_name(args) -> str:
    """``--device`` resolved (``auto`` → the best device here), refused with one line if unavailable."""
    return str(resolve_device(args.device))


def sampling_kwargs(args, model) -> dict:
    """--sampler/--steps/--eta as sampling keywords; refused for a family with no samplers."""
    kwargs = {k: getattr(args, k) for k in ("sampler", "steps", "eta") if getattr(args, k, None) is not None}
    spec = spec_of(model)
    if kwargs and not spec.samplers:
        raise DiffvaeError(f"{'/'.join('--' + k for k in kwargs)} apply to iterative samplers; "
                           f"a {spec.short} run decodes in one step")
    if kwargs:
        model.nfe(**kwargs)  # refuses a bad sampler/steps/eta now, before any work or output
    return kwargs


def check_images_fit(n: int, model) -> None:
    """Refuse an ``--n`` whose images (as float32, with room for a network's activations) cannot fit."""
    c, h, w = model.run_config["data"]["image_shape"]
    check_fits_in_memory(n * c * h * w * 4 * 8, f"--n {n} ({n} images of {c}×{h}×{w})")
