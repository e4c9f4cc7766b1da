"""compare's evaluation sizing (diffvae.compare.stages): one sample count for every family, shrunk until the
most expensive family's smallest evaluation fits its time; the rest sized per family down to the floors."""

from types import SimpleNamespace

import pytest

from diffvae.compare import stages
from diffvae.compare.stages import (EVAL_FLOORS, EVAL_MINIMA, FEWEST_MIDPOINTS, MIN_EVAL_SAMPLES, MIN_MIDPOINTS, compare_samples,
                                    evaluation_sizes, sized_eval_config)


class _Spec:
    """Evaluation cost: ``per_sample`` network evaluations per sample and midpoint, plus the probe's images."""

    def __init__(self, per_sample: float, unit: float = 1e-3, cheap: bool = False):
        self.per_sample, self.unit, self.cheap, self.unit_calls = per_sample, unit, cheap, 0

    def evaluation_cost(self, model, c):
        if self.cheap:
            return None
        return self.per_sample * (c.n_samples + 3 * c.midpoints + c.probe_train + c.probe_test + c.bound_n + c.roundtrip_n)

    def unit_cost_seconds(self, model):
        self.unit_calls += 1
        return self.unit

    def eval_main_share(self):
        return 0.6


def _context(tmp_path, specs, budget=15.0):
    for fam in specs:
        (tmp_path / "runs" / fam).mkdir(parents=True)
        (tmp_path / "runs" / fam / "config.json").write_text("{}")
    return SimpleNamespace(out=tmp_path, config=SimpleNamespace(budget_minutes=budget, seed=0, conditional=False))


@pytest.fixture
def fake_families(monkeypatch):
    specs = {}
    monkeypatch.setattr(stages, "load", lambda run_dir, device="cpu": object())
    monkeypatch.setattr(stages, "get_family", lambda fam: SimpleNamespace(spec=lambda: specs[fam]))
    return specs


def test_cheap_families_keep_the_budgets_sample_count(tmp_path, fake_families):
    fake_families.update(vae=_Spec(1, cheap=True), ddpm=_Spec(1.0))
    ctx = _context(tmp_path, fake_families)
    assert evaluation_sizes(("vae", "ddpm"), ctx, {"vae": 60.0, "ddpm": 60.0}) == (compare_samples(15.0), 100) == (200, 100)


def _floor_cost(spec, n, pairs):
    return spec.evaluation_cost(None, SimpleNamespace(n_samples=n, midpoints=pairs, **EVAL_FLOORS)) * spec.unit


@pytest.mark.parametrize("seconds", [2.0, 20.0, 30.0, 200.0])
def test_pairs_shrink_first_then_samples_until_the_most_expensive_family_fits(tmp_path, fake_families, seconds):
    fake_families.update(vae=_Spec(1, cheap=True), ddpm=_Spec(1.0), flow=_Spec(40.0))
    ctx = _context(tmp_path, fake_families)
    n, pairs = evaluation_sizes(("vae", "ddpm", "flow"), ctx, {f: seconds for f in fake_families})
    assert MIN_EVAL_SAMPLES <= n <= 200 and FEWEST_MIDPOINTS <= pairs <= n // 2
    assert n == 200 or pairs <= MIN_MIDPOINTS  # the samples shrink only once the pairs are at their floor
    assert pairs >= MIN_MIDPOINTS or n == MIN_EVAL_SAMPLES  # and the pairs go below it only once the samples are at theirs
    spec = fake_families["flow"]
    limit = seconds * spec.eval_main_share()
    assert _floor_cost(spec, n, pairs) <= limit or (n, pairs) == (MIN_EVAL_SAMPLES, FEWEST_MIDPOINTS)  # fits, or at the end
    if pairs < 100 and n == 200:
        assert _floor_cost(spec, n, int(pairs / 0.7) + 1) > limit * 0.7  # not shrunk far past what fits
    assert fake_families["ddpm"].unit_calls <= 1 and fake_families["flow"].unit_calls <= 1  # measured once per family


def test_families_not_trained_are_skipped(tmp_path, fake_families):
    fake_families.update(ddpm=_Spec(1000.0))
    ctx = _context(tmp_path, {})
    assert evaluation_sizes(("ddpm",), ctx, {"ddpm": 1.0}) == (200, 100)


