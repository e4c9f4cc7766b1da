"""``diffvae invert RUN``: held-out images to their latent and back; the round-trip error."""

from __future__ import annotations

import argparse
import json

import torch

from diffvae.api import load, run_data
from diffvae.commands.options import IMAGES, add_sampling_arguments, device_name, sampling_kwargs
from diffvae.interpolation import roundtrip
from diffvae.outputs import check_output, write_images


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--n", type=IMAGES.parser(), default=64)
    p.add_argument("--out", default=None, help="PNG: originals above reconstructions")
    add_sampling_arguments(p)
    p.add_argument("--force", action="store_true")


def run(args) -> int:
    out = check_output(args.out, args.force) if args.out else None
    model = load(args.run, device=device_name(args))
    kwargs = sampling_kwargs(args, model)
    dataset = run_data(model)
    x = dataset.test[: args.n]
    with torch.inference_mode():
        rec, err = roundtrip(model, x, **kwargs)
    if out is not None:  # before the figures are printed: a write that fails is then the only output
        write_images(torch.cat([x, rec.cpu()]), out, nrow=min(x.shape[0], 16) if x.shape[0] <= 16 else None)
    print(json.dumps(err, indent=2, sort_keys=True))
    return 0
