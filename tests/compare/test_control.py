"""`diffvae compare --conditional` (diffvae.compare.control): the controllability stage, its row, figure,
grids and claim — end to end on digits, and the pieces on hand-made results."""

import json
import time

import numpy as np
import pytest

from diffvae.cli import main
from diffvae.compare.decisions import Decider, decide_all
from diffvae.compare.control import (GUIDANCE_SWEEP, MIN_PER_CLASS, claim_follows_conditions, control_parts, control_sizes,
                                     guidance_rows)
from diffvae.compare.report import UNDECIDED, _render_cell, lookup
from diffvae.evaluate import best_guidance

BUDGET_MINUTES = 0.8  # two families on digits: every stage still runs (the slowest test after the main compare)


@pytest.fixture(scope="module")
def conditional_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("control") / "report"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "perf_counter", time.process_time)  # CPU clock: a busy machine cannot overrun it
        t0 = time.process_time()
        code = main(["compare", "--data", "digits", "--budget", str(BUDGET_MINUTES), "--families", "vae,ddpm",
                     "--conditional", "--out", str(out), "--quiet"])
        return out, code, time.process_time() - t0


def test_conditional_compare_writes_controllability_for_every_family(conditional_report):
    out, code, seconds = conditional_report
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["conditional"] is True and json.loads((out / "compare.json").read_text())["conditional"] is True
    assert all(v["status"] == "done" for v in results["stages"].values()), results["stages"]
    assert {"control:vae", "control:ddpm"} <= set(results["stages"])
    for fam in ("vae", "ddpm"):  # trained on the labels: config.json says so
        config = json.loads((out / "runs" / fam / "config.json").read_text())
        model = config.get("model", config)
        assert model["conditional"] is True and model["num_classes"] == 10, fam
        control = results["control"][fam]
        low, high = control["conditional_accuracy_ci95"]
        assert 0 <= low <= control["conditional_accuracy"] <= high <= 1
        assert control["conditional_accuracy_n"] == 10 * control["per_class_n"]
        assert (out / control["figures"]["classes"]).stat().st_size > 200
    sweep = results["control"]["ddpm"]["guidance_sweep"]
    assert [row["guidance"] for row in sweep] == list(GUIDANCE_SWEEP)
    assert results["control"]["ddpm"]["guidance"] == best_guidance(sweep)["best_guidance_accuracy"]
    assert results["control"]["vae"]["guidance"] is None and "guidance_sweep" not in results["control"]["vae"]
    # the evaluation stage left the conditional part to the control stage
    assert "guidance_sweep" not in results["families"]["ddpm"]
    assert seconds < BUDGET_MINUTES * 60 * 1.10 + 20


def test_conditional_report_shows_the_row_the_figure_the_grids_and_the_claim(conditional_report):
    out, _, _ = conditional_report
    results = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    measured = md.split("## Measured comparison")[1]  # the table's row, not the at-a-glance one
    row = next(line for line in measured.splitlines() if line.startswith("| Controllability |"))
    for fam in ("vae", "ddpm"):
        assert f"accuracy {lookup(results, f'control.{fam}.conditional_accuracy'):.3g}"[:13] in row
    assert "(one pass, no guidance)" in row and "at guidance w = " in row
    assert (out / "figures" / "guidance.png").stat().st_size > 1000 and "figures/guidance.png" in md
    assert "figures/classes_vae.png" in md and "figures/classes_ddpm.png" in md
    claim = next(c for c in results["claims"] if c["claim"].startswith("Conditioning"))
    assert claim["verdict"] in ("held", "did not hold", UNDECIDED) and "VAE" in claim["evidence"]
    html = (out / "report.html").read_text()
    assert "Controllability" in html and 'data-key="control.ddpm.conditional_accuracy"' in html


def test_resume_keeps_the_stored_conditional_setting(conditional_report, capsys):
    out, _, _ = conditional_report
    assert main(["compare", "--data", "digits", "--out", str(out), "--resume", "--quiet"]) == 0  # no flag: the stored one
    assert "control:ddpm] done earlier, reused" in capsys.readouterr().err


