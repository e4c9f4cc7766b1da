"""Training throughput: diffvae's default DDPM UNet vs diffusers' ``UNet2DModel`` at the same FLOPs,
and every family's training step (VAE, both LDM stages, DDPM) as the engine runs it.

**UNet vs diffusers.** Both networks get the same input (28×28, 1 channel: the mnist default), batch,
loss (MSE to a noise target), optimizer (AdamW as the engine builds it) and precision (fp32, or bf16
autocast). The UNet is ``DDPMConfig().unet_config()`` — the default DDPM's network, whatever the
defaults are when this runs — and the diffusers model is configured with the same widths, depth, norm
groups and attention placement, so the FLOPs per image are equal (checked and printed).

**Families.** One engine step each (``diffvae.train``: autocast, the family's ``training_loss``,
backward, gradient clipping, AdamW, EMA update) on random data of the mnist shape, at the family's
default batch: ``VAEConfig()``, ``LDMConfig()``'s autoencoder (stage 1) and its latent diffusion
(stage 2, on precomputed posterior moments), ``DDPMConfig()``.

Rounds alternate between the models and the best round of each is reported, which keeps other
processes on a shared machine from favouring either side. GFLOP/s counts matmuls/convolutions/attention
(``torch.utils.flop_counter``); "% of peak" divides by the machine's measured peak in the same precision
(the larger of a 2048² matmul and a 3×3 conv, measured before and after the rounds, best kept).
With ``--profile`` (on in full runs) the bf16 steps of both UNets are profiled (top ops by self time).

    python benchmarks/bench_train.py            # full run (~2 minutes on 2 idle cores)
    python benchmarks/bench_train.py --quick    # smoke setting (a few seconds)
    python benchmarks/bench_train.py --threads 1 --clock cpu   # per-core numbers on a busy machine
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CLOCKS, autocast_context, check_clock, conv_flops, count_flops, interleaved_rounds,  # noqa: E402
                    machine_info, machine_line, peak_gflops, profile_markdown, profile_top_ops, results_path,
                    setup_threads, write_json)

from diffvae.diffusion.model import DDPM, DDPMConfig  # noqa: E402
from diffvae.families import get_family  # noqa: E402
from diffvae.latent.model import LatentDiffusion, LDMConfig  # noqa: E402
from diffvae.nn.unet import UNet, UNetConfig  # noqa: E402
from diffvae.train import StepSettings, TrainState, train_step  # noqa: E402
from diffvae.vae.model import VAE, VAEConfig  # noqa: E402

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMAGE_SHAPE = (1, 28, 28)
SPEEDUP_TARGET = 1.5  # diffvae's UNet vs diffusers' at the same FLOPs (issue 8)


def engine_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW as :func:`diffvae.train.train` builds it (betas (0.9, 0.99), PyTorch's default implementation: a per-tensor loop on CPU)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99))


def default_unet_config(quick: bool) -> UNetConfig:
    """The default DDPM's UNet (a 16-wide one for smoke runs)."""
    return DDPMConfig(channels=16).unet_config() if quick else DDPMConfig().unet_config()


def diffusers_unet(config: UNetConfig, channels: int, image_size: int) -> torch.nn.Module:
    """``diffusers.UNet2DModel`` with the same widths, depth, norm groups and attention levels as ``config``."""
    from diffusers import UNet2DModel

    levels = len(config.channel_mult)
    attends = [config.attends_at(level) for level in range(levels)]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=config.num_res_blocks,
        block_out_channels=tuple(config.channels * m for m in config.channel_mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        norm_num_groups=config.groups,
        attention_head_dim=min(64, config.channels),  # one head per 64 channels, as diffvae's UNet
        dropout=config.dropout,
    )


