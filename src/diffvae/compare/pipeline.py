"""``diffvae compare``: train every family under one wall-clock budget, evaluate them with the one
evaluation, and write the report.

The budget covers everything (training, the families' own stages such as the VAE's posterior-collapse
study, evaluation, the learning curves of :mod:`diffvae.compare.curves`, figures). Every family gets
its spec's training share (equal by default) unless ``--split`` sets relative times. The families are
every registered one (:mod:`diffvae.families`) unless ``--families`` picks some; what differs between
them comes from their spec (:class:`diffvae.contract.FamilySpec`). Each stage returns its result and
the pipeline stores it in ``results.json``. The budget is split up front — the split is printed and stored in
``results.json`` — and each stage gets its share of what is *left* when it starts, so an early
overrun is absorbed by the later stages and the whole run stays within about ±10% of the budget.

``DIR/stages.json`` records each finished or failed stage; ``--resume`` skips finished stages and
retries failed ones. A failed or refused stage is reported in the report, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from diffvae.compare import stages as st
from diffvae.compare.control import check_conditional, control_family
from diffvae.compare.forecasts import default_target, forecast_results, parse_target
from diffvae.compare.curves import learning_curves
from diffvae.compare.report import write_report
from diffvae.compare.stages import StageInputs
from diffvae.configs import DataFields
from diffvae.data import DataConfig
from diffvae.device import busy_cores_elsewhere, resolve_device, threads_beside
from diffvae.errors import DiffvaeError, WriteError
from diffvae.evaluate import _jsonable
from diffvae.families import FAMILIES, get_family
from diffvae.marker import check_replaceable
from diffvae.metrics.features import get_feature_extractor
from diffvae.runs import LOCK, WriterLock, atomic_write_text, read_json, write_json, write_marker
from diffvae.schema import check_compare_settings, check_stages
from diffvae.compare.refine import MAX_LOOKS, refine

SETTINGS = "compare.json"  # data spec + content hash, families, budget, split, seed: what --resume must match
DEFAULT_BUDGET_MINUTES = 15.0

# Shares of the budget. Training is split among the families run (by their spec's train_share unless
# --split says otherwise), evaluation equally; the learning curves evaluate every family's snapshots;
# a family's own stages (spec.extra_stages, e.g. the VAE's posterior-collapse study) bring their share.
# Training has the most: the diffusion families' default samplers (20 network evaluations for pixel diffusion, a
# small latent for latent diffusion) made the evaluation and the curves' snapshots cheap.
TRAIN_SHARE = 0.62
EVAL_SHARE = 0.22  # evaluation, sampler sweep, figures and report
CURVES_SHARE = 0.08  # the learning curves (diffvae.compare.curves)
REFINE_FRACTION = 0.25  # of the evaluation share: the refine stage (more held-out images / samples for open verdicts)
CONTROL_SHARE = 0.12  # --conditional: the controllability stages (diffvae.compare.control), shared by the families


@dataclass(kw_only=True)
class CompareConfig(DataFields):
    """Everything ``diffvae compare`` is asked: the data (:class:`diffvae.configs.DataFields`: ``spec`` and its
    options, declared once), the budget, the families and their split, the seed and device, and how to treat an
    existing ``out``. None = the stored value with ``resume``, else the default (:meth:`resolved`)."""

    out: str
    budget_minutes: float | None = None
    families: tuple[str, ...] | str | None = None  # a tuple, or the text of --families
    split: dict[str, float] | str | None = None  # relative training times, or the text of --split
    seed: int | None = None
    conditional: bool | None = None  # train on the labels and measure controllability (--conditional)
    device: str = "auto"
    resume: bool = False
    force: bool = False
    quiet: bool = False
    forecast: str | None = None  # --forecast MINUTES|<N>gflop (default: 10× the budget; diffvae.compare.forecasts)
    recipes_at_forecast: bool | None = None  # train the recipes recipes.py picks at the forecast's budget (--recipes-at-forecast)

    @property
    def data(self) -> str:
        """The data spec as given (``--data``)."""
        return self.spec

    def data_config(self) -> DataConfig:
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataFields)})

    def resolved(self, stored: dict[str, Any] | None) -> "CompareConfig":
        """Families, split, budget and seed: each given, else stored (``resume``), else the default."""
        if self.families is not None:
            families = parse_families(self.families) if isinstance(self.families, str) else parse_families(",".join(self.families))
        else:
            families = tuple(stored["families"]) if stored else family_order()
        if self.split is not None:
            split = parse_split(self.split, families) if isinstance(self.split, str) else dict(self.split)
        else:
            split = stored["split"] if stored else None
        budget = self.budget_minutes if self.budget_minutes is not None else stored["budget_minutes"] if stored else DEFAULT_BUDGET_MINUTES
        seed = self.seed if self.seed is not None else stored["seed"] if stored else 0
        conditional = self.conditional if self.conditional is not None else bool(stored.get("conditional", False)) if stored else False
        at_forecast = self.recipes_at_forecast if self.recipes_at_forecast is not None else \
            bool(stored.get("recipes_at_forecast", False)) if stored else False
        return dataclasses.replace(self, families=families, split=split, budget_minutes=budget, seed=seed, conditional=conditional,
                                   recipes_at_forecast=at_forecast)


def family_order() -> tuple[str, ...]:
    """Every registered family, in registry order: compare's default and its column order."""
    return tuple(FAMILIES)


