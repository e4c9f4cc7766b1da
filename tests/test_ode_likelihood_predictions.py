"""The probability-flow likelihood for every prediction type (diffvae.ode_likelihood.continuous_eps_fn):
ε-, v- and x₀-networks of Gaussian data with their exact posterior means give the same log-likelihood and the
closed form, where the old conversion through the integer ᾱ table does not; and the DDPM spec's ``ode_bpd``
for a v-network (now offered) and an ε-network (unchanged)."""

from __future__ import annotations

import math

import pytest
import torch

from diffvae import ode_likelihood as ol
from diffvae.contract import spec_of
from diffvae.data import load_data
from diffvae.diffusion import targets
from diffvae.diffusion.model import DDPM, DDPMConfig
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.errors import DiffvaeError
from diffvae.images import to_signed

VAR = 0.2  # x₀ ~ N(0, s² I), s² = VAR


def _gaussian_networks(schedule: NoiseSchedule, var: float) -> dict:
    """Exact "networks" of x₀ ~ N(0, s² I) at continuous t, ᾱ(t) = 1 / (1 + σ̄(t)²), d = ᾱ s² + 1 − ᾱ:
    E[ε | x_t] = √(1 − ᾱ) x_t / d,  E[x₀ | x_t] = √ᾱ s² x_t / d,  v = √ᾱ E[ε] − √(1 − ᾱ) E[x₀]."""

    def moments(x, t):
        sigma_bar = ol.continuous_sigma_bar(schedule, t.double().cpu()).reshape(-1, *[1] * (x.ndim - 1))
        alpha = 1.0 / (1.0 + sigma_bar**2)
        d = alpha * var + 1.0 - alpha
        return torch.sqrt(alpha), torch.sqrt(1.0 - alpha), torch.sqrt(1.0 - alpha) * x / d, torch.sqrt(alpha) * var * x / d

    def eps(x, t):
        return moments(x, t)[2].to(x.dtype)

    def x0(x, t):
        return moments(x, t)[3].to(x.dtype)

    def v(x, t):
        signal, noise, e, x0_mean = moments(x, t)
        return (signal * e - noise * x0_mean).to(x.dtype)

    return {"eps": eps, "v": v, "x0": x0}


def _table_eps_fn(network, schedule: NoiseSchedule, prediction: str):
    """The old conversion (``Denoiser.eps_fn``): split_prediction looks ᾱ up at the integer part of t."""
    return lambda x, t: targets.split_prediction(network(x, t).to(x.dtype), x, t, schedule, prediction)[0]


def _normal_log_density(z: torch.Tensor, var: float) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi * var) + z**2 / var)).flatten(1).sum(1)


def _gaussian_case(schedule: NoiseSchedule, steps: int):
    """Data, a grid that starts just above the clean level (u₀ = u₁/1000: the x₀ → ε conversion divides by
    σ̄, so σ̄ = 0 itself is excluded) and the closed form there. x_t at σ̄₀ is N(0, ᾱ₀ s² + 1 − ᾱ₀); the exact
    ODE maps x̄ = x/√ᾱ₀ to x̄_max = √((s² + σ̄²_max)/(s² + σ̄₀²)) x̄, whose prior N(0, 1 + σ̄²_max) differs from
    the true N(0, s² + σ̄²_max) by the last log-ratio (as in tests/flow/test_ode_likelihood.py)."""
    x = math.sqrt(VAR) * torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grid = ol.probability_flow_grid(schedule, steps).clone()
    grid[0] = grid[1] * 1e-3
    sigma_0 = float(ol.continuous_sigma_bar(schedule, torch.tensor(0.0))) * math.sinh(float(grid[0]))
    alpha_0 = 1.0 / (1.0 + sigma_0**2)
    sigma_max = float(ol.continuous_sigma_bar(schedule, torch.tensor(schedule.T - 1.0)))
    x_bar_max = math.sqrt((VAR + sigma_max**2) / (VAR + sigma_0**2)) * x / math.sqrt(alpha_0)
    closed_form = (_normal_log_density(x, alpha_0 * VAR + 1.0 - alpha_0) + _normal_log_density(x_bar_max, 1.0 + sigma_max**2)
                   - _normal_log_density(x_bar_max, VAR + sigma_max**2))
    return x, grid, closed_form


def _log_likelihood(eps_fn, schedule, x, grid) -> torch.Tensor:
    field = ol.probability_flow_field(eps_fn, schedule, clip_timestep=False)
    return ol.ode_log_likelihood(field, x, grid, solver="rk4", divergence="exact")["log_likelihood"]


