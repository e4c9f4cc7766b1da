"""Speed-ups the defaults could switch on, measured (issue 17): the numbers behind each switch.

(a) **bf16 sampling.** The DDPM's and the VAE's ``sample()`` under bf16 autocast vs fp32 on trained mnist
    runs: ms/sample and FID (500 samples against the 500 held-out images, in the mnist feature space of
    ``diffvae.metrics.features``), with a second fp32 seed to show the seed-to-seed spread of FID at this
    sample count — a bf16 change smaller than that spread is noise.
(b) **fused AdamW.** ``torch.optim.AdamW(fused=True)`` vs PyTorch's default (foreach) on the default DDPM's
    UNet at the mnist shape and default batch: ms per optimizer step and per whole training step; and
    exact resume: k steps, optimizer state through safetensors (``diffvae.train.optimizer_tensors``) into
    a fresh model and optimizer, k more steps, compared bit for bit with 2k uninterrupted steps.
(c) **VAE decode.** Images/s of the default VAE's decode (what ``sample()`` runs) in chunks of 64 … 1024
    latents, contiguous vs channels_last.

Timings are best-of-repeats, one thread (``torch.set_num_threads(1)``), CPU.

    python benchmarks/bench_speed_defaults.py --ddpm-run RUN --vae-run RUN --out speed_defaults.md
    (without --ddpm-run / --vae-run it trains them first: diffvae.api.train_run, mnist, --budget 2 each)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, machine_line, results_path, write_json  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ----------------------------------------------------------------------------- (a) bf16 sampling

def trained_run(family: str, given: str | None, workdir: Path, minutes: float) -> Path:
    if given:
        return Path(given)
    from diffvae.api import DataConfig, train_run

    out = workdir / f"{family}_mnist"
    if not (out / "checkpoint.safetensors").exists():
        from diffvae.train import TrainConfig
        from diffvae.families import get_family

        train_config = TrainConfig(budget_minutes=minutes, **get_family(family).train_defaults)
        train_run(family, DataConfig("mnist"), None, train_config, out=out, force=True, progress=False)
    return out


def sample_timed(model, n: int, seed: int, precision: str) -> tuple[torch.Tensor, float]:
    dtype = PRECISIONS[precision]
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        samples = torch.cat([model.sample(min(250, n - i), generator=generator) for i in range(0, n, 250)])
    return samples, time.perf_counter() - start


def bf16_sampling(run: Path, n: int, repeats: int) -> dict:
    """FID and ms/sample of one run's default sampler: fp32 (seeds 0, 1) and bf16 (seed 0)."""
    from diffvae.api import load, run_data
    from diffvae.metrics.distances import fid
    from diffvae.metrics.features import get_feature_extractor

    model = load(run)
    dataset = run_data(model)
    extractor = get_feature_extractor(dataset)
    real = extractor.features(dataset.test[:n])
    rows = []
    for precision, seed in (("fp32", 0), ("bf16", 0), ("fp32", 1)):
        samples, seconds = sample_timed(model, n, seed, precision)
        if model.family == "vae":  # fast: time again, best of repeats
            seconds = min([seconds] + [sample_timed(model, n, seed, precision)[1] for _ in range(repeats - 1)])
        rows.append({"precision": precision, "seed": seed, "ms_per_sample": 1e3 * seconds / n,
                     "fid": fid(real, extractor.features(samples))})
        print(f"{model.family} {precision} seed {seed}: {rows[-1]}", flush=True)
    nfe = model.nfe() if hasattr(model, "nfe") else 1
    return {"run": str(run), "family": model.family, "trained_steps": model.trained_steps, "nfe": nfe,
            "sampler": getattr(model.config, "sampler", None), "samples": n, "rows": rows}


def sampling_speed(run: Path, repeats: int) -> dict:
    """ms/sample of fp32 vs bf16, best of ``repeats`` interleaved rounds (a busy machine slows either side)."""
    from diffvae.api import load

    model = load(run)
    n = 500 if model.family == "vae" else 50
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(repeats):
        for precision in best:
            best[precision] = min(best[precision], sample_timed(model, n, 0, precision)[1])
    print(model.family, "timing", best, flush=True)
    return {"family": model.family, "samples": n, "repeats": repeats,
            "ms_per_sample": {k: 1e3 * v / n for k, v in best.items()}}


