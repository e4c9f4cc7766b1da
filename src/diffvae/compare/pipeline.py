"""``diffvae compare``: train every family under one wall-clock budget, evaluate them with the one
evaluation, and write the report.

The budget covers everything (training, the posterior-collapse study, evaluation, figures). It is
split up front — the split is printed and stored in ``results.json`` — and each stage gets its share
of what is *left* when it starts, so an early overrun is absorbed by the later stages and the whole
run stays within about ±10% of the budget.

``DIR/stages.json`` records each finished or failed stage; ``--resume`` skips finished stages and
retries failed ones. A failed or refused stage is reported in the report, never silently dropped.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from diffvae.errors import DiffvaeError
from diffvae.runs import atomic_write_text, read_json, write_json

FAMILY_ORDER = ("vae", "ddpm", "ldm")

# Shares of the budget. Training shares are per family; evaluation is shared among the families run.
TRAIN_SHARE = {"vae": 0.10, "ddpm": 0.28, "ldm": 0.24}
COLLAPSE_SHARE = 0.08  # two VAEs with a PixelCNN decoder: without and with free bits
EVAL_SHARE = 0.30  # evaluation, sampler sweep, figures and report


@dataclass
class ComparePlan:
    data: str
    budget_minutes: float
    families: tuple[str, ...]
    seconds: dict[str, float]  # planned seconds per stage

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.seconds.items())
        return f"budget {self.budget_minutes:g} min on {self.data}: {parts}"


def plan(data: str, budget_minutes: float, families: tuple[str, ...]) -> ComparePlan:
    """Split the budget among the stages in proportion to their shares."""
    shares: dict[str, float] = {}
    for fam in families:
        shares[f"train:{fam}"] = TRAIN_SHARE[fam]
    if "vae" in families:
        shares["collapse"] = COLLAPSE_SHARE
    for fam in families:
        shares[f"eval:{fam}"] = EVAL_SHARE / len(families)
    total = sum(shares.values())
    seconds = {k: budget_minutes * 60.0 * v / total for k, v in shares.items()}
    return ComparePlan(data, budget_minutes, families, seconds)


class Stages:
    """``stages.json``: the status of every stage, written atomically after each one."""

    def __init__(self, out: Path, resume: bool):
        self.path = out / "stages.json"
        self.status: dict[str, dict[str, Any]] = read_json(self.path) if resume and self.path.exists() else {}

    def done(self, name: str) -> bool:
        return self.status.get(name, {}).get("status") == "done"

    def record(self, name: str, status: str, seconds: float, **extra) -> None:
        self.status[name] = {"status": status, "seconds": round(seconds, 2), **extra}
        write_json(self.path, self.status)


def run_compare(args) -> dict[str, Any]:
    """The CLI entry point (see the module docstring)."""
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    unknown = [f for f in families if f not in FAMILY_ORDER]
    if not families or unknown:
        raise DiffvaeError(f"--families takes a comma-separated subset of {','.join(FAMILY_ORDER)}, got {args.families!r}")
    if len(set(families)) != len(families):
        raise DiffvaeError(f"--families lists a family twice: {args.families!r}")
    if not args.budget > 0:
        raise DiffvaeError(f"--budget must be a positive number of minutes, got {args.budget}")
    families = tuple(f for f in FAMILY_ORDER if f in families)
    out = Path(args.out)
    from diffvae.api import DataConfig

    data_config = DataConfig(spec=args.data, size=args.size, key=args.key, binarize=args.binarize, limit=args.limit)
    dataset = data_config.load()  # fails early, before anything is written, on bad data
    _prepare_out(out, resume=args.resume, force=args.force)
    the_plan = plan(args.data, args.budget, families)
    log = _log
    log(f"diffvae compare: {the_plan.describe()}")
    stages = Stages(out, args.resume)
    start = time.perf_counter()
    budget_s = args.budget * 60.0
    results: dict[str, Any] = _previous_results(out) if args.resume else {}
    results.update({
        "data": dataset.name, "image_shape": list(dataset.image_shape), "train_size": int(dataset.train.shape[0]),
        "test_size": int(dataset.test.shape[0]), "budget_minutes": args.budget, "seed": args.seed,
        "plan_seconds": the_plan.seconds, "families_requested": list(families),
    })
    results.setdefault("families", {})
    results.setdefault("training", {})

    def allot(stage: str) -> float:
        """This stage's share of what is left of the budget."""
        remaining_stages = [s for s in the_plan.seconds if not stages.done(s)]
        left = budget_s - (time.perf_counter() - start) - _reserve(budget_s)
        share = the_plan.seconds[stage] / max(1e-9, sum(the_plan.seconds[s] for s in remaining_stages))
        return max(5.0, left * share)

    def run_stage(stage: str, fn: Callable[[float], Any]) -> Any:
        if stages.done(stage):
            log(f"[{stage}] done earlier, reused")
            return None
        seconds = allot(stage)
        eta = time.strftime("%H:%M:%S", time.localtime(time.time() + seconds))
        log(f"[{stage}] {seconds / 60:.1f} min (until about {eta}) — {_elapsed(start)} of {args.budget:g} min used")
        t0 = time.perf_counter()
        try:
            value = fn(seconds)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a failed stage is reported, not dropped, and the others go on
            message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            if not isinstance(e, DiffvaeError):
                message = f"{type(e).__name__}: {message}"
                (out / "errors.log").open("a").write(f"[{stage}]\n{traceback.format_exc()}\n")
            stages.record(stage, "failed", time.perf_counter() - t0, error=message)
            log(f"[{stage}] FAILED: {message}")
            return None
        stages.record(stage, "done", time.perf_counter() - t0)
        return value

    from diffvae.compare import stages as st

    for fam in families:
        run_stage(f"train:{fam}", lambda s, fam=fam: st.train_family(fam, data_config, dataset, out, s, args, results))
    if "vae" in families:
        run_stage("collapse", lambda s: st.collapse_study(data_config, dataset, out, s, args, results))
    extractor_box: dict[str, Any] = {}
    for fam in families:
        run_stage(f"eval:{fam}", lambda s, fam=fam: st.evaluate_family(fam, dataset, out, s, args, results, extractor_box))
        _write_results(out, results)  # partial results survive an interruption
    results["stages"] = stages.status
    results["elapsed_minutes"] = (time.perf_counter() - start) / 60.0  # the report itself takes seconds
    from diffvae.compare.report import write_report

    write_report(out, results)
    _write_results(out, results)
    log(f"diffvae compare: wrote {out / 'report.html'}, {out / 'report.md'}, {out / 'results.json'} "
        f"in {results['elapsed_minutes']:.1f} min")
    return results


