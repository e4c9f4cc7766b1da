"""``diffvae compare``: train every family under one wall-clock budget, evaluate them with the one
evaluation, and write the report.

The budget covers everything (training, the posterior-collapse study, evaluation, the learning
curves of :mod:`diffvae.compare.curves`, figures). Every family gets the same training time unless
``--split`` sets relative times. The budget is split up front — the split is printed and stored in
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


from diffvae.errors import DiffvaeError
from diffvae.runs import LOCK, WriterLock, atomic_write_text, read_json, write_json

FAMILY_ORDER = ("vae", "ddpm", "ldm")
SETTINGS = "compare.json"  # data spec + content hash, families, budget, split, seed: what --resume must match
DEFAULT_BUDGET_MINUTES = 15.0

# Shares of the budget. Training is split among the families run (equally unless --split says
# otherwise), evaluation too; the learning curves evaluate every family's snapshots.
TRAIN_SHARE = 0.54
COLLAPSE_SHARE = 0.08  # two VAEs with a PixelCNN decoder: without and with free bits
EVAL_SHARE = 0.26  # evaluation, sampler sweep, figures and report
CURVES_SHARE = 0.12  # the learning curves (diffvae.compare.curves)


@dataclass
class ComparePlan:
    data: str
    budget_minutes: float
    families: tuple[str, ...]
    seconds: dict[str, float]  # planned seconds per stage

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.seconds.items())
        return f"budget {self.budget_minutes:g} min on {self.data}: {parts}"


def plan(data: str, budget_minutes: float, families: tuple[str, ...], split: dict[str, float] | None = None) -> ComparePlan:
    """Split the budget among the stages in proportion to their shares; the training share among the
    families in proportion to ``split`` (relative weights; equal training time when None)."""
    weights = split or {fam: 1.0 for fam in families}
    shares: dict[str, float] = {}
    for fam in families:
        shares[f"train:{fam}"] = TRAIN_SHARE * weights[fam] / sum(weights[f] for f in families)
    if "vae" in families:
        shares["collapse"] = COLLAPSE_SHARE
    shares["curves"] = CURVES_SHARE
    for fam in families:
        shares[f"eval:{fam}"] = EVAL_SHARE / len(families)
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
        from diffvae.schema import check_stages

        self.path = out / "stages.json"
        self.status: dict[str, dict[str, Any]] = read_json(self.path) if resume and self.path.exists() else {}
        check_stages(self.status, self.path)

    def done(self, name: str) -> bool:
        return self.status.get(name, {}).get("status") == "done"

    def record(self, name: str, status: str, seconds: float, **extra) -> None:
        self.status[name] = {"status": status, "seconds": round(seconds, 2), **extra}
        write_json(self.path, self.status)


def run_compare(args) -> dict[str, Any]:
    """The CLI entry point (see the module docstring). Every input is checked first (with ``--resume``,
    against the settings stored in ``compare.json``), then the folder is created or reopened under its
    writer lock, then the stages run."""
    from diffvae.api import DataConfig

    if args.resume and args.force:
        raise DiffvaeError("--resume reuses the finished stages and --force replaces the folder: pass one of them")
    out = Path(args.out)
    _check_out(out, resume=args.resume, force=args.force)
    stored = read_settings(out) if args.resume else None
    families, split = _resolve_settings(args, stored)
    data_config = DataConfig(spec=args.data, size=args.size, key=args.key, binarize=args.binarize, limit=args.limit)
    dataset = data_config.load()  # fails early, before anything is written, on bad data
    settings = {"data": dataclasses.asdict(data_config), "content_hash": dataset.content_hash(),
                "families": list(families), "budget_minutes": args.budget, "split": split, "seed": args.seed}
    if stored is not None:
        _check_same_settings(stored, settings, out)
    with _open_out(out, resume=args.resume, force=args.force):
        if stored is None:
            write_json(out / SETTINGS, settings)
        return _run_stages(args, out, data_config, dataset, families, split)


def _resolve_settings(args, stored: dict[str, Any] | None) -> tuple[tuple[str, ...], dict[str, float] | None]:
    """(families, split), each given, else stored (``--resume``), else the default; ``args.budget``,
    ``args.seed`` and ``args.families`` are set to the values used."""
    if args.families is not None:
        families = parse_families(args.families)
    else:
        families = tuple(stored["families"]) if stored else FAMILY_ORDER
    if args.split is not None:
        split = parse_split(args.split, families)
    else:
        split = stored["split"] if stored else None
    if args.budget is None:
        args.budget = stored["budget_minutes"] if stored else DEFAULT_BUDGET_MINUTES
    if args.seed is None:
        args.seed = stored["seed"] if stored else 0
    args.families = ",".join(families)
    return families, split


def parse_families(text: str) -> tuple[str, ...]:
    """``--families ldm,vae`` → ('vae', 'ldm'): a subset of FAMILY_ORDER, in that order."""
    families = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in families if f not in FAMILY_ORDER]
    if not families or unknown:
        raise DiffvaeError(f"--families takes a comma-separated subset of {','.join(FAMILY_ORDER)}, got {text!r}")
    if len(set(families)) != len(families):
        raise DiffvaeError(f"--families lists a family twice: {text!r}")
    return tuple(f for f in FAMILY_ORDER if f in families)


def read_settings(out: Path) -> dict[str, Any]:
    """``compare.json`` of an earlier run, checked by schema, with its stages.json and results.json."""
    from diffvae.schema import check_compare_settings, check_stages

    path = out / SETTINGS
    if not path.is_file():
        raise DiffvaeError(f"--resume: {out} has no {SETTINGS} (an interrupted start, or an older diffvae); "
                           "start again with --force")
    settings = read_json(path)
    check_compare_settings(settings, path, FAMILY_ORDER)
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


def _run_stages(args, out: Path, data_config, dataset, families: tuple[str, ...], split) -> dict[str, Any]:
    """Plan the budget and run every stage not done yet; write the report."""
    the_plan = plan(args.data, args.budget, families, split)
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
        "train_split": {f: the_plan.seconds[f"train:{f}"] / 60.0 for f in families},  # planned training minutes
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
    from diffvae.compare.curves import learning_curves

    for fam in families:
        run_stage(f"train:{fam}", lambda s, fam=fam: st.train_family(fam, data_config, dataset, out, s, args, results))
    if "vae" in families:
        run_stage("collapse", lambda s: st.collapse_study(data_config, dataset, out, s, args, results))
    extractor_box: dict[str, Any] = {}
    run_stage("curves", lambda s: learning_curves(families, dataset, out, s, args, results, extractor_box))
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
        if not is_report:
            raise DiffvaeError(f"--force refuses to replace {out}: it is not a diffvae compare folder")
    elif resume:
        raise DiffvaeError(f"--resume: {out} does not exist")


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
    from diffvae.evaluate import _jsonable

    atomic_write_text(out / "results.json", json.dumps(_jsonable(results), indent=2, sort_keys=True) + "\n")


def _elapsed(start: float) -> str:
    return f"{(time.perf_counter() - start) / 60:.1f}"


def _log(message: str) -> None:
    """Stage messages always go to stderr (``--quiet`` silences the progress bars only)."""
    print(message, file=sys.stderr, flush=True)