@dataclass
class ComparePlan:
    data: str
    budget_minutes: float
    families: tuple[str, ...]
    seconds: dict[str, float]  # planned seconds per stage

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.seconds.items())
        return f"budget {self.budget_minutes:g} min on {self.data}: {parts}"


def plan(data: str, budget_minutes: float, families: tuple[str, ...], split: dict[str, float] | None = None,
         conditional: bool = False) -> ComparePlan:
    """Split the budget among the stages in proportion to their shares; the training share among the
    families in proportion to ``split`` (relative weights; each family's ``spec.train_share`` when None);
    with ``conditional`` a controllability stage per family (equal shares of ``CONTROL_SHARE``)."""
    specs = {fam: get_family(fam).spec() for fam in families}
    weights = split or {fam: specs[fam].train_share for fam in families}
    shares: dict[str, float] = {}
    for fam in families:
        shares[f"train:{fam}"] = TRAIN_SHARE * weights[fam] / sum(weights[f] for f in families)
    for fam in families:
        for stage in specs[fam].extra_stages:
            shares[stage.name] = stage.share
    shares["curves"] = CURVES_SHARE
    for fam in families:
        shares[f"eval:{fam}"] = EVAL_SHARE * (1 - REFINE_FRACTION) / len(families)
    if len(families) > 1:  # the rest of the evaluation share: more evidence where a verdict is open (diffvae.compare.refine)
        shares["refine"] = EVAL_SHARE * REFINE_FRACTION
    for fam in families if conditional else ():
        shares[f"control:{fam}"] = CONTROL_SHARE / len(families)
    total = sum(shares.values())
    seconds = {k: budget_minutes * 60.0 * v / total for k, v in shares.items()}
    return ComparePlan(data, budget_minutes, families, seconds)


def parse_split(text: str | None, families: tuple[str, ...]) -> dict[str, float] | None:
    """``--split vae=1,ddpm=2,ldm=2``: relative training time of each family run (None: equal).

    Every family of ``--families`` appears exactly once with a positive finite weight."""
    if text is None:
        return None
    example = ",".join(f"{f}=1" for f in families)
    usage = f"--split takes FAMILY=WEIGHT for each of {','.join(families)} (e.g. {example}), got {text!r}"
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            raise DiffvaeError(usage) from None
        if not sep or name not in families or name in weights or not (weight > 0 and math.isfinite(weight)):
            raise DiffvaeError(usage)
        weights[name] = weight
    if set(weights) != set(families):
        raise DiffvaeError(usage)
    return weights