def test_sized_config_keeps_the_shared_count_and_stays_at_the_floors_while_they_fit(fake_families):
    fake_families.update(flow=_Spec(50.0))  # the floors at n = 70, 35 pairs: 50 × 349 evaluations × 1 ms = 17.45 s
    at_floors = sized_eval_config(None, "flow", 40.0, seed=3, n_samples=70)
    assert at_floors.n_samples == 70 and at_floors.midpoints == 35 and at_floors.seed == 3
    assert sized_eval_config(None, "flow", 40.0, seed=3, n_samples=70, midpoints=25).midpoints == 25
    assert all(getattr(at_floors, name) >= floor for name, floor in EVAL_FLOORS.items())
    assert any(getattr(at_floors, name) == floor for name, floor in EVAL_FLOORS.items())  # some at the floor, none below
    roomy = sized_eval_config(None, "flow", 1e9, seed=3, n_samples=70)
    assert roomy.bound_n > EVAL_FLOORS["bound_n"] and roomy.probe_train > EVAL_FLOORS["probe_train"]


@pytest.mark.parametrize("seconds", [0.01, 1.0, 20.0])
def test_below_the_floors_when_they_do_not_fit_never_below_the_minima(fake_families, seconds):
    """Issue 27: on a busy machine the floors alone took 146 s of a 12 s share; the sizes go on down to the
    minima, shrinking together with the time there is, and keep the shared counts."""
    spec = _Spec(50.0)
    fake_families.update(flow=spec)
    sized = sized_eval_config(None, "flow", seconds, seed=3, n_samples=70)
    assert (sized.n_samples, sized.midpoints) == (70, 35)
    assert all(EVAL_MINIMA[name] <= getattr(sized, name) <= EVAL_FLOORS[name] for name in EVAL_FLOORS)
    floors_cost = spec.evaluation_cost(None, SimpleNamespace(n_samples=70, midpoints=35, **EVAL_FLOORS))
    assert spec.evaluation_cost(None, sized) < floors_cost
    if seconds < 1.0:
        assert all(getattr(sized, name) == low for name, low in EVAL_MINIMA.items())
    else:  # part of the way: the probe keeps its share of the time there is (20 s of the 34.9 s the floors need)
        expected = max(EVAL_MINIMA["probe_train"], int(EVAL_FLOORS["probe_train"] * 0.5 * seconds / (floors_cost * spec.unit)))
        assert sized.probe_train == expected


def test_the_sampler_sweep_sizes_each_setting_with_the_cost_it_just_measured(tmp_path, monkeypatch):
    """Issue 27: the sweep predicted every setting from one cost measured before it (unit_cost_seconds); a machine
    that got 10× busier ran all three and took twice its time. On a simulated clock (no real time measured)."""
    import torch

    clock = SimpleNamespace(now=0.0)
    per_evaluation = 0.01  # seconds per image per network evaluation now; the stale measurement said 0.001

    class Model:
        def nfe(self, sampler=None, steps=None):
            return steps

        def sample(self, n, generator=None, sampler=None, steps=None):
            clock.now += per_evaluation * n * steps
            return torch.randint(0, 256, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)

    spec = SimpleNamespace(unit_cost_seconds=lambda model: 0.001, sweep_settings=lambda model: [("ddim", 100), ("ddim", 200), ("ddim", 500)])
    monkeypatch.setattr(stages, "get_family", lambda family: SimpleNamespace(spec=lambda: spec))
    monkeypatch.setattr(stages, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(stages, "sampling_precision", lambda model: __import__("contextlib").nullcontext())
    features = SimpleNamespace(features=lambda images: torch.as_tensor(images).flatten(1).double().numpy())
    dataset = SimpleNamespace(test=torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8))
    (tmp_path / "figures").mkdir()
    rows = stages.sampler_sweep(Model(), "ddpm", dataset, features, tmp_path, seconds=40.0, seed=0, n_samples=10)
    assert [r["steps"] for r in rows] == [100, 200]  # 10 s + 20 s; the 500-step setting (50 s) no longer fits
    assert clock.now <= 40.0
    for row in rows:  # FID@n with its interval around it, so the matched-cost claim can decide on sweep points
        assert row["fid_ci95"][0] <= row["fid"] <= row["fid_ci95"][1] and row["fid_ci95"][0] < row["fid_ci95"][1]
