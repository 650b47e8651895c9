"""benchmarks/gemm_harness.cpp, the GEMM linked alone for C++ timing and perf:
it builds from the sources as documented, checks its product against the
reference kernel, and refuses bad arguments."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    exe = tmp_path_factory.mktemp("harness") / "gemm_harness"
    # -O1: the build is what is tested here, not the speed.
    cmd = ["g++", "-O1", "-fopenmp", "-std=c++17", f"-I{ROOT / 'csrc'}", "-o", str(exe),
           str(ROOT / "benchmarks" / "gemm_harness.cpp"), str(ROOT / "csrc" / "cpu" / "gemm_cpu.cpp"),
           str(ROOT / "csrc" / "cpu" / "workspace_cpu.cpp"), str(ROOT / "csrc" / "cpu" / "cpu_info.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return exe


@pytest.mark.parametrize("shape", [(20, 100, 37), (200, 300, 600), (1, 1, 1)])
def test_harness_times_a_checked_product(harness, shape):
    proc = subprocess.run([str(harness), *map(str, shape), "2", "0.05", "100"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m, n, k = shape
    line = re.fullmatch(rf"{m}x{n}x{k}: median ([0-9.]+) ms \(([0-9.]+) GFLOP/s\), best ([0-9.]+) ms "
                        r"\(([0-9.]+) GFLOP/s\); (\d+)% / (\d+)% of 100\n", proc.stdout)
    assert line, proc.stdout
    # Against a peak of 100 GFLOP/s the shares are the rates themselves (the
    # rates printed to 0.1, the shares rounded to whole percents).
    for rate, share in ((line.group(2), line.group(5)), (line.group(4), line.group(6))):
        assert abs(float(rate) - int(share)) <= 0.55, proc.stdout


@pytest.mark.parametrize("args", [[], ["10", "10"], ["0", "10", "10"], ["10", "10", "10", "-1"]])
def test_harness_refuses_bad_arguments(harness, args):
    proc = subprocess.run([str(harness), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "usage" in proc.stderr or "must be positive" in proc.stderr
