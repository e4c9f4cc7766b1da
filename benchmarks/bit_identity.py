"""Bit-identity check for behaviour-preserving refactors (issue 26).

Trains every family a few steps on ``--data digits`` in fp32 with a fixed seed, hashes each checkpoint's
tensors (name, dtype, shape, bytes) and records ``eval --json --quick`` figures, into one JSON file:

    PYTHONPATH=src python benchmarks/bit_identity.py /tmp/layering_before.json
    PYTHONPATH=src python benchmarks/bit_identity.py /tmp/layering_after.json --compare /tmp/layering_before.json

Run both with the same torch on the same machine; the JSON files must be equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

RUNS = {
    "vae": ["vae"],
    "ddpm": ["ddpm"],
    "ldm": ["ldm"],
    "flow": ["flow"],
    "ddpm-conditional": ["ddpm", "--conditional"],
}
COMMON = ["--data", "digits", "--precision", "fp32", "--seed", "1", "--device", "cpu", "--quiet"]
TIMED = ("second", "time", "speed", "ms_per")
EVAL = ["--json", "--quick", "--seed", "0", "--precision", "fp32", "--device", "cpu"]


def diffvae(*args: str) -> str:
    cmd = [sys.executable, "-m", "diffvae", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return done.stdout


def tensor_hashes(run: Path) -> dict[str, str]:
    hashes = {}
    for file in sorted(run.rglob("*.safetensors")):
        digest = hashlib.sha256()
        tensors = load_file(str(file))
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(-1).view(torch_uint8()).numpy().tobytes() if t.numel() else b"")
        hashes[str(file.relative_to(run))] = digest.hexdigest()
    return hashes


def torch_uint8():
    import torch

    return torch.uint8


def untimed(figures):
    """The figures without wall-clock measurements (those differ from run to run), at any depth."""
    if isinstance(figures, dict):
        return {k: untimed(v) for k, v in figures.items() if not any(word in k for word in TIMED)}
    if isinstance(figures, list):
        return [untimed(v) for v in figures]
    return figures


def measure(steps: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, family_args in RUNS.items():
            run = Path(tmp) / name
            diffvae("train", *family_args, *COMMON, "--steps", str(steps), "--out", str(run))
            figures = json.loads(diffvae("eval", str(run), *EVAL))
            out[name] = {"checkpoints": tensor_hashes(run), "eval": untimed(figures)}
            print(name, out[name]["checkpoints"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compare", help="a JSON file of an earlier run; exit 1 where anything differs")
    parser.add_argument("--reuse", action="store_true", help="compare OUT as it is, without training again")
    args = parser.parse_args()
    result = json.loads(Path(args.out).read_text()) if args.reuse else measure(args.steps)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        for entries in (before, result):
            for entry in entries.values():
                entry["eval"] = untimed(entry["eval"])
        diff = [k for k in sorted(set(before) | set(result)) if before.get(k) != result.get(k)]
        print("identical" if not diff else f"DIFFERENT: {diff}")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
