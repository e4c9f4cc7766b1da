"""The plain configs every layer reads: :class:`TrainConfig` (the engine's settings, also the ``diffvae train``
flags its fields mark), :class:`DataFields` (what a run records about its data; :class:`diffvae.data.DataConfig`
adds ``load()``), and :func:`config_from_dict`, the one way a config is rebuilt from JSON (unknown keys refused).
A family's own config lives in its package (``spec.config_class``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field, fields
from typing import Any

from diffvae.device import fused_adamw_available, resolve_device, resolve_precision
from diffvae.errors import DiffvaeError
from diffvae.ranges import TRAIN_RANGES, train_flag


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


def saved_config(config_class, values: dict[str, Any]):
    """The family config of a saved run's ``model`` section: the class's own ``from_saved`` where it reads older
    runs' files (e.g. :meth:`diffvae.diffusion.model.UNetFamilyConfig.from_saved`), else :func:`config_from_dict`."""
    from_saved = getattr(config_class, "from_saved", None)
    return from_saved(values) if from_saved is not None else config_from_dict(config_class, values)


def check_tensorboard() -> None:
    """One line if the optional tensorboard package is missing (checked before the run is written)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise DiffvaeError("--tensorboard needs the tensorboard package: pip install 'diffvae[tensorboard]'")


def _cli(help_text: str | None = None, metavar: str | None = None) -> dict[str, Any]:
    """Field metadata of a TrainConfig field that is a ``diffvae train`` flag (see TRAIN_CLI_FIELDS)."""
    return {"cli": True, "help": help_text, "metavar": metavar}


@dataclass
class TrainConfig:
    steps: int | None = field(default=None, metadata=_cli("optimizer steps"))  # train this many optimizer steps ...
    budget_minutes: float | None = field(default=None, metadata=_cli("wall-clock budget; the LR schedule is fitted to it",
                                                                     "MINUTES"))  # ... or as many as fit this budget
    batch_size: int = field(default=128, metadata=_cli())
    lr: float = field(default=1e-3, metadata=_cli(f"in {TRAIN_RANGES['lr'].text()}"))
    weight_decay: float = field(default=0.0, metadata=_cli())
    warmup_steps: int = field(default=100, metadata=_cli("LR warm-up steps"))
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = field(default=1.0, metadata=_cli())
    ema_decay: float = field(default=0.999, metadata=_cli())
    precision: str = field(default="auto", metadata=_cli("auto | bf16 | fp16 (CUDA, loss scaling) | fp32 (default auto)"))
    seed: int = field(default=0, metadata=_cli("(default 0)"))
    device: str = field(default="auto", metadata=_cli("auto | cpu | cuda[:N] | mps (default auto)"))  # auto | cpu | cuda | cuda:N | mps
    checkpoint_every: int = field(default=500, metadata=_cli())
    log_every: int = field(default=10, metadata=_cli())
    snapshot_first_minutes: float | None = None  # EMA snapshots after this many training minutes ... (None/0 = off)
    snapshot_factor: float = 2.0  # ... then each time the training minutes grow by this factor (diffvae.snapshots)
    sample_every: int = field(default=0, metadata=_cli("write samples/step_N.png every N steps (0 = never)", "N"))
    eval_every: int = field(default=0, metadata=_cli("append a cheap held-out bound/FID row to metrics.jsonl every N steps (0 = never)", "N"))
    early_stop_every: int = field(default=0, metadata=_cli("keep the EMA weights with the best bound on a validation part of "
                                                           "the training images, measured every N steps (0 = never)", "N"))
    tensorboard: bool = field(default=False, metadata=_cli("also write TensorBoard event files into RUN/tensorboard"))
    hflip: bool = field(default=False, metadata=_cli("mirror each training image left-right with probability 1/2"))
    recipe: str | None = None  # the compute-aware recipe a --budget run was given (diffvae.recipes), for the record
    fused_adamw: bool | None = None  # None: fused AdamW where torch has it for the device, resolved by validate() (config.json keeps it)

    def validate(self) -> None:
        if self.steps is None and self.budget_minutes is None:
            raise DiffvaeError("give --steps N or --budget MINUTES")
        for name, allowed in TRAIN_RANGES.items():  # every number within its range (diffvae.ranges)
            value = getattr(self, name)
            if value is not None or name not in ("steps", "budget_minutes"):
                allowed.check(value, train_flag(name))
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise DiffvaeError(f"--precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not isinstance(self.device, str):
            raise DiffvaeError(f"--device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        for name in ("sample_every", "eval_every", "early_stop_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**9:
                raise DiffvaeError(f"--{name.replace('_', '-')} must be a whole number of steps >= 0 (0 = never), got {value!r}")
        first = self.snapshot_first_minutes
        if first is not None and not (first >= 0 and math.isfinite(first)):
            raise DiffvaeError(f"snapshot_first_minutes must be a number of minutes >= 0, got {first}")
        if not (self.snapshot_factor > 1 and math.isfinite(self.snapshot_factor)):
            raise DiffvaeError(f"snapshot_factor must be a number > 1, got {self.snapshot_factor}")
        if self.tensorboard:
            check_tensorboard()
        if self.precision == "fp16" and resolve_device(self.device).type != "cuda":
            raise DiffvaeError(f"--precision fp16 (with loss scaling) needs a CUDA device, not {self.device}; use bf16 or fp32")
        device = resolve_device(self.device)
        resolve_precision(self.precision, device)  # refuses a wrong $DIFFVAE_CPU_KIND before anything is written
        if self.fused_adamw is None:  # decided once, before config.json is written, so a resume uses the same optimizer
            self.fused_adamw = fused_adamw_available(device)


# the TrainConfig fields that are ``diffvae train`` flags (flag names: diffvae.ranges.train_flag)
TRAIN_CLI_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("cli"))


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from JSON values, refusing unknown keys (one error line)."""
    return config_from_dict(TrainConfig, d)


@dataclass
class DataFields:
    """How a run's data was loaded: enough to load the same images again (config.json's "data")."""

    spec: str
    size: int | None = None
    key: str | None = None
    binarize: bool = False
    limit: int | None = None
    split_seed: int = 0
