"""The conditional bound (issue 16): ``bound(x, labels=y)`` bounds −log p(x | y) for every family — the null
label is the unconditional bound exactly, the labels reach every network call of the bound (checked against
the unconditional code path on a network with the label wired in, and for flow matching against the exact
log-density of class-dependent Gaussians), unconditional models refuse labels, and ``eval``'s likelihood
reports ``cond_bpd`` for a conditional model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffvae.data import load_data
from diffvae.diffusion.model import DDPM, DDPMConfig
from diffvae.errors import DiffvaeError
from diffvae.evaluate import EvalConfig, likelihood
from diffvae.flow.model import TIME_SCALE, FlowConfig, FlowMatching
from diffvae.latent.model import LatentDiffusion, LDMConfig
from diffvae.vae.model import VAE, VAEConfig
from tests.flow.conftest import DiagonalGaussian

K = 4
SHAPE = (1, 8, 8)
LABELS = torch.tensor([0, 1, 2, 3, 0, 2])


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (the UNet's zero-initialised output layer would hide the labels) and class
    embeddings far apart, so that the network's output depends on the class. The UNets have two levels: at
    one channel per GroupNorm group (width 8) the norm after the embedding's shift removes it exactly."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape))
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.weight.copy_(3.0 * torch.randn(m.weight.shape))
    return model.eval()


def ddpm(conditional: bool = True) -> DDPM:
    config = DDPMConfig(channels=8, channel_mult=(1, 2), timesteps=12, conditional=conditional, num_classes=K if conditional else 0)
    return _perturbed(DDPM(config, SHAPE))


def ldm(conditional: bool = True) -> LatentDiffusion:
    config = LDMConfig(ae_width=8, latent_channels=2, downsample=2, channels=8, channel_mult=(1, 2), timesteps=12,
                       latent_scale=0.7, conditional=conditional, num_classes=K if conditional else 0)
    return _perturbed(LatentDiffusion(config, SHAPE))


def flow(conditional: bool = True) -> FlowMatching:
    config = FlowConfig(channels=8, channel_mult=(1, 2), likelihood_steps=4, likelihood_probes=2, conditional=conditional,
                        num_classes=K if conditional else 0)
    return _perturbed(FlowMatching(config, SHAPE))


def vae(conditional: bool = True) -> VAE:
    return _perturbed(VAE(VAEConfig(width=16, latent_dim=4, conditional=conditional, num_classes=K if conditional else 0), SHAPE))


FAMILIES = {"ddpm": ddpm, "ldm": ldm, "flow": flow, "vae": vae}
BOUND_OPTIONS = {"ddpm": [{}, {"timesteps": 3}], "ldm": [{}, {"timesteps": 3}], "flow": [{}], "vae": [{}, {"iwae_samples": 3}]}
CASES = [(name, options) for name in FAMILIES for options in BOUND_OPTIONS[name]]


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def bound(model, x, labels=None, seed=1, **options) -> dict:
    with torch.no_grad():
        return model.bound(x, generator=torch.Generator().manual_seed(seed), labels=labels, **options)


def tensors(result: dict) -> dict:
    return {k: v for k, v in result.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("name,options", CASES)
def test_the_null_label_is_the_unconditional_bound_exactly(name, options):
    model, x = FAMILIES[name](), images()
    plain = bound(model, x, **options)
    null = bound(model, x, torch.full((6,), K), **options)
    assert tensors(plain).keys() == tensors(null).keys() and "bpd" in plain
    for key, value in tensors(plain).items():
        assert torch.equal(value, null[key]), key


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_class_label_changes_the_bound(name):
    model, x = FAMILIES[name](), images()
    plain, given = bound(model, x)["bpd"], bound(model, x, LABELS)["bpd"]
    other = bound(model, x, (LABELS + 1) % K)["bpd"]
    assert given.shape == (6,) and bool(torch.isfinite(given).all())
    assert not torch.allclose(given, plain, rtol=0, atol=1e-6)
    assert not torch.allclose(given, other, rtol=0, atol=1e-6)


class BakedLabel(nn.Module):
    """A network called without labels that passes one fixed class to the wrapped conditional network:
    the unconditional code path with the label wired in."""

    def __init__(self, inner: nn.Module, label: int):
        super().__init__()
        self.inner, self.label = inner, label

    def forward(self, x, t, labels=None):
        assert labels is None, "the unconditional path must not pass labels"
        return self.inner(x, t, torch.full((x.shape[0],), self.label, dtype=torch.long))


def _networks(model) -> tuple[nn.Module, str]:
    """The module holding the UNet, and its attribute name."""
    return (model.velocity, "unet") if hasattr(model, "velocity") else (model.denoiser, "unet")


@pytest.mark.parametrize("name,options", [c for c in CASES if c[0] != "vae"])
def test_labels_reach_every_network_call_of_the_bound(name, options):
    """Example i's bound given y_i equals, bit for bit, the unconditional bound of a network with y_i wired in
    (same draws: the seed fixes the noise, timesteps, probes and dequantization)."""
    model, x = FAMILIES[name](), images()
    given = bound(model, x, LABELS, **options)
    owner, attribute = _networks(model)
    inner = getattr(owner, attribute)
    for label in LABELS.unique().tolist():
        setattr(owner, attribute, BakedLabel(inner, label))
        try:
            wired = bound(model, x, **options)
        finally:
            setattr(owner, attribute, inner)
        rows = LABELS == label
        for key, value in tensors(given).items():
            assert torch.equal(value[rows], wired[key][rows]), (label, key)


class GaussianClassVelocity(nn.Module):
    """The exact velocity of the linear path for class-dependent data x₀ | y ~ N(μ_y, s² I)
    (tests/flow/conftest.py), standing in for the UNet: forward(x, t · TIME_SCALE, labels)."""

    def __init__(self, means: torch.Tensor, var: float):
        super().__init__()
        self.classes = [DiagonalGaussian(m.flatten(), torch.full((m.numel(),), var, dtype=torch.float64)) for m in means]

    def forward(self, x, t, labels=None):
        out = torch.empty_like(x, dtype=torch.float64)
        for c in labels.unique().tolist():
            rows = labels == c
            out[rows] = self.classes[c].velocity(x[rows].double(), t[rows].double() / TIME_SCALE)
        return out.to(x.dtype)


def test_the_flow_bound_given_y_is_the_exact_class_density():
    """With the exact velocity field of class-conditional Gaussians the ODE bound given y is
    −log₂ N(x; μ_y, s²)/D + log₂ 127.5 (the dequantization bound of a smooth density), and wrong labels are not.
    The field is elementwise, so its Jacobian is diagonal and Hutchinson's Rademacher estimate is exact."""
    shape, var = (1, 3, 3), 0.09
    model = FlowMatching(FlowConfig(channels=8, channel_mult=(1, 2), likelihood_steps=40, likelihood_probes=2,
                                    conditional=True, num_classes=K), shape).eval()
    g = torch.Generator().manual_seed(3)
    means = 0.6 * torch.randn(K, *shape, generator=g, dtype=torch.float64)
    model.velocity.unet = GaussianClassVelocity(means, var)
    y = torch.tensor([0, 1, 2, 3])
    x = ((means[y] + var**0.5 * torch.randn(4, *shape, generator=g, dtype=torch.float64)).clamp(-1, 1) + 1) * 127.5
    x = x.round().to(torch.uint8)
    dims = math.prod(shape)
    signed = x.double() / 127.5 - 1
    exact = [-DiagonalGaussian(means[c].flatten(), torch.full((dims,), var, dtype=torch.float64)).log_density(
        signed[i:i + 1].flatten(1)).item() / (dims * math.log(2)) + math.log2(127.5) for i, c in enumerate(y.tolist())]
    got = bound(model, x, y)["bpd"]
    assert got.tolist() == pytest.approx(exact, abs=0.01)  # measured: within 0.003
    wrong = bound(model, x, (y + 1) % K)["bpd"]
    assert bool((wrong > torch.tensor(exact) + 0.5).all())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_an_unconditional_model_refuses_labels(name):
    model, x = FAMILIES[name](conditional=False), images(2)
    with pytest.raises(DiffvaeError, match="trained unconditionally"):
        bound(model, x, torch.tensor([0, 1]))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bad_labels_are_refused_in_one_line(name):
    model, x = FAMILIES[name](), images(2)
    for labels, message in ((torch.tensor([0, K + 1]), "in 0.."), (torch.tensor([0.0, 1.0]), "integers"),
                            (torch.tensor([0, 1, 2]), "integers")):
        with pytest.raises(DiffvaeError, match=message):
            bound(model, x, labels)


