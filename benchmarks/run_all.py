"""Run every diffvae benchmark and write ``benchmarks/RESULTS.md`` (tables, commands, date, machine).

    python benchmarks/run_all.py            # the full run (≤ 20 minutes on 2 idle cores)
    python benchmarks/run_all.py --quick    # smoke run: tiny settings, writes benchmarks/results/RESULTS_quick.md

In order: the machine's peak (matmul and 3×3 conv, fp32 and bf16, all threads and one), training
throughput (``bench_train.py``), sampling speed (``bench_sample.py``), quality per CPU-minute against the
diffusers recipe (``bench_recipe.py``), and quality against NFE (``bench_quality.py``) on the mnist DDPM
that bench_recipe has just trained with diffvae's default recipe (or the run given by ``--run``). Every
ratio in a table is between numbers measured in this run.
JSON for each script goes to ``benchmarks/results/`` (gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_quality  # noqa: E402
import bench_recipe  # noqa: E402
import bench_sample  # noqa: E402
import bench_ddim_variants  # noqa: E402
import bench_sweep  # noqa: E402
import bench_time_to_quality  # noqa: E402
import bench_train  # noqa: E402
import bench_vs_old  # noqa: E402
from common import RESULTS_DIR, cpu_snapshot, machine_info, others_share, peak_gflops, setup_threads, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# Ancestral DDPM with 1000 steps on 200 samples takes ~12 minutes in fp32 on 2 cores (3.5 ms per image and
# network evaluation) — more than the whole run may: the quality sweep runs the network under bf16 autocast
# (~1.9 ms) with fewer settings, and checks the default sampler in fp32 too.
QUALITY_SETTINGS = ["--precision", "bf16", "--settings", "dpm++2m:10", "dpm++2m:20", "dpm++2m:50", "ddim:10", "ddim:20",
                    "ddim:50", "ddpm:100", "ddpm:250", "ddpm:1000"]


# the recipe sweep on one core (CPU-minutes), as issue 13 asks: the levers per family at 2 minutes
SWEEP_SETTINGS = ["--minutes", "2", "--samples", "300", "--threads", "1"]
# time to quality: every contender once for 4 CPU-minutes on one thread, snapshots at 0.5, 1, 2, 4 minutes
TIME_TO_QUALITY_SETTINGS = ["--minutes", "4", "--samples", "200"]
# today's defaults against the revision before issue 13, each in its own 15-minute compare on a 2-core CPU clock
VS_OLD_SETTINGS = ["--old-rev", "4751cd5", "--minutes", "15", "--threads", "1"]


def measure_peaks(threads: int, quick: bool) -> dict:
    """Peak GFLOP/s (matmul, conv, larger) for fp32 and bf16, with all ``threads`` and with one."""
    out = {}
    for count in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(count)
        out[count] = {name: peak_gflops(dtype, quick=quick) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    torch.set_num_threads(threads)
    return out


def peaks_markdown(peaks: dict) -> str:
    lines = ["| threads | precision | matmul 2048² GFLOP/s | 3×3 conv 128→128 GFLOP/s | peak (larger) |", "|---:|---|---:|---:|---:|"]
    for threads, rows in peaks.items():
        for precision, p in rows.items():
            lines.append(f"| {threads} | {precision} | {p['matmul']:.0f} | {p['conv']:.0f} | {p['peak']:.0f} |")
    return "\n".join(lines)


def issue13_targets(results: dict) -> list[str]:
    """Issue 13: every family's FID at least 2× lower than before it, in one 15-minute compare each."""
    vs = results.get("vs_old")
    if vs is None:
        return []
    old, new = vs["runs"]["old"]["scores"], vs["runs"]["new"]["scores"]
    ratios = {f: old[f]["fid"] / new[f]["fid"] for f in old if f in new}
    met = all(r >= 2.0 for r in ratios.values())
    return [f"- Issue 13, every family's FID ≥ 2× lower than at {vs['old_rev']} (one {vs['minutes']:g}-minute compare each): "
            f"**{'met' if met else 'missed'}** — " + ", ".join(f"{f} {r:.2f}×" for f, r in sorted(ratios.items()))]


