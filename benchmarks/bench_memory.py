"""Memory and throughput per family at 28, 32 and 64 px, grey and colour.

For every family (the VAE, the pixel DDPM, and both stages of latent diffusion) and every image shape
(1 or 3 channels × 28, 32, 64 px), at the family's default config and default training batch:

* **peak resident memory of a training step** (CPU): a fresh subprocess builds the model, its EMA copy
  and AdamW, then runs engine steps (bf16 autocast where the engine would use it, the family's
  ``training_loss``, backward, clipping, AdamW, EMA: :func:`engine_step`) on random uint8 data of that
  shape; its VmHWM (peak resident set since its exec) after the steps is the peak, and before the
  first step the baseline (interpreter, torch, model, optimizer), so the step's own share is the
  difference;
* **training throughput**: images/s of the best timed step (after one warm-up step);
* **peak resident memory of sampling**: another fresh subprocess samples one evaluation batch
  (``EvalConfig().batch_size`` images) with the family's default sampler, cut to 2 network steps
  (the memory of a sampler does not grow with its number of steps: each step frees the last);
* **peak allocated CUDA memory** (``torch.cuda.max_memory_allocated``) for both, when CUDA is present;
  otherwise "not measured".

The configs are each family's defaults with its preset for the shape (``FamilySpec.preset_for``, what
``diffvae train`` uses: e.g. a 4-level UNet at 64 px, a larger VAE latent for colour; ``--no-preset``: the
plain defaults, as measured before the presets), the optimizer is the engine's AdamW (fused where torch
has it), one CPU thread per subprocess; the table's "config" column names the preset's fields.

    python benchmarks/bench_memory.py --out memory_table.md   # ~3 minutes on one quiet core
    python benchmarks/bench_memory.py --shapes 1x64x64,3x64x64 --rows ddpm   # only some cells
    python benchmarks/bench_memory.py --quick                             # tiny widths, 28 px only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(c, s, s) for s in (28, 32, 64) for c in (1, 3)]
ROWS = ("vae", "ddpm", "ldm autoencoder", "ldm diffusion")  # ldm: stage 1, stage 2 (and its sampling)


def peak_rss_bytes() -> int:
    """This process's peak resident set size since it started: Linux's VmHWM (``ru_maxrss`` would also count the
    image of the process that forked it, before its exec: this script's parent, with torch loaded), else
    ``ru_maxrss`` (macOS reports bytes)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def build(row: str, shape: tuple[int, int, int], quick: bool, preset: bool = True):
    """(model, one training batch, batch size) for a row at the family's default config (with its preset for
    ``shape`` unless not ``preset``) and default batch."""
    from diffvae.families import get_family
    from diffvae.presets import preset_config

    family = row.split()[0]
    config_class, model_class = get_family(family).load()
    batch = 4 if quick else get_family(family).train_defaults["batch_size"]
    small = {"vae": {"width": 16}, "ddpm": {"channels": 16}, "ldm": {"ae_width": 16, "channels": 16}}[family]
    extra = {"latent_scale": 1.0} if family == "ldm" else {}
    given = {**(small if quick else {}), **extra}
    config = config_class(**given)
    if preset:
        config = preset_config(get_family(family).spec(), config, shape, set(given))
    torch.manual_seed(0)
    model = model_class(config, shape)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, *shape), generator=g, dtype=torch.uint8)
    if row == "ldm autoencoder":
        return model.autoencoder, images, batch
    if row == "ldm diffusion":
        model.autoencoder.requires_grad_(False).eval()
        return model, model.latent_moments(images), batch  # stage 2 trains on precomputed moments
    return model, images, batch


def engine_step(model: torch.nn.Module, batch: torch.Tensor, device: torch.device):
    """One step as diffvae.train runs it: autocast (the engine's "auto" precision), loss, backward, clip, AdamW, EMA."""
    from diffvae.train import autocast, ema_update, fused_adamw_available, resolve_precision

    dtype = resolve_precision("auto", device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), fused=fused_adamw_available(device) or None)
    ema = copy.deepcopy(model).requires_grad_(False)
    model.train()

    def step() -> None:
        if hasattr(model, "set_step"):
            model.set_step(10_000)
        with autocast(device, dtype):
            loss, _ = model.training_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(ema, model, 0.995)

    return step


