"""Class conditioning shared by every family: the config fields' checks, the null label, label dropout
and the labels a sampling command asks for. Families name nothing here and nothing here names a family.

A conditional model's config carries three fields (recorded in config.json like every model field):

* ``conditional`` — train on (image, label) pairs (``diffvae train <family> --conditional``);
* ``num_classes`` — K, filled in from the data set by :func:`conditioned_config` (0 while unconditional);
* ``p_uncond`` — the probability that a training label is replaced by the **null label** K, so that one
  network learns both p(x | y) and p(x) (classifier-free guidance, Ho & Salimans 2022, §3.2).

Labels are int64 tensors (N,) with values in {0, …, K−1}, or K (:func:`null_labels`) for "no label".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import torch

from diffvae.errors import DiffvaeError
from diffvae.families import get_family
from diffvae.ranges import GUIDANCE

__all__ = ["ConditionFields", "CONDITION_FIELDS", "check_condition_fields", "is_conditional", "num_classes", "conditioned_config",
           "null_labels", "drop_labels", "check_labels", "check_condition", "null_condition", "sampling_labels",
           "check_buildable"]

@dataclass
class ConditionFields:
    """The conditioning fields of every conditional family's config, declared once (its config inherits them)."""

    conditional: bool = False  # class-conditional model (labels from the data; diffvae.conditioning)
    num_classes: int = 0  # K, set from the data's labels when conditional
    p_uncond: float = 0.1  # label dropout to the null label (classifier-free guidance; a VAE's all-zero one-hot)


CONDITION_FIELDS = tuple(f.name for f in fields(ConditionFields))


def check_condition_fields(config) -> None:
    """The checks of a config's ``conditional`` / ``num_classes`` / ``p_uncond`` (call from ``validate()``)."""
    if config.num_classes < 0 or (config.num_classes and not config.conditional):
        raise DiffvaeError(f"num_classes={config.num_classes} needs --conditional (it is set from the data's labels)")
    if not (0.0 <= config.p_uncond <= 1.0 and math.isfinite(config.p_uncond)):
        raise DiffvaeError(f"--p-uncond must be a probability in [0, 1], got {config.p_uncond}")


def is_conditional(model) -> bool:
    """Whether ``model`` (or a config) was built to take class labels."""
    config = getattr(model, "config", model)
    return bool(getattr(config, "conditional", False)) and int(getattr(config, "num_classes", 0) or 0) > 0


def num_classes(model) -> int:
    """K of a conditional model (0 for an unconditional one)."""
    return int(getattr(getattr(model, "config", model), "num_classes", 0) or 0) if is_conditional(model) else 0


def conditioned_config(model_config, dataset, spec=None):
    """``model_config`` with ``num_classes`` taken from ``dataset`` when ``conditional`` is set; refuses
    (one line) a data set without labels, or a family whose ``spec.conditional`` is False. Called
    before the model is built and before the disk is touched."""
    if not getattr(model_config, "conditional", False):
        return model_config
    if spec is not None and not spec.conditional:
        raise DiffvaeError(f"--conditional: {spec.short} runs cannot be trained on labels")
    k = getattr(dataset, "num_classes", None)
    if not k or getattr(dataset, "train_labels", None) is None:
        raise DiffvaeError(f"--conditional needs labelled data, but {getattr(dataset, 'name', 'this data set')} has no labels "
                           "(use a built-in data set, folder: with class subfolders, or an npz with y)")
    if model_config.num_classes not in (0, k):
        raise DiffvaeError(f"num_classes={model_config.num_classes} but the data has {k} classes")
    return dataclasses.replace(model_config, num_classes=int(k))


def null_labels(n: int, k: int, device=None) -> torch.Tensor:
    """n copies of the null label K (the "no condition" class)."""
    return torch.full((n,), int(k), dtype=torch.long, device=device)


def drop_labels(labels: torch.Tensor, p_uncond: float, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Label dropout: each label independently becomes the null label K with probability ``p_uncond``
    (Ho & Salimans 2022, Alg. 1). Uses ``generator`` or the global RNG (the engine's, for exact resume)."""
    if p_uncond <= 0.0:
        return labels
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=device).to(labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, k), labels)


def check_labels(labels: torch.Tensor | None, n: int, k: int, allow_null: bool = True) -> torch.Tensor | None:
    """``labels`` as int64 (n,) in 0..K (K = null) — or None — else one error line."""
    if labels is None:
        return None
    if k == 0:
        raise DiffvaeError("this run was trained unconditionally; it cannot follow a class (train with --conditional)")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or tuple(labels.shape) != (n,):
        raise DiffvaeError(f"labels must be {n} integers (one per sample), got {labels.dtype} {tuple(labels.shape)}")
    top = k if allow_null else k - 1
    if n and (int(labels.min()) < 0 or int(labels.max()) > top):
        raise DiffvaeError(f"class labels must be in 0..{k - 1}, got {int(labels.min())}..{int(labels.max())}")
    return labels.long()


