"""Optional paper-comparable features: Inception-v3 pool3 (2048-d) from a local weights file.

``--features inception:PATH`` scores samples in the feature space of published FIDs (Heusel et al.
2017): the Inception-v3 graph of 2015-12-05 as torch-fidelity ports it (``FeatureExtractorInceptionV3``:
uint8 images resized to 299×299 with TensorFlow-1.x-compatible bilinear interpolation, scaled by
(x − 128) / 128, the 2048-d average-pooled ``pool3`` output). Greyscale images are replicated to RGB.
The default feature space stays diffvae's local feature network (:mod:`diffvae.metrics.features`).

FID in this space is comparable with papers only with the standard weights file,
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's name; torch-fidelity hosts the same file as
``weights-inception-2015-12-05-6726825d.pth``; ``6726825d`` is the start of its SHA-256, which is checked
and named in the feature space). Any other state dict of the same network is accepted and labelled as not
standard.

Nothing is downloaded: the weights are read from PATH only (``.safetensors``, or a ``.pth`` through
``torch.load(weights_only=True)``, which unpickles tensors and containers only), and torch-fidelity's own
loader (an unrestricted ``torch.load`` of a given path, a download without one) is never called.
torch-fidelity is an optional extra: ``pip install 'diffvae[inception]'``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from diffvae.errors import DiffvaeError
from diffvae.metrics.features import _as_uint8_images, get_feature_extractor

INCEPTION_DIM = 2048
INCEPTION_BATCH = 16
STANDARD_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_SHA256_PREFIX = "6726825d"
NEEDS_TORCH_FIDELITY = "--features inception needs torch-fidelity (pip install 'diffvae[inception]')"


@dataclass(frozen=True)
class FeatureSpaceSpec:
    """The parsed ``--features`` value: ``local`` (diffvae's feature network for the data, the default)
    or ``inception`` with the weights file ``path``."""

    kind: str
    path: Path | None = None


def parse_features(value: str | None) -> FeatureSpaceSpec:
    """``local`` | ``inception:PATH`` → :class:`FeatureSpaceSpec` (None means ``local``); anything else is refused."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "local"):
        return FeatureSpaceSpec("local")
    kind, sep, argument = value.strip().partition(":") if isinstance(value, str) else ("", "", "")
    if kind.lower() == "inception" and sep:
        if not argument.strip():
            raise DiffvaeError("--features inception:PATH needs the path of a local Inception-v3 weights file "
                               f"(the standard one is {STANDARD_WEIGHTS_FILE})")
        return FeatureSpaceSpec("inception", Path(argument.strip()).expanduser())
    raise DiffvaeError(f"--features must be local or inception:PATH (a local weights file), got {value!r}")


def inception_module():
    """torch-fidelity's ``feature_extractor_inceptionv3`` module, or the one-line error saying how to install it."""
    try:
        from torch_fidelity import feature_extractor_inceptionv3
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "torch_fidelity":
            raise DiffvaeError(NEEDS_TORCH_FIDELITY) from None
        raise DiffvaeError(f"{NEEDS_TORCH_FIDELITY}; importing it failed: {err}") from None
    except Exception as err:  # installed but broken (e.g. a torchvision built for another torch)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise DiffvaeError(f"{NEEDS_TORCH_FIDELITY}; importing it failed: {type(err).__name__}: {first}") from None
    return feature_extractor_inceptionv3


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: ``.safetensors``, else ``torch.load(weights_only=True)`` (no
    arbitrary unpickling). A missing, unreadable or damaged file, or one that is not a flat
    name → tensor mapping, is refused in one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DiffvaeError(f"--features inception: weights file {path} " + ("is not a file" if path.exists() else "not found"))
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch / safetensors / zip / OS errors: all mean "cannot use this file"
        if type(err).__name__ == "UnpicklingError":  # torch's text advises weights_only=False: never relayed
            raise DiffvaeError(f"cannot read the Inception weights {path}: it holds pickled Python objects besides tensors, "
                               "which diffvae never unpickles; use a plain state dict (.pth of tensors) or .safetensors") from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DiffvaeError(f"cannot read the Inception weights {path}: {first}") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DiffvaeError(f"{path} is not a state dict (a mapping of names to tensors) of Inception-v3")
    _check_float_weights(state, path)
    return state


def _check_float_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Inception's weights and statistics are floats; integers (a quantized or mangled export) would load into
    the float parameters silently converted. Only batch-norm counters (``num_batches_tracked``) are integers."""
    for name, tensor in state.items():
        if not tensor.is_floating_point() and not name.endswith("num_batches_tracked"):
            raise DiffvaeError(f"{path}: {name} holds {str(tensor.dtype).replace('torch.', '')} values; "
                               "Inception-v3 weights must be floating point")


def build_inception(state: dict[str, torch.Tensor], source: str = "weights"):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (pool3 output) holding ``state``, loaded strictly.

    Its constructor fetches weights itself (a download, or an unrestricted ``torch.load`` of a path);
    here its URL loader is replaced, for the construction only, by one that returns ``state``, so
    neither happens. A state dict of another network is refused in one line."""
    module = inception_module()
    with mock.patch.object(module, "load_state_dict_from_url", lambda *args, **kwargs: state):
        try:
            return module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        except RuntimeError as err:  # load_state_dict(strict=True): missing/unexpected keys, shape mismatch
            lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            detail = (lines[0] if lines else str(err).strip())[:200]
            raise DiffvaeError(f"{source} is not a state dict of torch-fidelity's Inception-v3 "
                               f"(expected {STANDARD_WEIGHTS_FILE}): {detail}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionExtractor:
    """Inception-v3 pool3 features with the interface of :class:`diffvae.metrics.features.FeatureExtractor`
    (``features``, ``name``, ``kind``, ``info``); there is no ``predict_proba`` (its 1008 ImageNet classes are
    not the data's), so recognisability and class coverage are not reported in this space."""

    kind = "inception"
    feature_dim = INCEPTION_DIM

    def __init__(self, net: torch.nn.Module, weights: Path, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        digest = sha256_of(weights)
        standard = digest.startswith(STANDARD_SHA256_PREFIX)
        self.info = {"weights": str(weights), "weights_sha256": digest, "standard_weights": standard}
        self.name = (f"Inception-v3 pool3 ({INCEPTION_DIM}-d), weights {weights.name}"
                     + (" (the standard FID weights)" if standard else " (not the standard FID weights)"))

    @torch.inference_mode()
    def features(self, images_uint8: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 2048) float64 pool3 features of uint8 (N, C, H, W) images, C = 1 (replicated to RGB) or 3,
        any H×W (resized to 299×299 inside the network), in batches of ``INCEPTION_BATCH``."""
        images = _as_uint8_images(images_uint8)
        if images.shape[1] not in (1, 3):
            raise DiffvaeError(f"Inception-v3 takes greyscale or RGB images, got {images.shape[1]} channels")
        outputs = []
        for start in range(0, images.shape[0], INCEPTION_BATCH):
            batch = images[start:start + INCEPTION_BATCH].to(self.device)
            rgb = batch.expand(-1, 3, -1, -1).contiguous() if batch.shape[1] == 1 else batch
            outputs.append(self.net(rgb)[0].double().cpu())
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, INCEPTION_DIM))


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> InceptionExtractor:
    """The Inception-v3 extractor of the local weights file ``path`` (checked: see :func:`read_weights`,
    :func:`build_inception`); torch-fidelity is imported first so a missing install is the first error."""
    inception_module()
    path = Path(path).expanduser()
    return InceptionExtractor(build_inception(read_weights(path), source=str(path)), path, device)


def feature_extractor_for(spec: FeatureSpaceSpec, dataset, device: str | torch.device = "cpu"):
    """The extractor ``spec`` names: the data's local feature network (trained and cached on first use),
    or Inception-v3 from the weights file."""
    if spec.kind == "inception":
        return load_inception(spec.path, device)

    return get_feature_extractor(dataset)
