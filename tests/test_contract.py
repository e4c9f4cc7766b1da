"""The family contract (diffvae.contract): no family is named outside its own package and the
registry, every registered family satisfies it, and a family defined in a few lines here joins
``compare`` end to end through one registry entry."""

import ast
import json
import math
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import diffvae
from diffvae.cli import main
from diffvae.contract import BoundOptions, FamilyModel, FamilySpec
from diffvae.distributions import discretized_gaussian_log_likelihood, nats_to_bpd
from diffvae.families import FAMILIES, Family
from diffvae.images import to_signed, to_uint8

SRC = Path(diffvae.__file__).parent
NAMES = re.compile(r'"vae"|"ddpm"|"ldm"|"flow"')


def _family_packages() -> set[Path]:
    """A family's own package: a folder of the package with a family.py (its spec)."""
    return {p.parent for p in SRC.rglob("family.py")}


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def test_no_family_is_named_outside_the_registry_and_its_own_package():
    own = _family_packages()
    assert {SRC / "vae", SRC / "diffusion", SRC / "latent"} <= own
    offending = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "families.py" or any(package in path.parents for package in own):
            continue
        text = path.read_text()
        docstrings = _docstring_lines(ast.parse(text))
        for number, line in enumerate(text.splitlines(), start=1):
            if NAMES.search(line) and number not in docstrings:
                offending.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)


def test_the_scan_would_find_a_family_named_in_code(tmp_path):
    """The check above can fail: a quoted family name in code is found, in a docstring it is not."""
    text = 'def f(model):\n    """Only "vae" here is text."""\n    return model.family == "vae"\n'
    hits = [n for n, line in enumerate(text.splitlines(), 1) if NAMES.search(line) and n not in _docstring_lines(ast.parse(text))]
    assert hits == [3]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_registered_family_meets_the_contract(name):
    fam = FAMILIES[name]
    config_class, model_class = fam.load()
    spec = fam.spec()
    assert isinstance(spec, FamilySpec)
    assert spec.title and spec.short and spec.objective and spec.latent_space and spec.interpolation
    assert all(sign in (1, -1) for _, _, sign in spec.bound_parts) and spec.bound_parts
    assert bool(spec.samplers) == spec.iterative  # an iterative family names its samplers, a one-pass one none
    assert all(sampler in spec.samplers for sampler, _ in spec.sweep)
    assert model_class.family == name
    for method in ("training_loss", "sample", "bound", "nfe", "to_latent", "from_latent"):
        assert callable(getattr(model_class, method)), method


# ----------------------------------------------------------------------------- a toy family, in a few lines

@dataclass
class ToyConfig:
    init_log_scale: float = 0.0

    def validate(self) -> None:
        if not math.isfinite(self.init_log_scale):
            from diffvae.errors import DiffvaeError

            raise DiffvaeError(f"init_log_scale must be finite, got {self.init_log_scale}")


class ToyPixels(nn.Module):
    """Independent per-pixel discretized Gaussians: −log p(x) is exact, so it is its own bound."""

    family = "toy"

    def __init__(self, config: ToyConfig, image_shape):
        super().__init__()
        config.validate()
        self.config, self.image_shape = config, tuple(image_shape)
        self.mean = nn.Parameter(torch.zeros(self.image_shape))
        self.log_scale = nn.Parameter(torch.full(self.image_shape, float(config.init_log_scale)))

    @property
    def latent_dims(self) -> int:
        return math.prod(self.image_shape)

    def _nats(self, x):
        return -discretized_gaussian_log_likelihood(to_signed(x), self.mean, self.log_scale).flatten(1).sum(1)

    def training_loss(self, x):
        nats = self._nats(x)
        return nats.mean() / self.latent_dims, {"bpd": float(nats_to_bpd(nats.detach().mean(), self.latent_dims))}

    def sample(self, n, generator=None, **_):
        noise = torch.randn((n, *self.image_shape), generator=generator)
        return to_uint8(self.mean + self.log_scale.exp() * noise)

    def bound(self, x, generator=None, **_):
        bpd = nats_to_bpd(self._nats(x).double(), self.latent_dims)
        return {"bpd": bpd, "nll_bpd": bpd}

    def nfe(self, **_):
        return 1

    def to_latent(self, x, **_):
        return to_signed(x)

    def from_latent(self, z, **_):
        return to_uint8(z)


TOY_SPEC = FamilySpec(title="Toy pixels", short="Toy", objective="per-pixel NLL", latent_space="the pixels themselves",
                      interpolation="straight in pixel space", bound_label="exact NLL ",
                      bound_parts=(("nll_bpd", "pixel NLL", 1),), color="#9467bd")


@pytest.fixture
def toy_family(monkeypatch):
    module = types.ModuleType("diffvae_test_toy_family")
    module.ToyConfig, module.ToyPixels, module.SPEC = ToyConfig, ToyPixels, TOY_SPEC
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(FAMILIES, "toy", Family("toy", module.__name__, "ToyPixels", "ToyConfig", "independent pixels",
                                                {"lr": 1e-2, "batch_size": 32}))
    return "toy"


def test_the_toy_family_satisfies_the_model_protocol(toy_family):
    model = ToyPixels(ToyConfig(), (1, 8, 8))
    assert isinstance(model, FamilyModel)
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    bound = model.bound(x, **TOY_SPEC.bound_kwargs(BoundOptions(importance_samples=3, timesteps=4)))
    assert torch.allclose(bound["bpd"], bound["nll_bpd"])  # its one part adds up to it


def test_a_toy_family_joins_compare_end_to_end(toy_family, tmp_path, feature_cache):
    out = tmp_path / "report"
    assert main(["compare", "--data", "digits", "--families", "vae,toy", "--budget", "0.5", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["families_requested"] == ["vae", "toy"]
    assert all(v["status"] == "done" for v in results["stages"].values()), results["stages"]
    toy = results["families"]["toy"]
    assert toy["nfe"] == 1 and toy["sampler"] == "decode" and toy["latent_ratio"] == 1.0
    assert toy["bpd"] > 0 and toy["nll_bpd"] == pytest.approx(toy["bpd"]) and toy["fid"] is not None
    assert "sweep" not in toy  # no samplers, no sweep
    assert results["training"]["toy"]["objective"] == "per-pixel NLL" and results["training"]["toy"]["steps"] > 0
    assert isinstance(results["learning_curves"]["toy"], list)
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Aspect"))
    assert header.split("|")[2:4] == [" VAE ", " Toy pixels "]
    assert "the pixels themselves" in md and "exact NLL " in md
    assert (out / "figures" / "samples_toy.png").stat().st_size > 100
    assert "figures/samples_toy.png" in (out / "report.html").read_text()
    assert any("Toy pixels" in line for line in results["when_to_use"])