@pytest.mark.parametrize("name", ["ddpm", "vae"])
def test_eval_likelihood_reports_the_conditional_bound(name):
    dataset = load_data("digits")
    k = dataset.num_classes
    config = EvalConfig.quick(bound_n=8, ode_n=0, variance_fit_n=0, iwae_samples=2)
    if name == "ddpm":
        model = _perturbed(DDPM(DDPMConfig(channels=8, channel_mult=(1, 2), timesteps=12, conditional=True, num_classes=k),
                                dataset.image_shape))
    else:
        model = _perturbed(VAE(VAEConfig(width=16, latent_dim=4, conditional=True, num_classes=k), dataset.image_shape))
    out = likelihood(model, dataset, config)
    assert out["cond_bpd_n"] == out["bpd_n"] == 8 and math.isfinite(out["cond_bpd"])
    low, high = out["cond_bpd_ci95"]
    assert low < out["cond_bpd"] < high and high - low == pytest.approx(2 * 1.96 * out["cond_bpd_sem"])
    # the same images given their own labels, from the same seed (the route eval takes is the model's own bound)
    x, y = dataset.test[:8], dataset.test_labels[:8]
    kwargs = {"iwae_samples": 2} if name == "vae" else {"timesteps": 0, "fit_data": None}
    reference = bound(model, x, y, seed=config.seed, **kwargs)["bpd"].double()
    assert out["cond_bpd"] == pytest.approx(float(reference.mean()), rel=1e-12)
    assert out["cond_bpd"] != out["bpd"]


def test_eval_likelihood_of_an_unconditional_model_has_no_conditional_bound():
    dataset = load_data("digits")
    model = _perturbed(DDPM(DDPMConfig(channels=8, channel_mult=(1, 2), timesteps=12), dataset.image_shape))
    out = likelihood(model, dataset, EvalConfig.quick(bound_n=4, ode_n=0, variance_fit_n=0))
    assert "bpd" in out and not any(key.startswith("cond_") for key in out)
