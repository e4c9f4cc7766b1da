"""``diffvae compare --data SPEC --budget MINUTES --out DIR``: every family under one budget, and the report."""

from __future__ import annotations

import argparse

from diffvae.commands.options import SEED, add_config_argument, add_data_arguments
from diffvae.compare.pipeline import CompareConfig, run_compare
from diffvae.ranges import TRAIN_RANGES


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--budget", type=TRAIN_RANGES["budget_minutes"].parser(), default=None, metavar="MINUTES",
                   help="(default 15; --resume: the stored one)")
    p.add_argument("--out", required=True, metavar="DIR")
    add_config_argument(p)
    p.add_argument("--families", default=None, help="comma-separated (default: every registered family; --resume: the stored ones)")
    p.add_argument("--split", default=None, metavar="FAM=W,...",
                   help="relative training time per family, e.g. vae=1,ddpm=2,ldm=2 (default: each family's share)")
    p.add_argument("--seed", type=SEED.parser(), default=None, help="(default 0; --resume: the stored one)")
    p.add_argument("--conditional", action="store_true", default=None,
                   help="train every family on the labels and measure controllability (accuracy, guidance sweep)")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--forecast", default=None, metavar="MINUTES|Ngflop",
                   help="forecast every family's learning curves at this budget (e.g. 150, or 2e5gflop; default 10× --budget)")
    p.add_argument("--recipes-at-forecast", action="store_true", default=None,
                   help="train each family with the recipe its --forecast budget would get, so that recipe's curve is "
                        "forecast (default: the recipe of this budget; a forecast across a recipe switch is refused)")


def run(args) -> int:
    run_compare(CompareConfig(spec=args.data, out=args.out, budget_minutes=args.budget, families=args.families,
                              split=args.split, seed=args.seed, conditional=args.conditional, device=args.device, size=args.size, key=args.key,
                              binarize=args.binarize, limit=args.limit, resume=args.resume, force=args.force, quiet=args.quiet,
                              forecast=args.forecast, recipes_at_forecast=args.recipes_at_forecast))
    return 0
