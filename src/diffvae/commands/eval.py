"""``diffvae eval RUN [--json]``: the one evaluation every family gets (:func:`diffvae.evaluate.evaluate`)."""

from __future__ import annotations

import argparse
import json

from diffvae.api import load
from diffvae.commands.options import IMAGES, add_sampling_arguments, check_images_fit, device_name, sampling_kwargs
from diffvae.evaluate import EvalConfig, check_eval_guidance, evaluate, format_table
from diffvae.outputs import check_output
from diffvae.precision import check_sampling_precision
from diffvae.ranges import Range
from diffvae.runs import atomic_write_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--n", type=IMAGES.parser(), default=None, help="samples for FID/KID/precision/recall")
    p.add_argument("--bound-n", type=IMAGES.parser(), default=None, help="held-out images for the bound")
    p.add_argument("--iwae", type=Range(int, 0, 10_000).parser(), default=None,
                   help="importance samples for the IWAE bound (VAE)")
    p.add_argument("--quick", action="store_true", help="small sample sizes (for smoke tests)")
    p.add_argument("--out", default=None, help="also write the JSON here (a .json file)")
    add_sampling_arguments(p)
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="conditional runs: guidance scale of the class-balanced samples (default 1)")
    p.add_argument("--precision", default="auto", help="of sampling: auto (bf16 where the CPU/GPU runs it natively, else fp32) | bf16 | fp32")


def run(args) -> int:
    out = check_output(args.out, args.force, (".json",)) if args.out else None
    check_sampling_precision(args.precision)
    model = load(args.run, device=device_name(args))
    kwargs = sampling_kwargs(args, model)
    cfg = EvalConfig.quick() if args.quick else EvalConfig()
    for name in ("n", "bound_n", "iwae"):  # ranges checked at parse time
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, {"n": "n_samples", "bound_n": "bound_n", "iwae": "iwae_samples"}[name], value)
    cfg.seed = args.seed
    cfg.sampler_kwargs = kwargs
    cfg.precision = args.precision
    cfg.guidance = check_eval_guidance(model, args.guidance)
    check_images_fit(cfg.n_samples, model)
    results = evaluate(model, cfg, progress=not args.json)
    text = json.dumps(results, indent=2, sort_keys=True)
    if out is not None:

        atomic_write_text(out, text + "\n")
    print(text if args.json else format_table(results))
    return 0