class Stages:
    """``stages.json``: the status of every stage, written atomically after each one."""

    def __init__(self, out: Path, resume: bool):
        self.path = out / "stages.json"
        self.status: dict[str, dict[str, Any]] = read_json(self.path) if resume and self.path.exists() else {}
        check_stages(self.status, self.path)

    def done(self, name: str) -> bool:
        return self.status.get(name, {}).get("status") == "done"

    def record(self, name: str, status: str, seconds: float, **extra) -> None:
        self.status[name] = {"status": status, "seconds": round(seconds, 2), **extra}
        write_json(self.path, self.status)


def run_compare(config: CompareConfig) -> dict[str, Any]:
    """The CLI entry point (see the module docstring). Every input is checked first (with ``resume``,
    against the settings stored in ``compare.json``), then the folder is created or reopened under its
    writer lock, then the stages run."""
    if config.resume and config.force:
        raise DiffvaeError("--resume reuses the finished stages and --force replaces the folder: pass one of them")
    out = Path(config.out)
    _check_device(config.device)
    _check_out(out, resume=config.resume, force=config.force)
    stored = read_settings(out) if config.resume else None
    config = config.resolved(stored)
    recipe_multiple(config)  # a bad --forecast is refused before anything is written
    data_config = config.data_config()
    dataset = data_config.load()  # fails early, before anything is written, on bad data
    if config.conditional:
        check_conditional(dataset, config.families)
    settings = {"data": dataclasses.asdict(data_config), "content_hash": dataset.content_hash(),
                "families": list(config.families), "budget_minutes": config.budget_minutes, "split": config.split,
                "seed": config.seed, "conditional": config.conditional, "recipes_at_forecast": config.recipes_at_forecast}
    if stored is not None:
        _check_same_settings(stored, settings, out)
    with _open_out(out, resume=config.resume, force=config.force):
        if stored is None:
            write_json(out / SETTINGS, settings)
        threads = torch.get_num_threads()
        try:
            return _run_stages(StageContext(config, data_config, dataset, out))
        finally:
            torch.set_num_threads(threads)  # a stage may have run on fewer (StageRunner.fit_threads)


def parse_families(text: str) -> tuple[str, ...]:
    """``--families ldm,vae`` → ('vae', 'ldm'): registered families, in registry order."""
    order = family_order()
    families = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in families if f not in order]
    if not families or unknown:
        raise DiffvaeError(f"--families takes a comma-separated subset of {','.join(order)}, got {text!r}")
    if len(set(families)) != len(families):
        raise DiffvaeError(f"--families lists a family twice: {text!r}")
    return tuple(f for f in order if f in families)


def read_settings(out: Path) -> dict[str, Any]:
    """``compare.json`` of an earlier run, checked by schema, with its stages.json and results.json."""
    path = out / SETTINGS
    if not path.is_file():
        raise DiffvaeError(f"--resume: {out} has no {SETTINGS} (an interrupted start, or an older diffvae); "
                           "start again with --force")
    settings = read_json(path)
    check_compare_settings(settings, path, family_order())
    settings.setdefault("conditional", False)  # written before --conditional existed
    settings.setdefault("recipes_at_forecast", False)  # ... and --recipes-at-forecast
    if (out / "stages.json").exists():
        check_stages(read_json(out / "stages.json"), out / "stages.json")
    if (out / "results.json").exists() and not isinstance(read_json(out / "results.json"), dict):
        raise DiffvaeError(f"{out / 'results.json'} is not a JSON object")
    return settings


def _check_same_settings(stored: dict[str, Any], settings: dict[str, Any], out: Path) -> None:
    """``--resume`` reuses stages trained on the stored data, families and budget: refuse any change."""
    differences = []
    for name, value in settings.items():
        if name == "data":
            differences += [f"data.{k} {value[k]} (the folder has {stored['data'].get(k)})"
                            for k in value if value[k] != stored["data"].get(k)]
        elif value != stored.get(name):
            differences.append(f"{name} {value} (the folder has {stored.get(name)})")
    if differences:
        raise DiffvaeError(f"--resume: {out} was made with other settings: {'; '.join(differences)}; "
                           "pass the original ones or start again with --force")