def test_resume_refuses_to_turn_conditioning_on(tmp_path, capsys, conditional_report):
    out, _, _ = conditional_report
    settings = json.loads((out / "compare.json").read_text())
    settings["conditional"] = False
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "compare.json").write_text(json.dumps(settings))
    before = sorted(p.name for p in copy.iterdir())
    assert main(["compare", "--data", "digits", "--out", str(copy), "--resume", "--conditional"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffvae: error:") and "conditional" in err and "Traceback" not in err
    assert sorted(p.name for p in copy.iterdir()) == before


def test_compare_json_without_the_field_reads_as_unconditional(tmp_path):
    from diffvae.compare.pipeline import read_settings

    settings = {"data": {"spec": "digits"}, "content_hash": "x", "families": ["vae"], "budget_minutes": 1.0,
                "split": None, "seed": 0}
    (tmp_path / "compare.json").write_text(json.dumps(settings))
    assert read_settings(tmp_path)["conditional"] is False
    (tmp_path / "compare.json").write_text(json.dumps({**settings, "conditional": "yes"}))
    with pytest.raises(Exception, match="conditional"):
        read_settings(tmp_path)


def test_conditional_compare_refuses_unlabelled_data_before_writing(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, size=(60, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", x=images)
    out = tmp_path / "report"
    assert main(["compare", "--data", f"npz:{tmp_path / 'x.npz'}", "--conditional", "--out", str(out), "--budget", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffvae: error: --conditional needs labelled data") and err.count("\n") == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- the pieces


class _Spec:
    def __init__(self, iterative, unit=1e-3):
        self.iterative, self.unit = iterative, unit

    def unit_cost_seconds(self, model):
        return self.unit


class _Model:
    def nfe(self):
        return 10


@pytest.mark.parametrize("seconds", [0.5, 5.0, 60.0, 1e5])
def test_control_sizes_fit_the_time_between_their_floors_and_caps(seconds):
    k, n_max = 10, 200
    n, per_class = control_sizes(_Spec(True), _Model(), seconds, k, n_max)
    assert n % k == 0 and 2 * k <= n <= n_max and MIN_PER_CLASS <= per_class <= n_max // k
    evaluations = 10 * (n * sum(guidance_rows(w) for w in GUIDANCE_SWEEP) + 2 * k * per_class)
    floors = 10 * (2 * k * sum(guidance_rows(w) for w in GUIDANCE_SWEEP) + 2 * k * MIN_PER_CLASS)
    assert evaluations * 1e-3 <= max(seconds, floors * 1e-3) + 1e-9  # within the time unless the floors exceed it
    if seconds == 1e5:
        assert (n, per_class) == (n_max, n_max // k)


def test_control_sizes_one_pass_family_has_no_sweep():
    assert control_sizes(_Spec(False), _Model(), 0.01, 10, 200) == (0, 20)


def test_guidance_rows_count_both_branches_only_between_zero_and_one():
    assert [guidance_rows(w) for w in (None, 0.0, 1.0, 0.5, 2.0)] == [1, 1, 1, 2, 2]


def test_best_guidance_breaks_accuracy_ties_by_fid():
    rows = [{"guidance": 0.0, "accuracy": 0.2, "fid": 90.0}, {"guidance": 1.0, "accuracy": 0.9, "fid": 40.0},
            {"guidance": 2.0, "accuracy": 1.0, "fid": 30.0}, {"guidance": 5.0, "accuracy": 1.0, "fid": 60.0},
            {"guidance": 3.0, "accuracy": 0.95, "fid": float("nan")}]
    assert best_guidance(rows) == {"best_guidance_accuracy": 2.0, "best_guidance_fid": 2.0}
    rows[3]["accuracy"] = 1.0 + 1e-9
    assert best_guidance(rows)["best_guidance_accuracy"] == 5.0


def _results(vae_ci, ddpm_ci, ddpm_w=3.0):
    def control(ci, w):
        return {"conditional": True, "conditional_accuracy": sum(ci) / 2, "conditional_accuracy_ci95": list(ci),
                "conditional_accuracy_n": 100, "guidance": w}
    return {"conditional": True, "families_requested": ["vae", "ddpm"],
            "control": {"vae": control(vae_ci, None), "ddpm": control(ddpm_ci, ddpm_w)}}


@pytest.mark.parametrize("vae_ci, ddpm_ci, verdict", [((0.3, 0.5), (0.8, 0.95), "held"), ((0.8, 0.95), (0.3, 0.5), "did not hold"),
                                                      ((0.5, 0.8), (0.6, 0.9), UNDECIDED)])
def test_claim_follows_conditions_decides_on_the_test_of_two_proportions(vae_ci, ddpm_ci, verdict):
    results = _results(vae_ci, ddpm_ci)
    decider = Decider(results)
    text, got, evidence = claim_follows_conditions(decider, "vae", ("ddpm",))
    assert got == verdict and "at w = 3" in evidence
    assert ("would decide it" in evidence) == (verdict == UNDECIDED)
    (entry,) = decider.entries  # the test behind the verdict, recorded for results["comparisons"]
    assert entry["question"] == f"claim:{text}" and (entry["a"], entry["b"]) == ("ddpm", "vae")
    assert entry["difference"] == pytest.approx(sum(ddpm_ci) / 2 - sum(vae_ci) / 2)
    assert {"a": "held", "b": "did not hold", None: UNDECIDED}[entry["decided"]] == verdict


def test_controllability_is_a_best_use_of_a_conditional_compare():
    results = _results((0.3, 0.5), (0.8, 0.95))
    best = decide_all(results).best_entries
    assert best["controllability"]["family"] == "ddpm" and best["controllability"]["decided"]
    assert "controllability" not in decide_all({**results, "conditional": False}).best_entries


def test_claim_follows_conditions_needs_both_sides():
    results = _results((0.3, 0.5), (0.8, 0.9))
    del results["control"]["vae"]
    assert claim_follows_conditions(Decider(results), "vae", ("ddpm",)) is None
    assert claim_follows_conditions(Decider(results), None, ("ddpm",)) is None


def test_control_cell_says_what_was_measured():
    results = _results((0.3, 0.5), (0.8, 0.9), ddpm_w=3.0)
    results["control"]["ddpm"].update(w1={"accuracy": 0.7, "fid": 40.0, "recall": 0.6, "ms_per_sample": 10.0},
                                      controllability_fid=55.0, controllability_recall=0.4, controllability_ms=20.0)
    cell = _render_cell(control_parts(results, "ddpm"), results, as_html=False)
    assert cell == ("accuracy 0.85 [0.8, 0.9] at guidance w = 3 (w = 1: 0.7; FID 40 → 55, recall 0.6 → 0.4, "
                    "ms/sample 10 → 20)")
    assert _render_cell(control_parts(results, "vae"), results, False) == "accuracy 0.4 [0.3, 0.5] (one pass, no guidance)"
    results["stages"] = {"control:ldm": {"status": "failed", "error": "boom"}}
    assert _render_cell(control_parts(results, "ldm"), results, False) == "control:ldm failed: boom"
    results["control"]["flow"] = {"conditional": False}
    assert "without labels" in _render_cell(control_parts(results, "flow"), results, False)