def script_command(script: str, argv: list[str]) -> str:
    """The command line, with paths inside the repository written relative to its root."""
    root = os.path.dirname(HERE)
    shown = [os.path.relpath(a, root) if os.path.isabs(a) and a.startswith(root + os.sep) else a for a in argv]
    return "python benchmarks/" + script + (" " + shlex.join(shown) if shown else "")


def targets_markdown(results: dict) -> str:
    """One line per issue-8 target with its measured value."""
    lines = []
    train = results["train"] or {"precisions": {}}
    if "bf16" in train["precisions"]:
        speedup = train["precisions"]["bf16"]["speedup"]
        lines.append(f"- UNet training ≥ {bench_train.SPEEDUP_TARGET}× diffusers at the same FLOPs (bf16): "
                     f"**{'met' if speedup >= bench_train.SPEEDUP_TARGET else 'missed'}** — {speedup:.2f}× "
                     f"(fp32: {train['precisions'].get('fp32', {}).get('speedup', float('nan')):.2f}×)")
    lines += issue13_targets(results)
    if results["sample"] is None or results["quality"] is None or results["recipe"] is None:
        return "\n".join(lines)
    rows = [r for r in results["sample"]["vae_decode"]["rows"] if r["layout"].endswith("(library)")]
    best = max(rows, key=lambda r: r["images_per_s"])
    largest = max(r["batch"] for r in rows)
    at_largest = {r["precision"]: r["images_per_s"] for r in rows if r["batch"] == largest}
    target = bench_sample.VAE_DECODE_TARGET
    if best["images_per_s"] < target:
        verdict = "missed"
    else:
        verdict = "met" if max(at_largest.values()) >= target else f"met at batch {best['batch']} only"
    lines.append(f"- VAE decode ≥ {target:,} images/s: **{verdict}** — best {best['images_per_s']:,.0f} images/s "
                 f"({best['precision']}, batch {best['batch']}); at batch {largest:,}: "
                 + ", ".join(f"{v:,.0f} ({k})" for k, v in at_largest.items()))
    target = results["quality"].get("target")
    if target:
        lines.append(f"- DPM++2M at 20 NFE within 10% of DDPM at 1000 steps: **{'met' if target['met'] else 'missed'}** — "
                     f"FID ratio {target['ratio']:.3f}")
    for key, pair in results["recipe"]["target"].items():
        lines.append(f"- diffvae recipe FID ≤ {bench_recipe.TARGET_RATIO}× the diffusers recipe's (same minutes, {key}): "
                     f"**{'met' if pair['met'] else 'missed'}** — ratio {pair['ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke settings for every script (seconds each)")
    parser.add_argument("--run", default=None,
                        help="trained ddpm run for bench_quality (default: the diffvae run bench_recipe trains in this invocation)")
    parser.add_argument("--recipe-minutes", type=float, default=4.0, help="training minutes for each recipe in bench_recipe")
    parser.add_argument("--ddpm-1000", action="store_true", help="bench_recipe: also sample both recipes with 1000 DDPM steps (slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every script (default: all cores)")
    parser.add_argument("--results-dir", default=RESULTS_DIR, help="JSON and training runs (default benchmarks/results)")
    parser.add_argument("--only", default=None, metavar="KEY,KEY",
                        help="measure only these scripts (keys: train, sample, recipe, quality, variants, sweep, time_to_quality, "
                             "vs_old); the other sections come from their last JSON, with their own dates")
    parser.add_argument("--render-only", nargs="?", const="all", default=None, metavar="KEY,KEY",
                        help="rewrite the report from the JSON of the last run with the same settings (measures nothing)")
    parser.add_argument("--out", default=None,
                        help="markdown report (default benchmarks/RESULTS.md; benchmarks/results/RESULTS_quick.md with --quick)")
    args = parser.parse_args(argv)
    threads = setup_threads(args.threads)
    out_md = args.out or (os.path.join(args.results_dir, "RESULTS_quick.md") if args.quick else os.path.join(HERE, "RESULTS.md"))
    common = (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])

    def out_json(name: str) -> list[str]:
        return ["--out", os.path.join(args.results_dir, f"{name}_quick.json" if args.quick else f"{name}.json")]

    # bench_quality's model: --run, else the diffvae run bench_recipe has just trained (the default recipe,
    # `diffvae train ddpm --data mnist --budget 4`, on this otherwise idle machine), else one trained for it.
    recipe_run = os.path.join(args.results_dir, "recipe_diffvae_quick" if args.quick else "recipe_diffvae")
    quality_run = args.run or recipe_run
    plan = [
        ("train", "bench_train.py", bench_train, common),
        ("sample", "bench_sample.py", bench_sample, common + ["--skip-pixel-ddpm-1000"]),
        ("recipe", "bench_recipe.py", bench_recipe,
         common + ["--minutes", str(args.recipe_minutes), "--workdir", args.results_dir] + (["--ddpm-1000"] if args.ddpm_1000 else [])),
        ("quality", "bench_quality.py", bench_quality,
         common + ["--run", quality_run, "--workdir", args.results_dir] + ([] if args.quick else QUALITY_SETTINGS)),
        ("variants", "bench_ddim_variants.py", bench_ddim_variants, common + ["--run", quality_run]),
        ("sweep", "bench_sweep.py", bench_sweep, common + ([] if args.quick else SWEEP_SETTINGS)),
        ("time_to_quality", "bench_time_to_quality.py", bench_time_to_quality,
         (["--quick"] if args.quick else TIME_TO_QUALITY_SETTINGS)),
    ]
    if not args.quick:  # two compares, minutes each even on digits: full runs only
        plan.append(("vs_old", "bench_vs_old.py", bench_vs_old, VS_OLD_SETTINGS))
    keys = [key for key, *_ in plan]
    only = None if args.only is None else args.only.split(",")
    if only is not None and not set(only) <= set(keys):
        parser.error(f"--only takes keys among {', '.join(keys)}, got {args.only!r}")
    summary_path = os.path.join(args.results_dir, "run_all_quick.json" if args.quick else "run_all.json")
    previous = _read_json(summary_path) or {}
    if args.render_only:  # rewrite the report from the scripts' last JSON, measuring nothing
        summary = {**rendered_only_summary(threads), **previous, "argv": list(argv if argv is not None else sys.argv[1:])}
    else:
        summary = measure_all([p for p in plan if only is None or p[0] in only], threads, args.quick, out_json)
        summary.pop("results")
        summary["argv"] = list(argv if argv is not None else sys.argv[1:])
        for field in ("durations_s", "others_cpu_share", "dates"):  # the scripts not measured now keep their last record
            summary[field] = {**previous.get(field, {}), **summary[field]}
        write_json(summary_path, {k: v for k, v in summary.items()})
    results = {key: _read_json(out_json(f"bench_{key}")[1]) for key in keys}  # None: never measured
    if args.render_only not in (None, "all"):  # re-render only these; the others keep their RESULTS.md text
        chosen = args.render_only.split(",")
        if not set(chosen) <= set(keys):
            parser.error(f"--render-only takes keys among {', '.join(keys)}, got {args.render_only!r}")
        results = {key: value if key in chosen else None for key, value in results.items()}
    for key in keys:  # a script run on its own: its JSON's time is when it was measured
        if results[key] is not None and key not in summary["dates"]:
            stamp = os.path.getmtime(out_json(f"bench_{key}")[1])
            summary["dates"][key] = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + \
                " (by the script on its own)"
    report = render(summary, results, plan, out_json, args, out_md)
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    with open(out_md, "w") as f:
        f.write(report + "\n")
    print(f"\nwrote {out_md} (measured in {summary['total_s'] / 60:.1f} min)")
    return {**summary, **results}