@dataclass
class StageContext(StageInputs):
    """The stages' shared inputs, and the feature network, trained once and shared by every stage."""

    _extractor: Any = None

    def extractor(self):
        if self._extractor is None:
            self._extractor = get_feature_extractor(self.dataset, progress=not self.config.quiet)
        return self._extractor


class StageRunner:
    """Runs one stage within its share of what is left of the budget; records it in stages.json. A
    failed stage is recorded and reported, and the others go on."""

    def __init__(self, the_plan: ComparePlan, stages: Stages, out: Path, budget_minutes: float):
        self.plan, self.stages, self.out, self.budget_minutes = the_plan, stages, out, budget_minutes
        self.start = time.perf_counter()
        self.threads = torch.get_num_threads()  # the most a stage uses; fewer while other processes take cores

    def fit_threads(self) -> int:
        """torch's CPU threads for the next stage: the cores other processes leave (at most the count the
        compare started with). On a busy machine one thread outruns two (RESULTS.md, "A budget under load")."""
        if self.threads > 1:
            torch.set_num_threads(threads_beside(busy_cores_elsewhere(0.25), self.threads))
        return torch.get_num_threads()

    def allot(self, stage: str) -> float:
        """This stage's share of what is left of the budget."""
        budget_s = self.budget_minutes * 60.0
        remaining_stages = [s for s in self.plan.seconds if not self.stages.done(s)]
        left = budget_s - (time.perf_counter() - self.start) - _reserve(budget_s)
        share = self.plan.seconds[stage] / max(1e-9, sum(self.plan.seconds[s] for s in remaining_stages))
        return max(5.0, left * share)

    def __call__(self, stage: str, fn: Callable[[float], Any]) -> Any:
        """``fn(seconds)``'s result, or None if the stage was done earlier or failed. ``seconds`` is the stage's
        share of what is left (:meth:`allot`); a stage the plan has no share for (a fixed cost, such as training
        the feature network) gets none, and the stages after it share what it left."""
        if self.stages.done(stage):
            _log(f"[{stage}] done earlier, reused")
            return None
        threads = self.fit_threads()
        planned = stage in self.plan.seconds
        seconds = self.allot(stage) if planned else 0.0
        eta = time.strftime("%H:%M:%S", time.localtime(time.time() + seconds))
        busy = f", {threads} of {self.threads} threads (the machine is busy)" if threads < self.threads else ""
        share = f"{seconds / 60:.1f} min (until about {eta})" if planned else "fixed cost"
        _log(f"[{stage}] {share} — {_elapsed(self.start)} of {self.budget_minutes:g} min used{busy}")
        t0 = time.perf_counter()
        try:
            value = fn(seconds)
        except (KeyboardInterrupt, WriteError):  # a full disk ends the compare with its own line: the next stages would
            raise  # fail on the files it could not write, and the last error named those instead (issue 27, hostile pass)
        except Exception as e:  # a failed stage is reported, not dropped, and the others go on
            message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            if not isinstance(e, DiffvaeError):
                message = f"{type(e).__name__}: {message}"
                with (self.out / "errors.log").open("a") as log:
                    log.write(f"[{stage}]\n{traceback.format_exc()}\n")
            self.stages.record(stage, "failed", time.perf_counter() - t0, error=message, threads=threads, allotted=round(seconds, 2))
            _log(f"[{stage}] FAILED: {message}")
            return None
        self.stages.record(stage, "done", time.perf_counter() - t0, threads=threads, allotted=round(seconds, 2))
        return value