def unet_step(model: torch.nn.Module, batch: int, dtype: torch.dtype) -> Callable[[], None]:
    """A closure running one optimisation step (forward, MSE loss, backward, AdamW) on a fixed random batch."""
    channels, size = IMAGE_SHAPE[0], IMAGE_SHAPE[1]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    target = torch.randn(batch, channels, size, size, generator=generator)
    optimizer = engine_optimizer(model)
    model.train()

    def step() -> None:
        with autocast_context(dtype):
            out = model(x, t)
            out = out.sample if hasattr(out, "sample") else out
            loss = F.mse_loss(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def build_unet(name: str, config: UNetConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "diffvae":
        model = UNet(config, IMAGE_SHAPE[0], image_size=IMAGE_SHAPE[1])
        # The zero-initialised output conv would make every other gradient zero; training never stays there.
        torch.nn.init.normal_(model.conv_out.weight, std=1e-3)
        return model
    return diffusers_unet(config, IMAGE_SHAPE[0], IMAGE_SHAPE[1])


# ----------------------------------------------------------------------------- the families' engine steps

def family_models(quick: bool) -> dict[str, tuple[torch.nn.Module, torch.Tensor, int]]:
    """name → (model, one batch of training input, batch size) at each family's default batch."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = {name: get_family(name).train_defaults["batch_size"] for name in ("vae", "ddpm", "ldm")}
    if quick:
        batch = {name: 4 for name in batch}
        vae_config, ddpm_config = VAEConfig(width=16), DDPMConfig(channels=16)
        ldm_config = LDMConfig(ae_width=16, channels=16, latent_scale=1.0)
    else:
        vae_config, ddpm_config, ldm_config = VAEConfig(), DDPMConfig(), LDMConfig(latent_scale=1.0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, *IMAGE_SHAPE), generator=g, dtype=torch.uint8)

    ldm = LatentDiffusion(ldm_config, IMAGE_SHAPE)
    autoencoder = copy.deepcopy(ldm.autoencoder)  # stage 1 trains the autoencoder alone
    ldm.autoencoder.requires_grad_(False).eval()  # stage 2: frozen autoencoder, diffusion on moments
    c, h, w = ldm.latent_shape
    moments = torch.cat([torch.randn(batch["ldm"], c, h, w, generator=g),
                         torch.full((batch["ldm"], c, h, w), -4.0)], dim=1)  # mean ‖ log-variance
    ddpm = DDPM(ddpm_config, IMAGE_SHAPE)
    torch.nn.init.normal_(ddpm.denoiser.unet.conv_out.weight, std=1e-3)
    return {
        "vae": (VAE(vae_config, IMAGE_SHAPE), images(batch["vae"]), batch["vae"]),
        "ldm autoencoder": (autoencoder, images(batch["ldm"]), batch["ldm"]),
        "ldm diffusion": (ldm, moments, batch["ldm"]),
        "ddpm": (ddpm, images(batch["ddpm"]), batch["ddpm"]),
    }


def engine_step(model: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """One step as :func:`diffvae.train.train` runs it — :func:`diffvae.train.train_step`: autocast,
    training_loss, backward, clip, AdamW, EMA — past any warm-up (step 10,000)."""
    state = TrainState(model, copy.deepcopy(model).requires_grad_(False), engine_optimizer(model), step=10_000)
    settings = StepSettings(torch.device("cpu"), None if dtype == torch.float32 else dtype, grad_clip=1.0, ema_decay=0.995)
    model.train()

    def step() -> None:
        train_step(state, batch, settings)

    return step


# ----------------------------------------------------------------------------- measurement

def _rate(timing, batch: int, flops_per_image: float, peak: float, bf16_peak: float) -> dict:
    images_per_s = batch / timing.best
    achieved = images_per_s * flops_per_image / 1e9
    return {"images_per_s": images_per_s, "images_per_s_median": batch / timing.median, "gflops_per_s": achieved,
            "share_of_peak": achieved / peak, "share_of_bf16_peak": achieved / bf16_peak}


def measure(args: argparse.Namespace) -> dict:
    config = default_unet_config(args.quick)
    batch = args.batch
    clock = CLOCKS[args.clock]
    names = ["diffvae", "diffusers"]
    flops_per_image = {}
    for name in names:
        model = build_unet(name, config)
        flops_per_image[name] = count_flops(unet_step(model, batch, torch.float32)) / batch
    families = family_models(args.quick)
    family_flops = {name: count_flops(engine_step(copy.deepcopy(model), data, torch.float32)) / n
                    for name, (model, data, n) in families.items()}
    results: dict = {"machine": machine_info(), "batch": batch, "image_shape": list(IMAGE_SHAPE),
                     "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
                     "gflops_per_image": {k: v / 1e9 for k, v in flops_per_image.items()},
                     "family_batch": {name: n for name, (_, _, n) in families.items()},
                     "family_gflops_per_image": {k: v / 1e9 for k, v in family_flops.items()},
                     "peaks": {}, "precisions": {}, "families": {}}
    for precision in args.precisions:
        results["peaks"][precision] = peak_gflops(PRECISIONS[precision], quick=args.quick, clock=clock)
    for precision in args.precisions:
        dtype = PRECISIONS[precision]
        steps = {name: unet_step(build_unet(name, config), batch, dtype) for name in names}
        unet_times = interleaved_rounds(steps, args.rounds, args.steps, args.warmup, clock)
        family_steps = {name: engine_step(copy.deepcopy(model), data, dtype) for name, (model, data, _) in families.items()}
        family_times = interleaved_rounds(family_steps, args.rounds, args.steps, args.warmup, clock)
        # Measured again after the rounds: on a shared machine either measurement can be disturbed.
        after = peak_gflops(dtype, quick=args.quick, clock=clock)
        results["peaks"][precision] = {k: max(v, after[k]) for k, v in results["peaks"][precision].items()}
        results["precisions"][precision] = {"unet": unet_times, "families": family_times}
    bf16_peak = results["peaks"].get("bf16", results["peaks"][args.precisions[0]])["peak"]
    for precision in args.precisions:
        peak = results["peaks"][precision]["peak"]
        times = results["precisions"][precision]
        row = {name: _rate(times["unet"][name], batch, flops_per_image[name], peak, bf16_peak) for name in names}
        row["speedup"] = row["diffvae"]["images_per_s"] / row["diffusers"]["images_per_s"]
        results["precisions"][precision] = row
        results["families"][precision] = {name: _rate(times["families"][name], families[name][2], family_flops[name], peak, bf16_peak)
                                          for name in families}
    if args.profile and "bf16" in args.precisions:
        results["profile"] = profile_unets(config, batch, results["peaks"]["bf16"]["conv"])
    return results


def profile_unets(config: UNetConfig, batch: int, conv_peak: float) -> dict:
    """Top ops of both UNets' bf16 training step; the convolutions' achieved GFLOP/s inside the step;
    and the bound on diffvae's speedup if everything but its convolutions took no time."""
    out = {}
    for name in ("diffvae", "diffusers"):
        step = unet_step(build_unet(name, config), batch, torch.bfloat16)
        profile = profile_top_ops(step, calls=3)
        profile["conv_gflops_per_s"] = conv_flops(step) / 1e9 / (profile["conv_ms_per_call"] / 1e3)
        profile["conv_share_of_conv_peak"] = profile["conv_gflops_per_s"] / conv_peak
        out[name] = profile
    out["speedup_bound_if_only_convs"] = out["diffusers"]["ms_per_call"] / out["diffvae"]["conv_ms_per_call"]
    out["alternatives"] = alternatives(config, batch)
    return out


def alternatives(config: UNetConfig, batch: int, repeats: int = 5) -> list[dict]:
    """Forward + backward under bf16 autocast of the layers the UNet is made of, in the layout or kernel
    it uses vs the alternative: GroupNorm and 3×3 conv at full resolution in NCHW vs channels_last, and
    attention at the lowest resolution as dense matmuls vs ``scaled_dot_product_attention``."""
    from diffvae.nn.unet import attention

    torch.manual_seed(0)
    size, width = IMAGE_SHAPE[1], config.channels
    low = -(-size // 2 ** (len(config.channel_mult) - 1))  # ceil: the lowest resolution (7 for 28, 3 levels)
    low_width = config.channels * config.channel_mult[-1]
    heads = max(1, low_width // 64)
    norm = torch.nn.GroupNorm(config.groups, width)
    conv = torch.nn.Conv2d(width, width, 3, padding=1)
    conv_cl = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    x = torch.randn(batch, width, size, size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    q, k, v = (torch.randn(batch, heads, low * low, low_width // heads) for _ in range(3))

    def run(module_fn, *inputs) -> Callable[[], None]:
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        for leaf, original in zip(leaves, inputs):
            if original.is_contiguous(memory_format=torch.channels_last) and not original.is_contiguous():
                leaf.data = leaf.data.contiguous(memory_format=torch.channels_last)

        def call() -> None:
            with autocast_context(torch.bfloat16):
                out = module_fn(*leaves)
            out.float().sum().backward()

        return call

    pairs = [
        (f"GroupNorm({config.groups}, {width}) at {size}×{size}", "NCHW", run(norm, x), "channels_last", run(norm, x_cl)),
        (f"3×3 conv {width}→{width} at {size}×{size}", "NCHW", run(conv, x), "channels_last", run(conv_cl, x_cl)),
        (f"attention, {low * low} positions, {heads} head(s) of {low_width // heads}", "dense matmuls", run(attention, q, k, v),
         "SDPA", run(torch.nn.functional.scaled_dot_product_attention, q, k, v)),
    ]
    unet = build_unet("diffvae", config)
    for p in unet.parameters():
        p.grad = torch.randn_like(p) * 1e-3

    def adamw_step(fused: bool) -> Callable[[], None]:
        params = [p.detach().clone().requires_grad_() for p in unet.parameters()]
        for p, original in zip(params, unet.parameters()):
            p.grad = original.grad.clone()
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), fused=fused or None)
        return optimizer.step

    pairs.append((f"AdamW step, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters", "default, per-tensor loop on CPU (engine)",
                  adamw_step(False), "fused", adamw_step(True)))
    rows = []
    for what, used_name, used, other_name, other in pairs:
        times = interleaved_rounds({"used": used, "other": other}, rounds=repeats, calls=1, warmup=2)
        rows.append({"layer": what, "used": used_name, "used_ms": 1e3 * times["used"].best, "alternative": other_name,
                     "alternative_ms": 1e3 * times["other"].best})
    return rows


def markdown(results: dict) -> str:
    gflops = results["gflops_per_image"]
    settings = results["settings"]
    lines = [
        f"**UNet training step vs diffusers** — `DDPMConfig()` UNet {results['config']['channels']} wide, "
        f"channel_mult {tuple(results['config']['channel_mult'])}, batch {results['batch']}, image {tuple(results['image_shape'])}, "
        f"{settings['clock']} clock, best of {settings['rounds']} rounds of {settings['steps']} steps. {machine_line(results['machine'])}.",
        "",
        "| precision | model | GFLOP/image | images/s (best) | images/s (median) | GFLOP/s | % of peak | % of bf16 peak | speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for precision, row in results["precisions"].items():
        for name in ("diffvae", "diffusers"):
            r = row[name]
            speedup = f"**{row['speedup']:.2f}×**" if name == "diffvae" else ""
            lines.append(f"| {precision} | {name} | {gflops[name]:.3f} | {r['images_per_s']:.1f} | {r['images_per_s_median']:.1f} "
                         f"| {r['gflops_per_s']:.0f} | {100 * r['share_of_peak']:.0f}% | {100 * r['share_of_bf16_peak']:.0f}% | {speedup} |")
    lines += ["", "**Family training steps** (the engine's step: autocast, `training_loss`, backward, clip, AdamW, EMA), "
              "each family's default batch, random mnist-shaped data.", "",
              "| precision | family stage | batch | GFLOP/image | images/s (best) | images/s (median) | GFLOP/s | % of peak | % of bf16 peak |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for precision, rows in results["families"].items():
        for name, r in rows.items():
            lines.append(f"| {precision} | {name} | {results['family_batch'][name]} | {results['family_gflops_per_image'][name]:.3f} "
                         f"| {r['images_per_s']:.1f} | {r['images_per_s_median']:.1f} | {r['gflops_per_s']:.0f} "
                         f"| {100 * r['share_of_peak']:.0f}% | {100 * r['share_of_bf16_peak']:.0f}% |")
    lines.append("")
    for precision, p in results["peaks"].items():
        lines.append(f"- {precision} peak: matmul {p['matmul']:.0f} GFLOP/s, 3×3 conv {p['conv']:.0f} GFLOP/s (the larger is \"peak\")")
    profile = results.get("profile")
    if profile:
        bf16 = results["precisions"]["bf16"]
        verdict = "met" if bf16["speedup"] >= SPEEDUP_TARGET else "missed"
        lines += ["", f"Target ≥ {SPEEDUP_TARGET}× diffusers at the same FLOPs (bf16): **{verdict}** ({bf16['speedup']:.2f}×). "
                  f"Convolutions are {100 * profile['diffvae']['conv_share']:.0f}% of diffvae's bf16 step and run at "
                  f"{profile['diffvae']['conv_gflops_per_s']:.0f} GFLOP/s ({100 * profile['diffvae']['conv_share_of_conv_peak']:.0f}% "
                  f"of the 3×3 conv peak); if everything else took no time diffvae would be at most "
                  f"{profile['speedup_bound_if_only_convs']:.2f}× diffusers' measured step. "
                  f"{needed_sentence(profile)}", ""]
        for name in ("diffvae", "diffusers"):
            lines += [profile_markdown(profile[name], f"{name} UNet, bf16 training step, batch {results['batch']}"), ""]
        lines += ["Layout and kernel choices, re-measured (forward + backward, bf16 autocast, batch "
                  f"{results['batch']}, best of 5):", "", "| layer | used | ms | alternative | ms | alternative / used |",
                  "|---|---|---:|---|---:|---:|"]
        for row in profile["alternatives"]:
            lines.append(f"| {row['layer']} | {row['used']} | {row['used_ms']:.2f} | {row['alternative']} | {row['alternative_ms']:.2f} "
                         f"| {row['alternative_ms'] / row['used_ms']:.2f}× |")
    return "\n".join(lines).rstrip()


def needed_sentence(profile: dict) -> str:
    """How much of diffvae's non-convolution time would have to go for the speedup target (profiled times)."""
    ours, theirs = profile["diffvae"], profile["diffusers"]
    other = ours["ms_per_call"] - ours["conv_ms_per_call"]
    allowed = theirs["ms_per_call"] / SPEEDUP_TARGET - ours["conv_ms_per_call"]
    if allowed <= 0:
        return f"Even with no other work, {SPEEDUP_TARGET}× would need faster convolutions."
    return (f"Under the profiler the step is {ours['ms_per_call']:.0f} ms vs diffusers' {theirs['ms_per_call']:.0f} ms; "
            f"{SPEEDUP_TARGET}× would need diffvae's non-convolution work to fall from {other:.0f} to {allowed:.0f} ms "
            f"per step, while no single non-convolution op below takes more than "
            f"{max(op['share'] for op in ours['top_ops'] if 'conv' not in op['op'].lower()) * 100:.0f}% of the step.")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting (16 base channels, batch 4, one round)")
    parser.add_argument("--batch", type=int, default=64, help="UNet comparison batch (the DDPM family's default)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per model (best is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="profile the bf16 UNet steps (default: on, off with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (needs --threads 1; immune to other processes)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/bench_train[_quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.rounds, args.warmup = 4, 1, 1, 1
    if args.profile is None:
        args.profile = not args.quick
    check_clock(args.clock, args.threads)
    setup_threads(args.threads)
    results = measure(args)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    print(markdown(results))
    out = args.out or results_path("bench_train", args.quick)
    write_json(out, results)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