def rendered_only_summary(threads: int) -> dict:
    """What a ``--render-only`` report says about itself when no earlier run_all summary exists."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
            "threads": threads, "peaks": None, "durations_s": {}, "others_cpu_share": {}, "dates": {}, "total_s": 0.0,
            "others_cpu_share_total": 0.0, "load_average_end": round(os.getloadavg()[0], 2)}


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def measure_all(plan, threads: int, quick: bool, out_json) -> dict:
    """Run the machine peak and every script in ``plan``; their results, durations and the CPU share
    of other processes while each ran."""
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_info()
    print("measuring the machine's peak", flush=True)
    peaks = measure_peaks(threads, quick)
    results, durations, others, dates = {}, {}, {}, {}
    run_start = cpu_snapshot()
    for key, script, module, script_argv in plan:
        print(f"\n=== {script_command(script, script_argv)}", flush=True)
        before = cpu_snapshot()
        results[key] = module.main(script_argv + out_json(f"bench_{key}"))
        after = cpu_snapshot()
        others[key] = others_share(before, after)
        durations[key] = after.wall - before.wall
        dates[key] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"date": date, "dates": dates, "machine": machine, "threads": threads, "peaks": peaks, "durations_s": durations,
            "others_cpu_share": others, "others_cpu_share_total": others_share(run_start, cpu_snapshot()),
            "total_s": time.perf_counter() - started, "load_average_end": round(os.getloadavg()[0], 2), "results": results}


def _command_note(summary: dict, key: str, kept: bool) -> str:
    if key not in summary.get("durations_s", {}):
        if key in summary.get("dates", {}):
            return f"# {summary['dates'][key]}"
        return "# as its section says (an earlier run)" if kept else "# not measured yet"
    return (f"# {summary.get('dates', {}).get(key, summary['date'])}: {summary['durations_s'][key] / 60:.1f} min, "
            f"other processes {100 * summary['others_cpu_share'][key]:.0f}% of the CPU")


def previous_sections(path: str) -> dict[str, str]:
    """The ``## `` sections of an existing report at ``path``: title → body (kept where this run measures nothing new)."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return {}
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        sections[title.strip()] = body.strip()
    return sections