def _run_stages(ctx: StageContext) -> dict[str, Any]:
    """Plan the budget and run every stage not done yet; write the report."""
    config, out, dataset, families = ctx.config, ctx.out, ctx.dataset, ctx.config.families
    the_plan = plan(config.data, config.budget_minutes, families, config.split, config.conditional)
    _log(f"diffvae compare: {the_plan.describe()}; {_device_note(config.device)}")
    run = StageRunner(the_plan, Stages(out, config.resume), out, config.budget_minutes)
    earlier = sum(v.get("seconds", 0.0) for v in run.stages.status.values() if v.get("status") == "done")  # --resume reuses them
    results = _initial_results(ctx, the_plan)
    for fam in families:
        _store(results, ("training", fam), run(f"train:{fam}", lambda s, fam=fam: st.train_family(
            fam, ctx, s, the_plan.seconds[f"train:{fam}"], recipe_multiple(config))))
    for fam in families:
        for stage in get_family(fam).spec().extra_stages:
            _store(results, (stage.name,), run(stage.name, lambda s, stage=stage: stage.run(ctx, s)))
    run("features", lambda s: ctx.extractor())  # a fixed cost before the curves: inside their share it overran it
    curves = run("curves", lambda s: learning_curves(families, dataset, out, s, ctx.extractor(), budget_minutes=config.budget_minutes,
                                                     seed=config.seed, device=config.device, quiet=config.quiet))
    results.update(curves or {})
    if "eval_samples" not in results:  # equal for every family (kept on --resume): only equal counts compare
        results["eval_samples"], results["eval_midpoints"] = st.evaluation_sizes(families, ctx, {f: run.allot(f"eval:{f}") for f in families})
    for fam in families:
        _store(results, ("families", fam), run(f"eval:{fam}", lambda s, fam=fam: st.evaluate_family(
            fam, ctx, s, results["eval_samples"], results.get("eval_midpoints"))))
        _write_results(out, results)  # partial results survive an interruption
    if "refine" in the_plan.seconds:
        results.setdefault("sequential", {"alpha": 0.05, "max_looks": MAX_LOOKS, "looks": 1})
        _store(results, ("refinement",), run("refine", lambda s: refine(ctx, results, s)))
        _write_results(out, results)
    for fam in families if config.conditional else ():
        _store(results, ("control", fam), run(f"control:{fam}", lambda s, fam=fam: control_family(fam, ctx, s, results.get("eval_samples"))))
        _write_results(out, results)
    results["stages"] = run.stages.status
    results["elapsed_minutes"] = (earlier + time.perf_counter() - run.start) / 60.0  # reused stages count; the report takes seconds
    results["forecast"] = _forecast(results, forecast_target(config), config.seed)

    write_report(out, results)
    _write_results(out, results)
    _log(f"diffvae compare: wrote {out / 'report.html'}, {out / 'report.md'}, {out / 'results.json'} "
         f"in {results['elapsed_minutes']:.1f} min")
    return results


def forecast_target(config: CompareConfig) -> dict[str, Any]:
    """``--forecast`` checked against the budget (default: 10× it)."""
    if config.forecast is None:
        return default_target(config.budget_minutes)
    return parse_target(config.forecast, config.budget_minutes)


def recipe_multiple(config: CompareConfig) -> float:
    """How many times its share a family's recipe is chosen for: 1, or with ``--recipes-at-forecast`` the
    forecast's multiple of the budget, so the curve measured is that of the recipe a run at the target trains."""
    target = forecast_target(config)
    if not config.recipes_at_forecast:
        return 1.0
    if target["kind"] != "minutes":
        raise DiffvaeError("--recipes-at-forecast needs the forecast in minutes (e.g. --forecast 150): a recipe is chosen "
                           "by the compute a budget's minutes buy on this machine")
    return target["value"] / config.budget_minutes


