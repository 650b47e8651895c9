"""One build must run on any x86-64 and use what the CPU has (DESIGN: no SIGILL).

Runs scripts/check_simd_dispatch.sh, which compiles the kernels with the package's
flags plus a small C++ driver and executes it under qemu as a baseline x86-64, a
pre-AVX and an AVX2 CPU, and natively: each must select its own instruction set
and match the reference kernels. Needs qemu-user and g++ (.ci/run installs qemu).
"""
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_simd_dispatch.sh"

pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 instruction-set dispatch only"),
    pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user not installed"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed"),
]


def test_kernels_pick_their_instruction_set_on_old_and_new_cpus():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for cpu, level in (("qemu64", "scalar"), ("Nehalem", "scalar"), ("Haswell", "avx2")):
        section = proc.stdout.split(f"== {cpu}")[1].split("==")[0]
        assert f"SIMD level: {level}" in section and "OK" in section, section
