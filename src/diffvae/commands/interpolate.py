"""``diffvae interpolate RUN --out strip.png``: strips between held-out images through the latent, or between classes."""

from __future__ import annotations

import argparse
import sys

import torch

from diffvae.api import load, run_data
from diffvae.commands.options import add_sampling_arguments, device_name, sampling_kwargs
from diffvae.conditioning import num_classes, sampling_labels
from diffvae.errors import DiffvaeError
from diffvae.interpolation import class_endpoints, class_strip, interpolation_strip, parse_class_pair
from diffvae.outputs import check_output, write_images
from diffvae.ranges import Range


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--out", required=True, help="strip.png")
    p.add_argument("--pairs", type=Range(int, 1, 10_000).parser(), default=4)
    p.add_argument("--frames", type=Range(int, 2, 1_000).parser(), default=8)
    p.add_argument("--path", default="slerp", help="slerp | linear")
    p.add_argument("--classes", default=None, metavar="A,B",
                   help="from class A to class B: a conditional run moves the condition linearly (noise fixed per "
                        "strip; --path does not apply), an unconditional one walks between held-out images of A and B")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="with --classes on a conditional run: classifier-free guidance scale (default 1)")
    add_sampling_arguments(p)
    p.add_argument("--force", action="store_true")


def run(args) -> int:
    """Strips between random held-out pairs; with --classes A,B between classes (diffvae.interpolation):
    a conditional run moves its condition from A to B, an unconditional one walks between images of A and B."""
    if args.path not in ("slerp", "linear"):
        raise DiffvaeError(f"--path must be slerp or linear, got {args.path!r}")
    if args.guidance is not None and args.classes is None:
        raise DiffvaeError("--guidance applies with --classes A,B (interpolating the condition of a conditional run)")
    out = check_output(args.out, args.force)
    model = load(args.run, device=device_name(args))
    kwargs = sampling_kwargs(args, model)
    g = torch.Generator().manual_seed(args.seed)
    if args.classes is not None and num_classes(model):  # the condition moves; no data needed
        a, b = parse_class_pair(args.classes, num_classes(model))
        guidance = sampling_labels(model, args.pairs, guidance=args.guidance).get("guidance")  # refused in one line if bad
        noise = torch.Generator(device=device_name(args)).manual_seed(args.seed)  # frame 0 = `sample --class A --seed S`
        with torch.inference_mode():
            frames = class_strip(model, a, b, args.pairs, args.frames, noise, guidance, **kwargs)
    else:
        if args.guidance is not None:
            sampling_labels(model, args.pairs, guidance=args.guidance)  # refuses: the run is unconditional
        dataset = run_data(model)
        if args.classes is not None:
            if dataset.test_labels is None:
                raise DiffvaeError(f"--classes needs labelled data, but {dataset.name} has no labels")
            a, b = parse_class_pair(args.classes, dataset.num_classes)
            ia, ib = class_endpoints(dataset.test, dataset.test_labels, a, b, args.pairs, g)
        else:
            idx = torch.randperm(dataset.test.shape[0], generator=g)[: 2 * args.pairs]
            if idx.numel() < 2 * args.pairs:
                raise DiffvaeError(f"the held-out split has only {dataset.test.shape[0]} images")
            ia, ib = idx[: args.pairs], idx[args.pairs:]
        with torch.inference_mode():
            frames = interpolation_strip(model, dataset.test[ia], dataset.test[ib], args.frames, path=args.path, **kwargs)
    write_images(frames.flatten(0, 1), out, nrow=args.frames)
    print(f"diffvae: wrote {args.pairs} interpolation strips of {args.frames} frames → {out}", file=sys.stderr)
    return 0
