"""Why latent diffusion mode-collapsed on colour data, and the autoencoder recipe that cures it (issue 24).

Each setting trains ``diffvae train ldm --data colours`` for SECONDS of wall time (175 s: the ldm's share of a
15-minute four-family compare) and measures, under the data set's own classifier (the feature network), the class
coverage (histogram entropy / log2 K, share of classes under half their held-out share) of the autoencoder's
reconstructions of 500 held-out images and of 500 samples, plus the reconstructions' PSNR. ``--ae-only`` gives
stage 1 90% of the time and skips sampling (the autoencoder on its own).

    python benchmarks/bench_colour_ldm.py                  # the settings below, one process each, one thread
    python benchmarks/bench_colour_ldm.py --quick          # one setting, 20 s (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, results_path, write_json  # noqa: E402

from diffvae.api import load  # noqa: E402
from diffvae.cli import main as cli  # noqa: E402
from diffvae.data import load_data  # noqa: E402
from diffvae.metrics.coverage import label_coverage  # noqa: E402
from diffvae.metrics.features import get_feature_extractor, recognisability  # noqa: E402

SETTINGS = {  # name: (seconds, stage 1 only, train flags)
    "before: 30% at the run's batch 64, lr 1e-3": (175, False, ["--ae-steps-fraction", "0.3", "--ae-batch-size", "0", "--ae-lr", "0"]),
    "stage 1 alone, 53 s, batch 64, lr 3e-3": (53, True, ["--ae-batch-size", "64", "--ae-lr", "3e-3"]),
    "stage 1 alone, 53 s, batch 16, lr 1e-3": (53, True, ["--ae-batch-size", "16", "--ae-lr", "1e-3"]),
    "stage 1 alone, 53 s, batch 16, lr 2e-3": (53, True, ["--ae-batch-size", "16", "--ae-lr", "2e-3"]),
    "stage 1 alone, 105 s, batch 16, lr 1e-3": (105, True, ["--ae-batch-size", "16", "--ae-lr", "1e-3"]),
    "30% at batch 16, lr 2e-3": (175, False, ["--ae-steps-fraction", "0.3", "--ae-batch-size", "16", "--ae-lr", "2e-3"]),
    "today: 60% at batch 16, lr 2e-3 (the colour preset)": (175, False, []),
}


def coverage(extractor, dataset, images: torch.Tensor) -> dict:
    rec = recognisability(extractor.predict_proba(images))
    return {**label_coverage(rec["class_histogram"], dataset.test_labels, dataset.num_classes),
            "histogram": [round(v, 3) for v in rec["class_histogram"]]}


def measure(name: str, seconds: float, ae_only: bool, flags: list[str], folder: Path) -> dict:
    run = folder / "run"
    budget = seconds / 0.9 if ae_only else seconds
    stage_flags = ["--ae-steps-fraction", "0.9"] if ae_only else []
    started = time.perf_counter()
    assert cli(["train", "ldm", "--data", "colours", "--budget", str(budget / 60), "--quiet", "--seed", "0",
                "--out", str(run), *stage_flags, *flags]) == 0
    row = {"setting": name, "train_s": round(time.perf_counter() - started, 1)}
    model, dataset = load(run), load_data("colours")
    extractor = get_feature_extractor(dataset)
    test = dataset.test[:500]
    with torch.no_grad():
        recon = model.decode(model.encode(test)[0])
    row["ae_steps"] = json.loads((run / "autoencoder_metrics.jsonl").read_text().splitlines()[-1])["step"]
    row["psnr_db"] = round(float(10 * torch.log10(255.0**2 / (recon.float() - test.float()).square().mean())), 2)
    row["reconstructions"] = coverage(extractor, dataset, recon)
    if not ae_only:
        with torch.no_grad():
            samples = model.sample(500, generator=torch.Generator().manual_seed(0))
        row["samples"] = coverage(extractor, dataset, samples)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = {"today, 20 s": (20, False, [])} if args.quick else SETTINGS
    rows = []
    for name, (seconds, ae_only, flags) in settings.items():
        with tempfile.TemporaryDirectory(prefix="bench_colour_ldm.") as tmp:
            rows.append(measure(name, seconds, ae_only, flags, Path(tmp)))
        print(json.dumps(rows[-1]))
    write_json(results_path("bench_colour_ldm", args.quick), {"machine": machine_info(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
