"""``diffvae sample RUN --n N --out grid.png|samples.npz``: draw samples from a trained run."""

from __future__ import annotations

import argparse
import sys

import torch

from diffvae.api import load
from diffvae.commands.options import IMAGES, add_sampling_arguments, check_images_fit, device_name, sampling_kwargs
from diffvae.conditioning import check_guidance_has_classes, sampling_labels
from diffvae.outputs import check_output, write_images
from diffvae.precision import check_sampling_precision, sampling_precision


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--n", type=IMAGES.parser(), default=64, help=f"in {IMAGES.text()}")
    p.add_argument("--out", required=True, help="grid.png, or samples.npz for the raw uint8 array")
    add_sampling_arguments(p)
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--class", dest="class_", type=int, default=None, metavar="K", help="conditional runs: samples of class K")
    p.add_argument("--classes", default=None, metavar="A,B,...", help="conditional runs: the samples cycle through these classes")
    p.add_argument("--guidance", type=float, default=None, metavar="W", help="classifier-free guidance scale (default 1)")
    p.add_argument("--precision", default="auto", help="of sampling: auto (bf16 where the CPU/GPU runs it natively, else fp32) | bf16 | fp32")


def run(args) -> int:
    out = check_output(args.out, args.force)
    check_sampling_precision(args.precision)
    model = load(args.run, device=device_name(args))
    kwargs = sampling_kwargs(args, model)

    kwargs.update(sampling_labels(model, args.n, args.class_, args.classes, args.guidance))  # --class/--classes/--guidance
    check_guidance_has_classes(args.class_, args.classes, args.guidance)
    check_images_fit(args.n, model)
    generator = torch.Generator(device=device_name(args)).manual_seed(args.seed)
    with torch.inference_mode(), sampling_precision(model, args.precision):
        images = model.sample(args.n, generator=generator, **kwargs)
    write_images(images, out)
    print(f"diffvae: wrote {args.n} samples → {out}", file=sys.stderr)
    return 0