def worker(kind: str, row: str, shape: tuple[int, int, int], quick: bool, steps: int, preset: bool = True) -> dict:
    """Runs in a fresh subprocess: measure one row's training step or its sampling."""
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, batch, n = build(row, shape, quick, preset)
    model, batch = model.to(device), batch.to(device)
    if kind == "train":
        step = engine_step(model, batch, device)
        baseline = peak_rss_bytes()
        times = []
        for _ in range(1 + steps):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        result = {"images_per_s": n / min(times[1:]), "batch": n}
    else:
        from diffvae.evaluate import EvalConfig

        count = 4 if quick else EvalConfig().batch_size
        model.eval()
        baseline = peak_rss_bytes()
        with torch.no_grad():
            kwargs = {} if row == "vae" else {"steps": 2}
            model.sample(count, torch.Generator(device).manual_seed(0), **kwargs)
        result = {"batch": count}
    result.update(baseline_rss=baseline, peak_rss=peak_rss_bytes(),
                  cuda_peak=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
    return result


def measure(row: str, kind: str, shape, quick: bool, steps: int, preset: bool = True) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, row, *map(str, shape), "--steps", str(steps)]
    cmd += ([] if preset else ["--no-preset"]) + (["--quick"] if quick else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(value) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f}"


def cuda_mib(value) -> str:
    return "not measured" if value is None else mib(value)


def _share(entry: dict) -> str:
    return "—" if entry["peak_rss"] is None else mib(entry["peak_rss"] - entry["baseline_rss"])


def preset_text(row: str, shape: tuple[int, int, int], preset: bool) -> str:
    """The preset's fields for a row and shape, e.g. "channel_mult=(1, 2, 2, 2)"; "default" when none apply."""
    from diffvae.families import get_family
    from diffvae.presets import preset_values

    values = preset_values(get_family(row.split()[0]).spec(), shape) if preset else {}
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "default"


def table(results: list[dict]) -> str:
    lines = ["| family | image | config | batch | train: peak RSS MiB (step's share) | train images/s | "
             "sample: peak RSS MiB (share), batch | CUDA peak MiB train / sample |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        train, sample = r["train"], r["sample"] or {}
        if "error" in train or "error" in sample:
            lines.append(f"| {r['row']} | {r['image']} | {r.get('config', '')} | | error: {train.get('error') or sample.get('error')} | | | |")
            continue
        if not sample:  # stage 1 of latent diffusion: sampling is measured on the stage 2 row
            sample = {"peak_rss": None, "baseline_rss": None, "batch": "(see ldm diffusion)", "cuda_peak": None}
        lines.append(
            f"| {r['row']} | {r['image']} | {r.get('config', 'default')} | {train['batch']} | {mib(train['peak_rss'])} "
            f"({mib(train['peak_rss'] - train['baseline_rss'])}) | {train['images_per_s']:,.1f} | "
            f"{mib(sample['peak_rss'])} ({_share(sample)}), {sample['batch']} | "
            f"{cuda_mib(train['cuda_peak'])} / {cuda_mib(sample['cuda_peak'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps after one warm-up")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--shapes", default=None, help="only these shapes, e.g. 1x64x64,3x64x64 (default: all six)")
    parser.add_argument("--no-preset", dest="preset", action="store_false", help="the plain default configs")
    parser.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, row, *shape = args.worker
        print(json.dumps(worker(kind, row, tuple(int(v) for v in shape), args.quick, args.steps, args.preset)))
        return
    from common import machine_info, machine_line, results_path, write_json  # noqa: E402

    torch.set_num_threads(1)
    machine = machine_info()  # the load average at the start
    shapes = SHAPES[:2] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in text.split("x")) for text in args.shapes.split(",")]
    results = []
    for shape in shapes:
        for row in args.rows.split(","):
            sample = None if row == "ldm autoencoder" else measure(row, "sample", shape, args.quick, args.steps, args.preset)
            entry = {"row": row, "image": "×".join(map(str, shape)), "config": preset_text(row, shape, args.preset),
                     "train": measure(row, "train", shape, args.quick, args.steps, args.preset), "sample": sample}
            results.append(entry)
            print(json.dumps(entry), flush=True)
    text = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line(machine)}, one thread per "
            f"subprocess; CUDA: {'yes' if torch.cuda.is_available() else 'none on this machine (not measured)'}.\n\n"
            + table(results) + "\n")
    print(text)
    every_cell = args.shapes is None and args.rows == ",".join(ROWS)  # some cells only: kept apart from the full table
    write_json(results_path("bench_memory" if every_cell else "bench_memory_cells", args.quick), {"machine": machine, "results": results})
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
