"""Every CPU kind's paths on the machine at hand (issue 27). DEVELOPERS.md names three: Intel with AMX, AMD EPYC
with AVX-512 bf16, AMD EPYC with AVX2 only. What diffvae decides from the kind is the precision ``auto`` picks
(bf16 where native, fp32 on AVX2) and, through it, the measured speed behind the compute-aware recipes; what torch
decides is which kernels run (oneDNN's ISA, ATen's vector width). ``$DIFFVAE_CPU_KIND`` forces diffvae's decision
and ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` cap torch's kernels at that kind's instructions, so the tests
that failed on another kind (the engine-step identity on an AMD EPYC) run here as they would there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffvae.cli import main
from diffvae.device import CPU_KIND_VARIABLE, CPU_KINDS, cpu_kind, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
KERNEL_LIMITS = {  # torch's kernels capped at each kind's instructions (a cap above the machine's is no cap)
    "amx": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "ALL"},
    "avx512_bf16": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
# the tests whose outcome depends on the kind: the engine step (optimizer kernels), precision, fused AdamW
KIND_SENSITIVE_TESTS = ["tests/test_train.py::test_train_step_is_the_engines_step", "tests/test_precision.py",
                        "tests/test_fused_adamw.py"]


def kind_environment(kind: str) -> dict[str, str]:
    return {**os.environ, CPU_KIND_VARIABLE: kind, **KERNEL_LIMITS[kind], "PYTHONPATH": str(ROOT / "src")}


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_a_forced_kind_decides_the_automatic_precision(monkeypatch, kind):
    monkeypatch.setenv(CPU_KIND_VARIABLE, kind)
    assert cpu_kind() == kind
    expected = None if kind == "avx2" else torch.bfloat16
    assert resolve_precision("auto", torch.device("cpu")) is expected
    assert resolve_precision("fp32", torch.device("cpu")) is None  # an explicit precision is never overridden
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_without_the_variable_the_kind_is_this_machines(monkeypatch):
    monkeypatch.delenv(CPU_KIND_VARIABLE, raising=False)
    amx, avx512 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    assert cpu_kind() == ("amx" if amx else "avx512_bf16" if avx512 else "avx2")


def test_an_unknown_kind_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(CPU_KIND_VARIABLE, "avx9")
    assert main(["train", "vae", "--data", "digits", "--steps", "2", "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffvae: error: ${CPU_KIND_VARIABLE} must be one of amx, avx512_bf16, avx2") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_each_kinds_paths_pass_the_kind_sensitive_tests(kind, tmp_path):
    """The kind-sensitive tests, in a process that takes ``kind``'s paths with torch's kernels capped to match."""
    env = kind_environment(kind)
    probe = subprocess.run([sys.executable, "-c", "import json, torch; from diffvae.device import cpu_kind, resolve_precision; "
                            "print(json.dumps([cpu_kind(), torch.backends.cpu.get_cpu_capability(), "
                            "str(resolve_precision('auto', torch.device('cpu')))]))"],
                           env=env, capture_output=True, text=True, cwd=ROOT)
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen_kind, capability, precision = json.loads(probe.stdout)
    assert seen_kind == kind and precision == ("None" if kind == "avx2" else "torch.bfloat16")
    if kind == "avx2":
        assert capability == "AVX2"  # ATen really runs its AVX2 kernels
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *KIND_SENSITIVE_TESTS],
                           env=env, capture_output=True, text=True, cwd=ROOT)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout and " failed" not in tests.stdout