@pytest.mark.parametrize("schedule", [NoiseSchedule.cosine(200), NoiseSchedule.linear(200)], ids=["cosine", "linear"])
def test_every_prediction_type_gives_the_closed_form_likelihood_of_gaussian_data(schedule):
    """RK4 on 200 steps: the three agree to rounding and lie within 3e-5 nats of the closed form (measured:
    2.7e-5 cosine, 1.1e-5 linear, falling 16× per halving of the step); the table-lookup conversion errs by
    6e-3 (v) and 3e-2 (x₀) nats on cosine, 1e-2 and 5e-2 on linear, so the 1e-4 tolerance separates them."""
    x, grid, closed_form = _gaussian_case(schedule, 200)
    networks = _gaussian_networks(schedule, VAR)
    results = {p: _log_likelihood(ol.continuous_eps_fn(net, schedule, p), schedule, x, grid) for p, net in networks.items()}
    for prediction in ("v", "x0"):
        torch.testing.assert_close(results[prediction], results["eps"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(results["eps"], closed_form, rtol=0.0, atol=1e-4)
    for prediction in ("v", "x0"):  # the old conversion, on the same ODE and solver, is far off
        old = _log_likelihood(_table_eps_fn(networks[prediction], schedule, prediction), schedule, x, grid)
        assert float((old - closed_form).abs().max()) > 20 * 1e-4, prediction


def test_the_three_agree_on_the_default_clipped_path():
    """probability_flow_log_likelihood as the spec calls it (times clipped to t ≥ 0, Heun, exact divergence)."""
    schedule = NoiseSchedule.cosine(100)
    x = math.sqrt(VAR) * torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = {p: ol.probability_flow_log_likelihood(ol.continuous_eps_fn(net, schedule, p), x, schedule, 40,
                                                     divergence="exact")["log_likelihood"]
               for p, net in _gaussian_networks(schedule, VAR).items()}
    torch.testing.assert_close(results["v"], results["eps"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(results["x0"], results["eps"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_at_integer_times_the_conversion_is_split_predictions(prediction):
    """Where the table is exact (integer t) the continuous conversion is targets.split_prediction's, for an
    arbitrary output (not a consistent one); float32 inputs get float32 back."""
    schedule = NoiseSchedule.cosine(50)
    g = torch.Generator().manual_seed(1)
    x, output = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64), torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 17, 40, 49])
    eps_fn = ol.continuous_eps_fn(lambda xx, tt: output.to(xx.dtype), schedule, prediction)
    expected = targets.split_prediction(output, x, t, schedule, prediction)[0]
    torch.testing.assert_close(eps_fn(x, t.double()), expected, rtol=1e-10, atol=1e-10)
    assert eps_fn(x.float(), t.float()).dtype == torch.float32


def test_bad_prediction_and_an_x0_network_at_the_clean_level_raise_one_clear_error():
    schedule = NoiseSchedule.cosine(50)
    with pytest.raises(DiffvaeError, match="unknown prediction type"):
        ol.continuous_eps_fn(lambda x, t: x, schedule, "score")
    x0_fn = ol.continuous_eps_fn(lambda x, t: x, schedule, "x0")
    with pytest.raises(DiffvaeError, match="clean level"):
        x0_fn(torch.zeros(2, 1, 2, 2), torch.tensor([-1.0, 3.0]))


# ----- the DDPM spec -----------------------------------------------------------------------------

def _tiny_digits_ddpm(prediction: str) -> DDPM:
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(prediction=prediction, channels=16, channel_mult=(1, 2), timesteps=100, sample_steps=5,
                            invert_steps=5), (1, 8, 8))
    train = load_data("digits").train[:64]
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    for _ in range(5):
        loss, _ = model.training_loss(train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_the_spec_gives_a_v_network_its_ode_likelihood_and_leaves_an_eps_networks_unchanged():
    images = load_data("digits").test[:4]
    v_model = _tiny_digits_ddpm("v")
    v_parts = spec_of(v_model).ode_likelihood(v_model, images, 6, torch.Generator().manual_seed(0))
    assert set(v_parts) == {"ode_bpd", "ode_prior_bpd", "ode_log_det_bpd"}
    assert v_parts["ode_bpd"].shape == (4,) and bool(torch.isfinite(v_parts["ode_bpd"]).all())
    assert bool((v_parts["ode_bpd"] > 0).all())
    eps_model = _tiny_digits_ddpm("eps")
    eps_parts = spec_of(eps_model).ode_likelihood(eps_model, images, 6, torch.Generator().manual_seed(0))
    before = ol.probability_flow_bpd(eps_model.denoiser.eps_fn, to_signed(images, torch.float64), eps_model.denoiser.schedule,
                                     6, generator=torch.Generator().manual_seed(0))  # what the spec called before
    assert torch.equal(eps_parts["ode_bpd"], before["bpd"])
    assert torch.equal(eps_parts["ode_prior_bpd"], before["prior_bpd"])
    assert torch.equal(eps_parts["ode_log_det_bpd"], before["log_det_bpd"])
