"""Samplers and DDIM inversion against diffusers' schedulers, on the analytic Gaussian ε-model."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from diffvae.diffusion.samplers import ddim_invert, ddim_step, sample, slerp, timesteps
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.errors import DiffvaeError

DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
SIGMA = 0.5


def _run_diffusers(scheduler, eps_fn, x, generator=None, **step_kw):
    for t in scheduler.timesteps:
        eps = eps_fn(x, torch.full((x.shape[0],), int(t)))
        extra = {"generator": generator} if generator is not None else {}
        x = scheduler.step(eps, t, x, **extra, **step_kw).prev_sample
    return x


def _x_T(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [1, 7, 10, 50, 1000])
def test_timestep_grids_match_diffusers_defaults_and_spacings(steps):
    schedule = NoiseSchedule.linear(1000)
    for scheduler_class in (DDPMScheduler, DDIMScheduler):
        reference = scheduler_class(num_train_timesteps=1000)
        reference.set_timesteps(steps)
        assert timesteps(schedule, steps, "leading").tolist() == reference.timesteps.tolist()
    for spacing in ("trailing", "linspace"):
        reference = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        reference.set_timesteps(steps)
        assert timesteps(schedule, steps, spacing).tolist() == reference.timesteps.tolist()
    if steps < 1000:  # the exclusive linspace of 1000 steps would repeat timesteps
        reference = DPMSolverMultistepScheduler(num_train_timesteps=1000)
        reference.set_timesteps(steps)
        assert timesteps(schedule, steps, "linspace_exclusive").tolist() == reference.timesteps.tolist()


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_eta0_matches_diffusers(name, steps, optimal_eps):
    schedule = NoiseSchedule.from_name(name, 1000)
    eps_fn = optimal_eps(schedule, SIGMA)
    x_T = _x_T((64, 3, 4, 4))
    ours = sample(eps_fn, x_T.shape, schedule, "ddim", steps, x_T=x_T)
    reference = DDIMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name], clip_sample=False)
    reference.set_timesteps(steps)
    expected = _run_diffusers(reference, eps_fn, x_T.clone())
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert ours.std().item() > 0.3  # the samples are not collapsed


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_dpmpp_2m_matches_diffusers(name, optimal_eps):
    schedule = NoiseSchedule.from_name(name, 1000)
    eps_fn = optimal_eps(schedule, SIGMA)
    x_T = _x_T((64, 3, 4, 4), seed=1)
    ours = sample(eps_fn, x_T.shape, schedule, "dpm++2m", 20, x_T=x_T)
    reference = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name])
    reference.set_timesteps(20)
    if name == "cosine":
        # diffusers keeps σ_t = √((1 − ᾱ)/ᾱ) in float32; at the first step, t = 999, ᾱ ≈ 2e-9 and
        # that rounding alone moves its result by ≈ 4e-4. Give its (unchanged) update rule the
        # float64 σ table of the same schedule (checked against diffusers in test_schedule.py).
        alphas_cumprod = schedule.alphas_cumprod[reference.timesteps]
        reference.sigmas = torch.cat([((1 - alphas_cumprod) / alphas_cumprod).sqrt(), torch.zeros(1, dtype=torch.float64)])
    expected = _run_diffusers(reference, eps_fn, x_T.clone())
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # the float32 sampler agrees with itself in float64 far below that tolerance
    ours64 = sample(eps_fn, x_T.shape, schedule, "dpm++2m", 20, x_T=x_T, dtype=torch.float64)
    torch.testing.assert_close(ours.double(), ours64, atol=1e-5, rtol=0)


def _std_tolerance(n):
    return 4.0 / math.sqrt(2 * n)  # four standard errors of a sample std, relative


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 1000, 0.0), ("ddim", 1000, 1.0)])
def test_stochastic_samplers_reproduce_the_data_std(sampler, steps, eta, optimal_eps):
    """Gaussian data of std σ with its exact ε-predictor: 1000 ancestral steps give std σ."""
    schedule = NoiseSchedule.linear(1000)
    x = sample(optimal_eps(schedule, SIGMA), (2000, 4), schedule, sampler, steps, eta=eta,
               generator=torch.Generator().manual_seed(2))
    assert abs(x.std().item() / SIGMA - 1) < _std_tolerance(x.numel())
    assert abs(x.mean().item()) < 4 * SIGMA / math.sqrt(x.numel())


@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_matches_diffusers_path_for_path(steps, optimal_eps):
    """Same x_T and the same generator: the same noise is drawn in the same order."""
    schedule = NoiseSchedule.linear(1000)
    eps_fn = optimal_eps(schedule, SIGMA)
    x_T = _x_T((2000, 4), seed=3)
    ours = sample(eps_fn, x_T.shape, schedule, "ddpm", steps, x_T=x_T, generator=torch.Generator().manual_seed(4))
    reference = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    reference.set_timesteps(steps)
    expected = _run_diffusers(reference, eps_fn, x_T.clone(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_ddim_eta1_matches_diffusers_path_for_path(optimal_eps):
    schedule = NoiseSchedule.linear(1000)
    eps_fn = optimal_eps(schedule, SIGMA)
    x_T = _x_T((2000, 4), seed=5)
    ours = sample(eps_fn, x_T.shape, schedule, "ddim", 50, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(6))
    reference = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    reference.set_timesteps(50)
    expected = _run_diffusers(reference, eps_fn, x_T.clone(), torch.Generator().manual_seed(6), eta=1.0)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("rederive", [True, False])
def test_clip_x0_matches_diffusers_clipping(rederive):
    """With ``rederive_eps`` ε̂ comes from the clipped x̂₀ (GLIDE; diffusers' use_clipped_model_output)."""
    schedule = NoiseSchedule.linear(1000)
    eps_fn = lambda x, t: -x  # noqa: E731 — an x̂₀ far outside [-1, 1]
    x_T = _x_T((16, 5), seed=7)
    ours = sample(eps_fn, x_T.shape, schedule, "ddim", 10, x_T=x_T, clip_x0=True, rederive_eps=rederive)
    reference = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    reference.set_timesteps(10)
    expected = _run_diffusers(reference, eps_fn, x_T.clone(), use_clipped_model_output=rederive)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    other = sample(eps_fn, x_T.shape, schedule, "ddim", 10, x_T=x_T, clip_x0=True, rederive_eps=not rederive)
    assert (other - ours).abs().max() > 1e-2  # the two rules differ on this input
    assert ours.abs().max().item() <= 1.0 + 1e-6
    assert sample(eps_fn, x_T.shape, schedule, "ddim", 10, x_T=x_T).abs().max().item() > 1.5


def test_inversion_round_trip_is_no_worse_than_diffusers(optimal_eps):
    schedule = NoiseSchedule.linear(1000)
    eps_fn = optimal_eps(schedule, SIGMA)
    x0 = SIGMA * _x_T((256, 2, 2, 2), seed=8)
    steps = 20
    x_T = ddim_invert(eps_fn, x0, schedule, steps)
    ours_error = (sample(eps_fn, x0.shape, schedule, "ddim", steps, x_T=x_T) - x0).abs().max().item()

    inverse = DDIMInverseScheduler(num_train_timesteps=1000, clip_sample=False)
    inverse.set_timesteps(steps)
    reference_x_T = _run_diffusers(inverse, eps_fn, x0.clone())
    forward = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    forward.set_timesteps(steps)
    reference_error = (_run_diffusers(forward, eps_fn, reference_x_T.clone()) - x0).abs().max().item()

    torch.testing.assert_close(x_T, reference_x_T, atol=1e-4, rtol=0)
    assert ours_error <= reference_error * 1.01 + 1e-6
    assert x_T.std().item() > 0.8  # noise-like latents, not a copy of the data
    # fixed-point refinement solves each sampler step exactly: a much smaller round-trip error
    refined = ddim_invert(eps_fn, x0, schedule, steps, refine=4)
    refined_error = (sample(eps_fn, x0.shape, schedule, "ddim", steps, x_T=refined) - x0).abs().max().item()
    assert refined_error < 0.1 * ours_error


def test_ddim_step_up_inverts_the_step_down_given_the_same_eps():
    schedule = NoiseSchedule.cosine(1000)
    generator = torch.Generator().manual_seed(9)
    x, eps = torch.randn(8, 3, generator=generator, dtype=torch.float64), torch.randn(8, 3, generator=generator, dtype=torch.float64)
    for t, s in [(500, 480), (20, -1), (999, 0)]:
        down = ddim_step(x, eps, t, s, schedule)
        torch.testing.assert_close(ddim_step(down, eps, s, t, schedule), x, atol=1e-9, rtol=1e-9)
    with pytest.raises(DiffvaeError):
        ddim_step(x, eps, 10, 20, schedule, eta=1.0, noise=torch.zeros_like(x))


def test_slerp_rotates_in_the_plane_of_its_ends():
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    for w in [0.0, 0.25, 0.5, 1.0]:
        angle = w * math.pi / 2
        expected = torch.tensor([[math.cos(angle), math.sin(angle)]]) * torch.tensor([[1.0], [3.0]])
        torch.testing.assert_close(slerp(a, b, w), expected, atol=1e-6, rtol=0)
    weights = torch.tensor([0.25, 0.75])  # one weight per example
    expected = torch.stack([slerp(a[:1], b[:1], 0.25)[0], slerp(a[1:], b[1:], 0.75)[0]])
    torch.testing.assert_close(slerp(a, b, weights), expected)


def test_slerp_keeps_gaussian_norms_and_handles_parallel_vectors():
    generator = torch.Generator().manual_seed(10)
    a, b = torch.randn(4, 3, 16, 16, generator=generator), torch.randn(4, 3, 16, 16, generator=generator)
    middle = slerp(a, b, 0.5)
    assert middle.shape == a.shape
    # nearly orthogonal high-dimensional noises: the midpoint keeps their norm, a lerp shrinks it by ~√2
    ratio = middle.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert (ratio - 1).abs().max().item() < 0.05
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)