def _reserve(budget_s: float) -> float:
    """Seconds kept back for figures and the report."""
    return min(30.0, 0.04 * budget_s)


def _prepare_out(out: Path, resume: bool, force: bool) -> None:
    if resume and force:
        raise DiffvaeError("--resume and --force contradict each other")
    if out.exists() and not out.is_dir():
        raise DiffvaeError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        is_report = (out / "stages.json").exists() or (out / "results.json").exists()
        if resume:
            if not is_report:
                raise DiffvaeError(f"--resume: {out} is not a diffvae compare folder")
            return
        if not force:
            raise DiffvaeError(f"--out {out} already exists; use --resume to reuse its finished stages or --force to replace it")
        if not is_report:
            raise DiffvaeError(f"--force refuses to replace {out}: it is not a diffvae compare folder")
        import shutil

        shutil.rmtree(out)
    elif resume:
        raise DiffvaeError(f"--resume: {out} does not exist")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
        (out / "runs").mkdir(exist_ok=True)
    except OSError as e:
        raise DiffvaeError(f"cannot create {out}: {e.strerror}") from None


def _previous_results(out: Path) -> dict[str, Any]:
    path = out / "results.json"
    return read_json(path) if path.exists() else {}


def _write_results(out: Path, results: dict[str, Any]) -> None:
    from diffvae.evaluate import _jsonable

    atomic_write_text(out / "results.json", json.dumps(_jsonable(results), indent=2, sort_keys=True) + "\n")


def _elapsed(start: float) -> str:
    return f"{(time.perf_counter() - start) / 60:.1f}"


def _log(message: str) -> None:
    """Stage messages always go to stderr (``--quiet`` silences the progress bars only)."""
    print(message, file=sys.stderr, flush=True)
