"""Smoke test of the benchmarks: ``run_all.py --quick`` end to end in a subprocess (one thread, tiny
models), then ``bench_quality.py --run`` on the run it trained. Checks the report and JSON it writes and
the properties the tables rely on: equal FLOPs for the two UNets, equal sample counts for every quality
setting, training inside the budget, and that a smoke run never overwrites the committed RESULTS.md."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


# A backstop, not a speed check: over 10x the time a quick run takes on a busy 2-core machine.
BACKSTOP_S = 1800


def _run(args: list[str], cache: str, timeout: float = BACKSTOP_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIFFVAE_CACHE": cache, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, feature_cache):
    results = tmp_path_factory.mktemp("bench-results")
    run = _run([str(BENCHMARKS / "run_all.py"), "--quick", "--threads", "1", "--results-dir", str(results)], feature_cache)
    written = [line.split(" ", 2)[1] for line in run.stdout.splitlines() if line.startswith("wrote ")]
    return results, written


def _load(results: Path, name: str) -> dict:
    return json.loads((results / f"{name}_quick.json").read_text())


def test_report_has_every_section_and_its_commands(quick_run):
    results, written = quick_run
    report = (results / "RESULTS_quick.md").read_text()
    for heading in ("## Targets (issues 8 and 13)", "## Machine peak", "## Training throughput", "## Sampling speed",
                    "## Quality against NFE", "## Quality per CPU-minute", "## Time to quality against the peers",
                    "## Commands"):
        assert heading in report
    for script in ("bench_train.py", "bench_sample.py", "bench_quality.py", "bench_recipe.py", "bench_time_to_quality.py"):
        assert f"python benchmarks/{script} --quick" in report
    assert "AMD" in report or "Intel" in report or "cores" in report  # the machine is named
    # every file the smoke run wrote is in its results folder: never the committed RESULTS.md
    assert written and all(Path(path).resolve().is_relative_to(results.resolve()) for path in written), written


def test_train_compares_unets_of_equal_flops(quick_run):
    train = _load(quick_run[0], "bench_train")
    gflops = train["gflops_per_image"]
    assert abs(gflops["diffvae"] - gflops["diffusers"]) / gflops["diffusers"] < 0.05
    for precision, row in train["precisions"].items():
        peak = train["peaks"][precision]["peak"]
        for name in ("diffvae", "diffusers"):
            r = row[name]
            assert math.isclose(r["gflops_per_s"], r["images_per_s"] * gflops[name], rel_tol=1e-9)
            assert math.isclose(r["share_of_peak"], r["gflops_per_s"] / peak, rel_tol=1e-9)
        assert math.isclose(row["speedup"], row["diffvae"]["images_per_s"] / row["diffusers"]["images_per_s"], rel_tol=1e-9)
    assert set(train["families"]["bf16"]) == {"vae", "ldm autoencoder", "ldm diffusion", "ddpm"}


def test_sample_times_every_sampler_and_the_vae_decode(quick_run):
    sample = _load(quick_run[0], "bench_sample")
    for name in ("ddpm", "ldm"):
        rows = sample["samplers"][name]["rows"]
        assert {r["sampler"] for r in rows} == {"ddpm", "ddim", "dpm++2m"}
        assert all(r["nfe"] == r["steps"] and r["ms_per_sample"] > 0 for r in rows)
    precisions = {(r["batch"], r["precision"]) for r in sample["vae_decode"]["rows"]}
    assert {p for _, p in precisions} == {"fp32", "bf16"}


def test_quality_uses_the_same_samples_everywhere_and_reruns_on_a_given_run(quick_run, feature_cache, tmp_path):
    quality = _load(quick_run[0], "bench_quality")
    assert quality["samples"] >= 2 and all(math.isfinite(r["fid"]) and r["fid"] >= 0 for r in quality["rows"])
    assert len({(r["sampler"], r["steps"], r["seed"]) for r in quality["rows"]}) == len(quality["rows"])
    out = tmp_path / "again.json"
    _run([str(BENCHMARKS / "bench_quality.py"), "--quick", "--threads", "1", "--run", quality["run"], "--settings", "ddim:3",
          "--out", str(out)], feature_cache)
    again = json.loads(out.read_text())
    assert again["run"] == quality["run"] and "trained_here" not in again
    # same run, same seed, same sampler settings → the same samples, so the same FID
    default = again["model_config"]["sampler"]
    rerun = [r for r in again["rows"] if r["sampler"] == default]  # the default sampler at the next seed is always added
    first = [r for r in quality["rows"] if r["seed"] == quality["seed"] + 1]
    assert rerun and first and math.isclose(rerun[0]["fid"], first[0]["fid"], rel_tol=1e-9)


def test_quality_trains_its_own_model_without_a_run(feature_cache, tmp_path):
    out = tmp_path / "trained.json"
    _run([str(BENCHMARKS / "bench_quality.py"), "--quick", "--threads", "1", "--settings", "ddim:3", "--workdir", str(tmp_path),
          "--out", str(out)], feature_cache)
    trained = json.loads(out.read_text())
    assert trained["trained_here"] and Path(trained["run"]).parent == tmp_path and trained["trained_steps"] > 0


def test_recipes_train_within_the_same_budget(quick_run):
    recipe = _load(quick_run[0], "bench_recipe")
    budget = recipe["minutes"] * 60
    theirs = recipe["training"]["diffusers"]
    # content, not speed: both recipes trained and report their time against the same budget (how close
    # a step lands to the budget depends on the machine's load, so it is not asserted here)
    assert theirs["steps"] >= 1 and theirs["seconds"] > 0 and budget > 0
    assert recipe["training"]["diffvae"]["steps"] >= 1
    assert {r["recipe"] for r in recipe["rows"]} == {"diffvae", "diffusers"}


def test_time_to_quality_scores_every_contender_as_it_trains(quick_run):
    tq = _load(quick_run[0], "bench_time_to_quality")
    for name in ("diffvae vae", "diffvae ddpm", "diffvae ldm", "diffusers recipe"):
        points = tq["curves"][name]["points"]
        assert points, name
        assert [p["minutes"] for p in points] == sorted(p["minutes"] for p in points), name
        assert all(math.isfinite(p["fid"]) and p["fid"] >= 0 for p in points), name
        assert points[-1]["minutes"] <= tq["minutes"] * 1.5, name  # the last snapshot is the end of its budget
    assert "1×28×28" in tq["curves"]["pythae VAE"]["recipe"] or "not installed" in tq["curves"]["pythae VAE"]["recipe"]