def test_sample_validates_its_input_and_honours_dtype_and_generator(optimal_eps):
    schedule = NoiseSchedule.linear(100)
    eps_fn = optimal_eps(schedule, SIGMA)
    with pytest.raises(DiffvaeError, match="unknown sampler"):
        sample(eps_fn, (2, 3), schedule, "euler")
    with pytest.raises(DiffvaeError, match="steps"):
        sample(eps_fn, (2, 3), schedule, "ddim", steps=101)
    with pytest.raises(DiffvaeError, match="shape"):
        sample(eps_fn, (2, 3), schedule, "ddim", 10, x_T=torch.zeros(3, 3))
    with pytest.raises(DiffvaeError, match="eta"):
        sample(eps_fn, (2, 3), schedule, "dpm++2m", 10, eta=0.5)
    with pytest.raises(DiffvaeError, match="spacing"):
        sample(eps_fn, (2, 3), schedule, "ddim", 10, spacing="karras")
    first = sample(eps_fn, (3, 2), schedule, "ddpm", generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    again = sample(eps_fn, (3, 2), schedule, "ddpm", generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert first.dtype == torch.float64
    torch.testing.assert_close(first, again, rtol=0, atol=0)


# ----------------------------------------------------------------------------- a new sampler is one function + one entry


def sample_euler(eps_fn, x, schedule, timestep_grid, progress=False, **_):
    """Euler on the probability-flow ODE in Karras et al.'s coordinates y = x/√ᾱ, σ = √((1 − ᾱ)/ᾱ), where
    dy/dσ = ε̂: y ← y + (σ_next − σ) ε̂, down the grid and then to the clean level (σ = 0)."""
    levels = timestep_grid.tolist() + [-1]
    for t, s in zip(levels[:-1], levels[1:]):
        a_t = schedule.alphas_cumprod[t].item()
        a_s = 1.0 if s < 0 else schedule.alphas_cumprod[s].item()
        sigma_t, sigma_s = math.sqrt((1 - a_t) / a_t), math.sqrt((1 - a_s) / a_s)
        eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x = (x / math.sqrt(a_t) + (sigma_s - sigma_t) * eps) * math.sqrt(a_s)
    return x


def test_a_sampler_added_to_the_table_is_used_by_sample_and_by_the_models(monkeypatch, optimal_eps):
    """Registering one function in ``SAMPLERS`` is all a new sampler needs: ``sample``, the model's sampling,
    its NFE and its checks take it. Euler in Karras' coordinates is DDIM with η = 0 (Song et al. 2021, §4.3;
    Karras et al. 2022, Tab. 1), an independent reference."""
    from diffvae.diffusion import samplers
    from diffvae.diffusion.model import DDPM, DDPMConfig

    monkeypatch.setitem(samplers.SAMPLERS, "euler", samplers.Sampler(sample_euler, "leading", 10, evaluations_per_step=1))
    schedule = NoiseSchedule.linear(1000)
    eps_fn = optimal_eps(schedule, SIGMA)
    shape = (64, 2)
    euler = sample(eps_fn, shape, schedule, "euler", generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ddim = sample(eps_fn, shape, schedule, "ddim", steps=10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(euler, ddim, atol=1e-10)
    with pytest.raises(DiffvaeError, match="eta applies to the ddim sampler only"):
        sample(eps_fn, shape, schedule, "euler", eta=0.5)
    model = DDPM(DDPMConfig(channels=8, channel_mult=(1,), num_res_blocks=1, attention_levels=(), timesteps=50), (1, 8, 8))
    assert model.nfe(sampler="euler", steps=7) == 7
    with torch.no_grad():
        images = model.sample(2, generator=torch.Generator().manual_seed(0), sampler="euler", steps=3)
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 8, 8)
    with pytest.raises(DiffvaeError, match="unknown sampler 'heun'"):
        model.nfe(sampler="heun", steps=3)