def _forecast(results: dict[str, Any], target: dict[str, Any], seed: int) -> dict[str, Any]:
    """``results["forecast"]``; a forecast that fails is reported in it, never the end of the compare."""
    try:
        return forecast_results(results, target, seed=seed)
    except Exception as e:  # noqa: BLE001 — hours of training are not lost to a forecast
        return {"target": target, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _initial_results(ctx: StageContext, the_plan: ComparePlan) -> dict[str, Any]:
    """The settings part of results.json, over the results of an earlier run when resuming."""
    config, dataset, families = ctx.config, ctx.dataset, ctx.config.families
    results: dict[str, Any] = _previous_results(ctx.out) if config.resume else {}
    results.update({
        "data": dataset.name, "image_shape": list(dataset.image_shape), "train_size": int(dataset.train.shape[0]),
        "test_size": int(dataset.test.shape[0]), "budget_minutes": config.budget_minutes, "seed": config.seed,
        "conditional": bool(config.conditional),
        "plan_seconds": the_plan.seconds, "families_requested": list(families),
        "train_split": {f: the_plan.seconds[f"train:{f}"] / 60.0 for f in families},  # planned training minutes
    })
    results.setdefault("families", {})
    results.setdefault("training", {})
    return results


def _store(results: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """results[path...] = value, unless the stage produced nothing (done earlier, or failed)."""
    if value is None:
        return
    node = results
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _reserve(budget_s: float) -> float:
    """Seconds kept back for figures and the report."""
    return min(30.0, 0.04 * budget_s)


def _check_device(name: str) -> None:
    """``--device`` refused in one line when unavailable here (every stage trains on it), before anything is written."""
    resolve_device(name)


def _device_note(name: str) -> str:
    """Which device the stages train on (what ``auto`` chose)."""
    return f"device {resolve_device(name)}" + (" (auto)" if name == "auto" else "")


def _check_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse an ``--out`` that cannot be used as asked. Reads only."""
    if out.exists() and not out.is_dir():
        raise DiffvaeError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        is_report = (out / "stages.json").exists() or (out / "results.json").exists() or (out / SETTINGS).exists()
        if resume:
            if not is_report:
                raise DiffvaeError(f"--resume: {out} is not a diffvae compare folder")
            return
        if not force:
            raise DiffvaeError(f"--out {out} already exists; use --resume to reuse its finished stages or --force to replace it")
        check_replaceable(out, "compare", legacy=_is_unmarked_compare)
    elif resume:
        raise DiffvaeError(f"--resume: {out} does not exist")


def _is_unmarked_compare(out: Path) -> bool:
    """A compare folder made before folders carried diffvae's mark: its compare.json passes the schema."""
    try:
        read_settings(out)
    except DiffvaeError:
        return False
    return True


def _open_out(out: Path, resume: bool, force: bool) -> WriterLock:
    """Create (or reopen) the folder and take its writer lock; ``force`` empties it under the lock."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffvaeError(f"cannot create {out}: {e.strerror}") from None
    lock = WriterLock.acquire(out)
    try:
        _check_out(out, resume=resume, force=force)  # again, under the lock
        if force and not resume:
            for entry in out.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        write_marker(out, "compare")  # what --force may replace later
        (out / "figures").mkdir(exist_ok=True)
        (out / "runs").mkdir(exist_ok=True)
    except OSError as e:
        lock.release()
        raise DiffvaeError(f"cannot create {out}: {e.strerror}") from None
    except BaseException:
        lock.release()
        raise
    return lock


def _previous_results(out: Path) -> dict[str, Any]:
    path = out / "results.json"
    return read_json(path) if path.exists() else {}


def _write_results(out: Path, results: dict[str, Any]) -> None:
    atomic_write_text(out / "results.json", json.dumps(_jsonable(results), indent=2, sort_keys=True) + "\n")


def _elapsed(start: float) -> str:
    return f"{(time.perf_counter() - start) / 60:.1f}"


def _log(message: str) -> None:
    """Stage messages always go to stderr (``--quiet`` silences the progress bars only)."""
    print(message, file=sys.stderr, flush=True)