PEAK_INTRO = ("Practical peak of the BLAS/oneDNN kernels (best of 5): every \"% of peak\" below divides by the larger of the two "
              "for the same precision and thread count.")
CHAIN_NOTE = ("The pixel DDPM's 1000-step ancestral chain is timed on the trained model under *Quality against NFE* "
              "(network in bf16, batch 100).")
MODEL_NOTE_START = "The model is the "  # the Quality-against-NFE section's first line, written by render()


def _kept(previous: dict[str, str], title: str) -> str | None:
    """The earlier body of the section named ``title`` (its title may carry a suffix such as "(added ...)"),
    without the paragraphs :func:`render` writes around it itself (else each re-render would repeat them)."""
    body = next((body for old, body in previous.items() if old.startswith(title)), None)
    if body is None:
        return None
    paragraphs = [p for p in body.split("\n\n") if p.strip() not in (PEAK_INTRO, CHAIN_NOTE) and not p.startswith(MODEL_NOTE_START)]
    return "\n\n".join(paragraphs)


def _section(summary: dict, results: dict, key: str, module, previous: dict[str, str], title: str) -> str:
    """A script's tables, headed by when they were measured (``--only`` refreshes some sections, not all); a
    script with no JSON here keeps its section of the existing RESULTS.md."""
    if results.get(key) is None:
        return _kept(previous, title) or f"*Not measured yet: `python benchmarks/run_all.py --only {key}`.*"
    when = summary.get("dates", {}).get(key, summary["date"])
    return f"*Measured {when}.*\n\n" + module.markdown(results[key])


