"""What compare's statistics step reads: per family the per-item measurements behind its figures, and the
reference features once, as safetensors in ``DIR/evidence/`` (``<family>.safetensors``, ``reference.safetensors``).

A family's file holds :data:`diffvae.evaluate.EVIDENCE_KEYS`: the generated samples' features, their per-sample
sharpness, the per-image bits/dim on the first held-out images in order (the same images for every family), the
midpoint features, the ms/sample of each timed batch and the probe's per-image correctness on the first
held-out images in order. Written atomically with the evaluation it belongs to, so ``--resume`` keeps it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffvae.runs import load_tensors, save_tensors
from diffvae.errors import DiffvaeError

FOLDER = "evidence"
REFERENCE = "reference"


def evidence_path(out: Path, name: str) -> Path:
    return Path(out) / FOLDER / f"{name}.safetensors"


def save_evidence(out: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    (Path(out) / FOLDER).mkdir(exist_ok=True)
    save_tensors(evidence_path(out, name), tensors, metadata)


def load_evidence(out: Path, names) -> dict[str, dict[str, torch.Tensor]]:
    """{name: tensors} for each of ``names`` whose file exists and reads; a damaged file is left out (its
    comparisons fall back to the stored intervals)."""
    found = {}
    for name in names:
        path = evidence_path(out, name)
        if path.is_file():
            try:
                found[name] = load_tensors(path)[0]
            except DiffvaeError:
                continue
    return found
