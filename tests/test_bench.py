"""The benchmark suite's own machinery: FLOP counts, validation, targets, output
files, the peak and memory measurements. No timing is asserted anywhere."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import convx
from convx import _C, _kernels
from convx import functional as cxF
from convx.bench import memory, parse_threads
from convx.bench.cases import CONV_SHAPES, Case, all_cases, conv2d_flops, conv_shape_flops, select_cases
from convx.bench.models import alphago_policy, digits_cnn, model_flops
from convx.bench.report import Target, evaluate_targets, geomean
from convx.bench.suite import Row, run_case
from convx.bench.timing import TimingPlan
from convx.bench.validation import ValidationError, compare
from convx.cli import main as cli_main

TINY_PLAN = TimingPlan(budget_s=0.0, min_rounds=1, max_rounds=1, warmup_calls=0, min_sample_s=0.0)


def _case(name):
    [case] = [c for c in all_cases() if c.name == name]
    return case


# ---- FLOP counts ----------------------------------------------------------------------

def test_conv2d_flops_hand_computed():
    # LeNet's first layer: 24x24 outputs, 20 filters of 1x5x5, batch 64.
    assert conv2d_flops(N=64, C=1, K=20, P=24, Q=24, R=5, S=5) == 2 * 64 * 20 * 576 * 25 == 36_864_000
    # The 7x7 stride-2 stem: 224 + 2*3 - 7 = 223, // 2 + 1 = 112 outputs per side.
    stem = [s for s in CONV_SHAPES if s.label == "stem7x7"][0]
    assert stem.out_hw == (112, 112)
    assert conv_shape_flops(stem) == 1_888_223_232
    # groups divide the reduction: depthwise 3x3 over 8 channels is 9 multiply-adds per output.
    assert conv2d_flops(N=1, C=8, K=8, P=4, Q=4, R=3, S=3, groups=8) == 2 * 8 * 16 * 9


def test_model_flops_digits_cnn():
    x = torch.zeros(64, 1, 28, 28)
    conv1 = 2 * 64 * 25 * 26 * 26 * 1 * 9        # 19,468,800
    conv2 = 2 * 64 * 50 * 11 * 11 * 25 * 9       # 174,240,000
    dense = 2 * 64 * 1250 * 100 + 2 * 64 * 100 * 10
    forward = conv1 + conv2 + dense
    assert model_flops(digits_cnn(), x, train=False) == forward == 209_836_800
    # Training: forward + backward-weight everywhere + backward-data except the first layer.
    assert model_flops(digits_cnn(), x, train=True) == 3 * forward - conv1


def test_alphago_policy_shape():
    model = alphago_policy()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(192, 48, 5, 5)] + [(192, 192, 3, 3)] * 11 + [(1, 192, 1, 1)]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert tuple(model(torch.zeros(2, 48, 19, 19)).shape) == (2, 361)


def test_cases_cover_the_issue():
    names = [c.name for c in all_cases()]
    assert len(names) == len(set(names))
    assert sum(c.kind == "conv" for c in all_cases()) == 11 * 3
    assert sum(c.kind == "pool" for c in all_cases()) == 4
    assert [c.gemm_n for c in all_cases() if c.kind == "gemm"] == [1024, 2048]
    assert [c.name for c in select_cases(["lenet1"])] == [
        "conv lenet1 fwd", "conv lenet1 bwd_data", "conv lenet1 bwd_weight"]


# ---- validation -----------------------------------------------------------------------

def test_compare_rule():
    ref = np.linspace(-2.0, 2.0, 101)                  # float64 reference, max |ref| = 2
    torch_result = ref.astype(np.float32)              # torch's float32 error: rounding only
    assert compare("same", torch_result.copy(), torch_result, ref, rtol=1e-4).ok

    def off_by(delta, base=torch_result):
        out = base.copy()
        out[7] += delta
        return out

    assert compare("near", off_by(1e-4), torch_result, ref, rtol=1e-4).ok     # below 1e-4 x 2
    with pytest.raises(ValidationError, match="far"):
        compare("far", off_by(3e-4), torch_result, ref, rtol=1e-4)         # above it
    # Where torch itself is off, convx may be off by up to 10x as much.
    sloppy_torch = off_by(1e-3)
    assert compare("as torch", off_by(9e-3), sloppy_torch, ref, rtol=1e-4).ok
    with pytest.raises(ValidationError, match="worse than torch"):
        compare("worse than torch", off_by(1.1e-2), sloppy_torch, ref, rtol=1e-4)
    with pytest.raises(ValidationError, match="shape"):
        compare("shape", torch_result[:-1], torch_result, ref, rtol=1e-4)
    with pytest.raises(ValidationError, match="non-finite"):
        compare("nan", off_by(np.nan), torch_result, ref, rtol=1e-4)


def _perturb_one(result):
    """The same result with one element off by 1% of the largest magnitude."""
    if isinstance(result, torch.Tensor):  # stays differentiable, so a backward still runs
        delta = torch.zeros_like(result)
        delta.view(-1)[3] = 0.01 * result.detach().abs().max()
        return result + delta
    out = result.copy()
    out.reshape(-1)[3] += 0.01 * np.abs(out).max()
    return out


@pytest.mark.parametrize("case_name, module, attr", [
    ("conv lenet1 fwd", cxF, "conv2d"),
    ("conv lenet1 bwd_data", _kernels, "conv2d_backward_data"),
    ("conv lenet1 bwd_weight", _kernels, "conv2d_backward_weight"),
    ("maxpool 2x2s2 fwd+bwd vs torch nchw", cxF, "max_pool2d"),
    ("model alphago infer b1", cxF, "conv2d"),
])
def test_validation_catches_a_wrong_kernel(monkeypatch, case_name, module, attr):
    case = _case(case_name)
    good = run_case(case, 1, TINY_PLAN, peak_flops=None, measure_memory=False)
    assert good.status == "ok", good.error
    assert good.speedup is not None and good.speedup > 0

    real = getattr(module, attr)
    monkeypatch.setattr(module, attr, lambda *a, **k: _perturb_one(real(*a, **k)))
    bad = run_case(case, 1, TINY_PLAN, peak_flops=None, measure_memory=False)
    assert bad.status == "FAILED"
    assert bad.error.startswith("validation:")
    assert bad.speedup is None and bad.convx_ms is None  # a wrong kernel is never timed


def test_gemm_row_validates_and_counts_peak(monkeypatch):
    # A small square through the same workload: timed, 2 n^3 FLOPs, and a GEMM that
    # writes one wrong element into its output is caught before timing.
    case = Case("gemm 96^3 vs torch.mm", "gemm", gemm_n=96)
    good = run_case(case, 1, TINY_PLAN, peak_flops=1e12, measure_memory=False)
    assert good.status == "ok", good.error
    assert good.flops == 2 * 96 ** 3 and good.dims == "96x96x96"
    assert good.convx_peak_pct == pytest.approx(100 * good.convx_gflops * 1e9 / 1e12)

    real = _C.gemm

    def off_by_one_element(a, b, c, *args, **kwargs):
        real(a, b, c, *args, **kwargs)
        c.reshape(-1)[3] += 0.01 * np.abs(c).max()

    monkeypatch.setattr(_C, "gemm", off_by_one_element)
    bad = run_case(case, 1, TINY_PLAN, peak_flops=1e12, measure_memory=False)
    assert bad.status == "FAILED" and bad.error.startswith("validation:")


def test_a_crashing_kernel_marks_the_row_failed(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(_kernels, "conv2d_backward_weight", broken)
    row = run_case(_case("conv lenet1 bwd_weight"), 1, TINY_PLAN, peak_flops=None, measure_memory=False)
    assert row.status == "FAILED" and "kernel exploded" in row.error


def test_run_case_restores_thread_counts():
    torch_before, convx_before = torch.get_num_threads(), convx.get_num_threads()
    other = 2 if torch_before == 1 else 1
    run_case(_case("conv lenet1 fwd"), other, TINY_PLAN, peak_flops=None, measure_memory=False)
    assert (torch.get_num_threads(), convx.get_num_threads()) == (torch_before, convx_before)


def test_row_records_algorithm_and_peak_fraction():
    row = run_case(_case("conv lenet1 fwd"), 1, TINY_PLAN, peak_flops=1e12, measure_memory=False)
    assert row.status == "ok", row.error
    # Whatever the dispatcher picked, it is the name convx itself reports.
    p = _C.Conv2dParams()
    p.N, p.C, p.H, p.W, p.K, p.R, p.S = 64, 1, 28, 28, 20, 5, 5
    assert row.algo == _C.conv2d_choose_algo(p, "forward")
    assert row.algo_calls == {f"conv2d_forward:{row.algo}": 1}
    assert row.convx_peak_pct == pytest.approx(100 * row.convx_gflops * 1e9 / 1e12)


# ---- targets --------------------------------------------------------------------------

def _row(name, kind, speedup, threads=1, status="ok", peak_pct=None, mem=(None, None)):
    return Row(name, kind, "", threads, status=status, speedup=speedup, convx_peak_pct=peak_pct,
               convx_mem_mb=mem[0], torch_mem_mb=mem[1])


def test_targets():
    rows = [_row("conv a fwd", "conv", 1.0), _row("conv b fwd", "conv", 4.0),
            _row("conv a fwd", "conv", 0.1, threads=2),      # other thread counts do not count
            _row("model digits_cnn train b64", "model", 1.6),
            _row("maxpool x fwd+bwd vs torch nchw", "pool", 4.0),
            _row("maxpool x fwd+bwd vs torch channels_last", "pool", 1.2),
            _row("gemm 1024^3 vs torch.mm", "gemm", 2.0, peak_pct=84.0),
            _row("gemm 2048^3 vs torch.mm", "gemm", 2.0, peak_pct=79.0)]
    targets = {t.name.split(" (")[0]: t for t in evaluate_targets(rows)}
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert targets["conv rows, geometric mean speed"].value == pytest.approx(2.0)
    assert targets["conv rows, geometric mean speed"].status == "PASS"
    assert targets["conv rows, slowest row"].value == 1.0 and targets["conv rows, slowest row"].status == "PASS"
    assert targets["digits-CNN training step, batch 64"].status == "PASS"
    assert targets["AlphaGo policy net inference, batch 16"].status == "n/a"
    assert targets["max-pool fwd+bwd vs torch NCHW"].status == "MISS"
    assert targets["max-pool fwd+bwd vs torch channels_last"].status == "PASS"
    gemm = targets["GEMM on large square matrices, % of FP32 peak"]  # judged on % of peak, not on speed
    assert gemm.value == 79.0 and gemm.status == "MISS" and gemm.goal_text == "80%"
    assert "gemm 2048^3 vs torch.mm 79%" in gemm.detail
    no_peak = evaluate_targets([_row("gemm 1024^3 vs torch.mm", "gemm", 2.0)])
    assert [t.status for t in no_peak if t.unit == "%"] == ["n/a"]
    assert targets["peak memory no higher than torch's"].status == "n/a"  # no row measured memory

    rows.append(_row("conv c bwd_data", "conv", None, status="FAILED"))
    failed = [t for t in evaluate_targets(rows) if t.name.startswith("conv rows")]
    assert all(isinstance(t, Target) and t.status == "MISS" and "FAILED" in t.detail for t in failed)


def test_memory_target_counts_the_rows_over_torch():
    rows = [_row("conv a fwd", "conv", 1.0, mem=(2.0, 3.0)), _row("conv b fwd", "conv", 1.0, mem=(5.0, 5.0)),
            _row("model m", "model", 1.0, mem=(12.5, 10.0)), _row("conv c fwd", "conv", 1.0, mem=(4.0, 3.5)),
            _row("conv a fwd", "conv", 1.0, threads=2, mem=(99.0, 1.0))]  # other thread counts do not count
    memory = evaluate_targets(rows)[-1]
    assert memory.name.startswith("peak memory no higher than torch's") and memory.goal_text == "100% of rows"
    assert memory.value == 50.0 and memory.status == "MISS" and memory.format(memory.value) == "50% of rows"
    assert "2 of 4 row(s) at or under torch; total 24 vs 22 MB" in memory.detail
    assert "most over: model m 12.5 vs 10.0 MB" in memory.detail
    at_most = evaluate_targets([_row("conv a fwd", "conv", 1.0, mem=(3.0, 3.0)), rows[0]])[-1]
    assert at_most.value == 100.0 and at_most.status == "PASS"  # equal is not over


def test_parse_threads():
    assert parse_threads("1,all", 2) == [1, 2]
    assert parse_threads("all,1,all", 4) == [4, 1]
    for bad in ("0", "x", "1,-2"):
        with pytest.raises(ValueError, match="--threads"):
            parse_threads(bad, 2)


# ---- command line and files ---------------------------------------------------------

def test_cli_writes_table_and_files(tmp_path, capsys):
    out = tmp_path / "bench"
    code = cli_main(["bench", "--quick", "--threads", "1", "--budget", "0.05", "--filter", "lenet1 fwd",
                     "--filter", "lenet2 fwd", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "conv lenet1 fwd" in printed and "conv lenet2 fwd" in printed
    assert "targets (issue 3)" in printed

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["conv lenet1 fwd", "conv lenet2 fwd"]
    assert all(r["status"] == "ok" and float(r["speedup"]) > 0 and r["algo"] for r in rows)
    assert int(rows[0]["flops"]) == 36_864_000

    doc = json.loads((out / "results.json").read_text())
    assert doc["machine"]["torch"] == torch.__version__ and doc["machine"]["threads"] == [1]
    assert doc["machine"]["command"] == ("convx bench --quick --threads 1 --filter 'lenet1 fwd' "
                                         "--filter 'lenet2 fwd' --budget 0.05")
    assert float(doc["fp32_peak_flops"]["1"]) > 0
    assert len(doc["rows"]) == 2 and len(doc["targets"]) == 8
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| conv lenet1 fwd |" in (out / "results.md").read_text()


def test_cli_exit_code_reports_failed_rows(tmp_path, monkeypatch, capsys):
    real = cxF.conv2d
    monkeypatch.setattr(cxF, "conv2d", lambda *a, **k: _perturb_one(real(*a, **k)))
    code = cli_main(["bench", "--quick", "--budget", "0.01", "--filter", "lenet1 fwd", "--no-plot",
                     "--out", str(tmp_path)])
    assert code == 1
    assert "FAILED" in capsys.readouterr().out


# ---- measurements ---------------------------------------------------------------------

def test_fp32_peak_is_plausible():
    result = _C.measure_fp32_peak(0.05, 1)
    assert result["threads"] == 1 and result["simd"] == convx.simd_level()
    assert result["seconds"] >= 0.05
    # Any x86-64 core does more than 1 GFLOP/s with SSE2; a single core doing more
    # than 2 TFLOP/s would mean the loop was optimised away.
    assert 1e9 < result["flops_per_second"] < 2e12
    with pytest.raises(ValueError, match="seconds"):
        _C.measure_fp32_peak(0.0, 1)


def test_set_num_threads():
    before = convx.get_num_threads()
    try:
        convx.set_num_threads(1)
        assert convx.get_num_threads() == 1
        convx.set_num_threads(3)
        assert convx.get_num_threads() == 3
    finally:
        convx.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be positive, got 0"):
        convx.set_num_threads(0)
    with pytest.raises(TypeError, match="threads"):
        convx.set_num_threads(1.5)


@pytest.mark.skipif(not memory.supported(), reason="needs Linux /proc/self/clear_refs")
def test_memory_measure_sees_an_allocation():
    n = 10_000_000  # 40 MB once written
    touched = memory.peak_extra_bytes(lambda: np.ones(n, dtype=np.float32))
    assert 0.95 * 4 * n <= touched <= 1.10 * 4 * n
    # np.empty maps pages it never touches: they are not resident.
    assert memory.peak_extra_bytes(lambda: np.empty(n, dtype=np.float32)) < 0.1 * 4 * n