def check_condition(labels: torch.Tensor | None, n: int, k: int) -> torch.Tensor | None:
    """What a sampler may follow: int64 labels (n,) (:func:`check_labels`) or **class weights**, a float
    (n, K+1) matrix whose rows lie on the simplex (column K = null) — a mixture of conditions, e.g.
    (1−λ)·onehot(A) + λ·onehot(B) for interpolating between classes. One error line otherwise."""
    if labels is None or not torch.is_tensor(labels) or not labels.dtype.is_floating_point or labels.ndim != 2:
        return check_labels(labels, n, k)
    if k == 0:
        raise DiffvaeError("this run was trained unconditionally; it cannot follow a class (train with --conditional)")
    if tuple(labels.shape) != (n, k + 1):
        raise DiffvaeError(f"class weights must be a ({n}, {k + 1}) matrix (one row per sample), got {tuple(labels.shape)}")
    rows = labels.double().sum(1)
    if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()) or bool(((rows - 1).abs() > 1e-5).any()):
        raise DiffvaeError("class weights must be finite, >= 0, and each row must sum to 1")
    return labels


def null_condition(labels: torch.Tensor, k: int) -> torch.Tensor:
    """The null condition shaped like ``labels``: the label K (int labels) or the one-hot row of K (weights)."""
    if labels.dtype.is_floating_point:
        null = torch.zeros_like(labels)
        null[:, int(k)] = 1.0
        return null
    return torch.full_like(labels, int(k))


def sampling_labels(model, n: int, class_: int | None = None, classes: str | tuple[int, ...] | None = None,
                    guidance: float | None = None) -> dict:
    """The sampling keywords (``labels``, ``guidance``) for ``sample --class K | --classes 0,1,.. --guidance W``:
    with ``classes`` the n samples cycle through them. Refuses, in one line, a class for an unconditional
    run, both flags at once, an unknown class and a guidance scale that is not a finite number ≥ 0."""
    if class_ is None and classes is None and guidance is None:
        return {}
    k = num_classes(model)
    if k == 0:
        given = "--class" if class_ is not None else "--classes" if classes is not None else "--guidance"
        raise DiffvaeError(f"{given}: this run was trained unconditionally (train with --conditional to follow a class)")
    if class_ is not None and classes is not None:
        raise DiffvaeError("give --class K or --classes A,B,..., not both")
    out: dict = {}
    if guidance is not None:
        spec = get_family(model.family).spec()
        if not spec.iterative:
            raise DiffvaeError(f"--guidance applies to iterative samplers; a {spec.short} run decodes in one step")
        if not GUIDANCE.contains(guidance):  # 1e39 overflowed the guided prediction
            raise DiffvaeError(f"--guidance must be a finite number >= 0 and <= {GUIDANCE.high:g}, got {guidance}")
        out["guidance"] = float(guidance)
    if class_ is not None or classes is not None:
        wanted = [class_] if class_ is not None else _parse_classes(classes)
        bad = [c for c in wanted if not 0 <= c < k]
        if bad:
            raise DiffvaeError(f"class {bad[0]} is out of range: this run has classes 0..{k - 1}")
        out["labels"] = torch.tensor([wanted[i % len(wanted)] for i in range(n)], dtype=torch.long)
    return out


def check_guidance_has_classes(class_: int | None, classes: str | tuple[int, ...] | None, guidance: float | None) -> None:
    """``sample --guidance W`` steers toward a class: without ``--class``/``--classes`` the samples are the null
    label's (unconditional) and W would change nothing, so it is refused rather than silently ignored."""
    if guidance is not None and class_ is None and classes is None:
        raise DiffvaeError(f"--guidance {guidance:g} steers the samples toward a class: give --class K or --classes A,B,... "
                           "(without them the samples are unconditional and guidance does nothing)")


def _parse_classes(classes: str | tuple[int, ...]) -> list[int]:
    if isinstance(classes, str):
        try:
            values = [int(part) for part in classes.split(",") if part.strip()]
        except ValueError:
            raise DiffvaeError(f"--classes must be comma-separated class numbers, e.g. 0,1,2; got {classes!r}") from None
    else:
        values = [int(c) for c in classes]
    if not values:
        raise DiffvaeError("--classes needs at least one class number")
    return values


def check_buildable(config) -> None:
    """A model can be built from ``config``: a conditional one knows its K (refused otherwise, one line)."""
    check_condition_fields(config)
    if getattr(config, "conditional", False) and config.num_classes < 1:
        raise DiffvaeError("a conditional model needs num_classes >= 1 (train with --conditional on labelled data, "
                           "which sets it from the labels)")
