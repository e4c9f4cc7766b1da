"""``diffvae data info SPEC``: what a data spec yields."""

from __future__ import annotations

import argparse

from diffvae.commands.options import SIZE
from diffvae.data import describe, load_data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("--size", type=SIZE.parser(), default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--binarize", action="store_true")


def run(args) -> int:
    print(describe(load_data(args.spec, size=args.size, key=args.key, binarize=args.binarize)))
    return 0
