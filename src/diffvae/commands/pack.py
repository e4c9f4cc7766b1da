"""``diffvae data pack SPEC --out DIR``: decode a data spec once into memory-mapped shards (:mod:`diffvae.pack`)."""

from __future__ import annotations

from diffvae.data import pack
from diffvae.pack import read_manifest
from diffvae.ranges import MAX_SIZE, Range


def add_arguments(parser) -> None:
    """The flags of ``diffvae data pack``."""
    parser.add_argument("spec", help="the data spec to decode (mnist, folder:PATH, npz:PATH, ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the pack directory to write")
    parser.add_argument("--size", type=Range(int, 1, MAX_SIZE).parser(), default=None, help="resize images to SIZE×SIZE")
    parser.add_argument("--key", default=None, help="array name inside an .npz")
    parser.add_argument("--binarize", action="store_true", help="threshold the images to {0, 255}")
    parser.add_argument("--limit", type=Range(int, 1, 10**9).parser(), default=None,
                        help="keep only the first N training images")
    parser.add_argument("--force", action="store_true", help="replace an existing pack at --out")


def run(args) -> int:
    """``diffvae data pack``: write the pack, print one line saying what it holds."""
    out = pack(args.spec, args.out, size=args.size, key=args.key, binarize=args.binarize, limit=args.limit,
               force=args.force)
    manifest = read_manifest(out)
    c, h, w = manifest["image_shape"]
    print(f"packed {manifest['train_size']} train + {manifest['test_size']} test images ({c}×{h}×{w} uint8) "
          f"of {args.spec} into {out}, content hash {manifest['content_hash']}; use it as --data packed:{out}")
    return 0