def render(summary: dict, results: dict, plan, out_json, args, out_md: str) -> str:
    """RESULTS.md from the measurements."""
    machine, argv = summary["machine"], summary.get("argv", [])
    titles = {"train": "Training throughput", "sample": "Sampling speed",
              "recipe": "Quality per CPU-minute: diffvae recipe vs diffusers recipe", "quality": "Quality against NFE",
              "variants": "DDIM variants: ε̂ from the clipped x̂₀, leading vs trailing spacing",
              "sweep": "Recipes swept at equal compute", "time_to_quality": "Time to quality against the peers",
              "vs_old": "Today's defaults against the defaults before issue 13"}
    # a full run keeps what it does not re-measure from the report it replaces (else the committed RESULTS.md);
    # a quick run only from its own earlier report
    previous = previous_sections(out_md if os.path.exists(out_md) or args.quick else os.path.join(HERE, "RESULTS.md"))
    sections = {key: _section(summary, results, key, module, previous, titles[key]) for key, _, module, _ in plan}
    commands = [f"{script_command(script, script_argv + out_json(f'bench_{key}'))}   "
                + _command_note(summary, key, results.get(key) is None and _kept(previous, titles[key]) is not None)
                for key, script, _, script_argv in plan]
    written = {"Targets", "Machine peak", "Commands", *titles.values()}
    extra = [f"## {title}\n\n{body}\n" for title, body in previous.items() if not any(title.startswith(w) for w in written)]
    report = [
        "# diffvae benchmarks",
        "",
        f"Generated by `python benchmarks/run_all.py{' ' + shlex.join(argv) if argv else ''}` on {summary['date']}; "
        + (f"the measurements took {summary['total_s'] / 60:.1f} minutes. " if summary["total_s"] else
           "rendered from each script's last JSON or its earlier section (each section names its date and machine). ")
        + f"This machine: {machine['cpu']} ({machine['cpu_count']} cores, "
        f"{summary.get('threads', machine['torch_threads'])} torch threads), torch {machine['torch']}, Python {machine['python']}; load average (1 min) "
        f"{machine['load_average_1min']} at the start, {summary['load_average_end']} at the end; other processes used "
        f"{100 * summary['others_cpu_share_total']:.0f}% of the machine's CPU during the run (from /proc/stat; per script "
        "under Commands). A section measured by an earlier invocation (``--only`` refreshes some) says when under its "
        "title. Times are wall-clock, best of several repeats unless a table says otherwise; every ratio compares "
        "numbers measured in the same script run.",
        "",
        "## Targets (issues 8 and 13)",
        "",
        "\n".join(part for part in (targets_markdown(results), "" if results["train"] is not None else "\n".join(
            line for line in (_kept(previous, "Targets") or "").splitlines()
            if line.startswith("- ") and ("Issue 13" not in line or results.get("vs_old") is None))) if part),
        "",
        "## Machine peak",
        "",
        PEAK_INTRO,
        "",
        peaks_markdown(summary["peaks"]) if summary.get("peaks") else _kept(previous, "Machine peak") or "*Not measured.*",
        "",
        f"## {titles['train']}",
        "",
        sections["train"],
        "",
        "## Sampling speed",
        "",
        sections["sample"],
        "",
        CHAIN_NOTE,
        "",
        "## Quality per CPU-minute: diffvae recipe vs diffusers recipe",
        "",
        sections["recipe"],
        "",
        "## Quality against NFE",
        "",
        ("The model is the diffvae run trained by the recipe benchmark above (the default recipe, "
         f"{args.recipe_minutes:g} minutes on this machine)." if not args.run else f"The model is the run `{args.run}`."),
        "",
        sections["quality"],
        "",
        "## DDIM variants: ε̂ from the clipped x̂₀, leading vs trailing spacing",
        "",
        sections["variants"],
        "",
        "## Recipes swept at equal compute",
        "",
        sections["sweep"],
        "",
        "## Time to quality against the peers",
        "",
        sections["time_to_quality"],
        "",
        "## Today's defaults against the defaults before issue 13",
        "",
        sections.get("vs_old", _kept(previous, titles["vs_old"]) or "*Measured by full runs only (two 15-minute compares).*"),
        "",
        *extra,
        "## Commands",
        "",
        "```",
        *commands,
        "```",
    ]
    return "\n".join(report)


if __name__ == "__main__":
    main()