# ----------------------------------------------------------------------------- (b) fused AdamW

def unet_and_batch(channels: int | None = None):
    from diffvae.diffusion.model import DDPMConfig
    from diffvae.families import get_family
    from diffvae.nn.unet import UNet

    config = DDPMConfig() if channels is None else DDPMConfig(channels=channels)
    torch.manual_seed(0)
    model = UNet(config.unet_config(), 1, image_size=28)
    torch.nn.init.normal_(model.conv_out.weight, std=1e-3)
    batch = get_family("ddpm").train_defaults["batch_size"]
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, 1, 28, 28, generator=g))
    return model, data


def make_optimizer(model, fused: bool):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=fused or None)


def train_steps(model, optimizer, data, steps: int) -> None:
    x, t, target = data
    for _ in range(steps):
        loss = F.mse_loss(model(x, t), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def fused_adamw(repeats: int, resume_steps: int) -> dict:
    from diffvae.train import load_optimizer_tensors, optimizer_tensors
    from diffvae.runs import load_tensors, save_tensors

    out: dict = {"timing": {}, "resume": {}}
    model, data = unet_and_batch()
    for fused in (False, True):  # whole step, then the optimizer step alone (gradients in place)
        m = copy.deepcopy(model)
        opt = make_optimizer(m, fused)
        train_steps(m, opt, data, 1)
        step_s = best_seconds(lambda: train_steps(m, opt, data, 1), repeats)
        opt_s = best_seconds(opt.step, repeats * 5)
        out["timing"]["fused" if fused else "default"] = {"ms_per_step": 1e3 * step_s, "ms_per_optimizer_step": 1e3 * opt_s}
        print("adamw", "fused" if fused else "default", out["timing"], flush=True)
    model, data = unet_and_batch(channels=16)
    finals = {}
    for fused in (False, True):
        name = "fused" if fused else "default"
        straight = copy.deepcopy(model)
        train_steps(straight, make_optimizer(straight, fused), data, 2 * resume_steps)
        first = copy.deepcopy(model)
        opt = make_optimizer(first, fused)
        train_steps(first, opt, data, resume_steps)
        tensors, groups = optimizer_tensors(opt)
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_speed_defaults_{os.getpid()}.safetensors"
        save_tensors(path, {**{f"model/{k}": v for k, v in first.state_dict().items()}, **{f"opt/{k}": v for k, v in tensors.items()}})
        loaded, _ = load_tensors(path)
        path.unlink()
        resumed = copy.deepcopy(model)
        resumed.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model/")})
        opt2 = make_optimizer(resumed, fused)
        load_optimizer_tensors(opt2, {k[4:]: v for k, v in loaded.items() if k.startswith("opt/")}, groups)
        train_steps(resumed, opt2, data, resume_steps)
        same = all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
        out["resume"][name] = {"bit_identical": same, "steps": 2 * resume_steps}
        finals[name] = straight
    diff = max((a - b).abs().max().item() for a, b in zip(finals["default"].state_dict().values(),
                                                         finals["fused"].state_dict().values()))
    out["resume"]["max_abs_weight_difference_fused_vs_default"] = diff
    print("resume", out["resume"], flush=True)
    return out


# ----------------------------------------------------------------------------- (c) VAE decode

def vae_decode(total: int, repeats: int, shape=(1, 28, 28)) -> dict:
    from diffvae.vae.model import VAE, VAEConfig

    torch.manual_seed(0)
    model = VAE(VAEConfig(), shape).eval()
    z = torch.randn(total, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    rows = []
    for layout in ("contiguous", "channels_last"):
        m = copy.deepcopy(model)
        if layout == "channels_last":
            m = m.to(memory_format=torch.channels_last)
        for chunk in (64, 128, 256, 512, 1024):
            def run():
                with torch.inference_mode():
                    for part in z.split(chunk):
                        m.decode(part)
            run()
            seconds = best_seconds(run, repeats)
            rows.append({"layout": layout, "chunk": chunk, "images_per_s": total / seconds})
            print("decode", rows[-1], flush=True)
    return {"image_shape": list(shape), "latents": total, "rows": rows}


# ----------------------------------------------------------------------------- report

def markdown(results: dict) -> str:
    lines = [f"Measured {results['date']} on {machine_line(results['machine'])}; one thread.", ""]
    if "sampling" in results:
        lines += ["### (a) bf16 autocast sampling vs fp32 (mnist runs, default sampler)", "",
                  "| family | run | sampler, NFE | precision | seed | ms/sample | FID (500 vs 500 held-out) |",
                  "|---|---|---|---|---:|---:|---:|"]
        for entry in results["sampling"]:
            for row in entry["rows"]:
                lines.append(f"| {entry['family']} | {entry['trained_steps']} steps | {entry['sampler'] or '—'}, {entry['nfe']} "
                             f"| {row['precision']} | {row['seed']} | {row['ms_per_sample']:.3f} | {row['fid']:.2f} |")
        lines.append("")
    if "sampling_speed" in results:
        lines += ["Sampling speed, best of interleaved rounds (the FID runs above ran once each on a busy machine):", "",
                  "| family | samples × rounds | fp32 ms/sample | bf16 ms/sample | bf16 speed-up |", "|---|---|---:|---:|---:|"]
        for e in results["sampling_speed"]:
            ms = e["ms_per_sample"]
            lines.append(f"| {e['family']} | {e['samples']} × {e['repeats']} | {ms['fp32']:.3f} | {ms['bf16']:.3f} | "
                         f"{ms['fp32'] / ms['bf16']:.2f}× |")
        lines.append("")
    if "adamw" in results:
        t, r = results["adamw"]["timing"], results["adamw"]["resume"]
        lines += ["### (b) AdamW fused=True vs default (foreach), default DDPM UNet, mnist shape, default batch", "",
                  "| AdamW | ms per optimizer step | ms per training step | exact resume (bit-identical after "
                  f"{r['default']['steps']} steps, state through safetensors) |", "|---|---:|---:|---|"]
        for name in ("default", "fused"):
            lines.append(f"| {name} | {t[name]['ms_per_optimizer_step']:.2f} | {t[name]['ms_per_step']:.1f} | "
                         f"{'yes' if r[name]['bit_identical'] else 'NO'} |")
        lines += ["", f"Fused vs default after the same {r['default']['steps']} steps: max |Δweight| = "
                  f"{r['max_abs_weight_difference_fused_vs_default']:.2e} (not bit-equal to each other; each resumes exactly).", ""]
    if "decode" in results:
        d = results["decode"]
        lines += [f"### (c) VAE decode ({'×'.join(map(str, d['image_shape']))}, default VAEConfig, {d['latents']} latents): images/s", "",
                  "| chunk | contiguous | channels_last |", "|---:|---:|---:|"]
        by = {(r["layout"], r["chunk"]): r["images_per_s"] for r in d["rows"]}
        for chunk in sorted({r["chunk"] for r in d["rows"]}):
            lines.append(f"| {chunk} | {by[('contiguous', chunk)]:,.0f} | {by[('channels_last', chunk)]:,.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ddpm-run", default=None)
    parser.add_argument("--vae-run", default=None)
    parser.add_argument("--workdir", default="benchmarks/results/speed_defaults")
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget of each run trained here")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="sampling,sampling_speed,adamw,decode")
    parser.add_argument("--merge", action="store_true", help="add to the parts stored by an earlier run")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    parts = args.parts.split(",")
    path = results_path("bench_speed_defaults", False)
    results: dict = {}
    if args.merge and os.path.exists(path):  # keep the parts measured by an earlier call
        with open(path) as f:
            results = json.load(f)
    results.update(machine=machine_info(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if "sampling" in parts:
        workdir = Path(args.workdir)
        results["sampling"] = [bf16_sampling(trained_run(f, getattr(args, f"{f}_run"), workdir, args.minutes), args.samples,
                                             args.repeats) for f in ("ddpm", "vae")]
    if "sampling_speed" in parts:
        results["sampling_speed"] = [sampling_speed(trained_run(f, getattr(args, f"{f}_run"), Path(args.workdir), args.minutes),
                                                    args.repeats) for f in ("ddpm", "vae")]
    if "adamw" in parts:
        results["adamw"] = fused_adamw(args.repeats, resume_steps=3)
    if "decode" in parts:
        results["decode"] = vae_decode(4096, args.repeats)
    write_json(path, results)
    text = markdown(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
