"""GPU rows of the benchmark suite: convx's CUDA kernels vs torch (cuDNN) on one GPU.

    python benchmarks/bench_gpu.py [--out DIR] [--quick] [--repeats N]

Every conv layer of the CPU suite (issue 3's list), at batch sizes that fill a
large GPU, in three directions: forward, backward-data, backward-weight; plus
max-pool forward+backward on a large NCHW tensor. For each row:

- validate first: convx's float32 result against torch's float32 result with TF32
  off (relative max error reported; a row whose error exceeds 1e-3 of the
  output's scale is marked invalid and makes the script exit non-zero);
- time with CUDA events, convx and torch interleaved, median of many runs after
  warm-up; torch with torch.backends.cudnn.benchmark=True, once with TF32 off
  (like for like: both in full float32) and once with torch's default TF32
  setting for convolutions;
- report ms, TFLOP/s (direct-convolution FLOPs), speed = t_torch / t_convx, the
  algorithm convx ran; max-pool rows report achieved memory bandwidth against a
  measured device-to-device copy bandwidth.

Writes bench_gpu.csv, bench_gpu.json and bench_gpu.md into --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional

import torch

import convx
from convx import _C, _cuda_kernels
from convx import functional as cxF
from convx.bench.cases import CONV_SHAPES, ConvShape, conv_shape_flops


# issue 3's layers (the CPU suite's shapes), with the batch scaled up so that one
# call fills an H200; the AlphaGo body appears once, at a large batch.
GPU_BATCH = {"lenet1": 2048, "lenet2": 2048, "alphago_in": 256, "alphago_body_b16": 256, "go_256": 128,
             "stem7x7": 64, "res64_56": 64, "res512_7": 128, "pw1x1_56": 64, "c64_112": 32}
LAYERS = [replace(shape, N=GPU_BATCH[shape.label]) for shape in CONV_SHAPES if shape.label in GPU_BATCH]
POOLS = [("maxpool_2x2_s2", 2, 2, 0), ("maxpool_3x3_s2_p1", 3, 2, 1)]
POOL_SHAPE = (64, 64, 112, 112)


def conv_params(layer: ConvShape):
    p = _C.Conv2dParams()
    p.N, p.C, p.H, p.W, p.K, p.R, p.S = layer.N, layer.C, layer.H, layer.W, layer.K, layer.R, layer.S
    p.stride_h = p.stride_w = layer.stride
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = layer.pad
    p.validate()
    return p


def time_ms(fn: Callable[[], object], warmup: int, repeats: int, budget_s: float) -> float:
    """Median of `repeats` CUDA-event timings (fewer if the budget runs out), after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: List[float] = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
        if len(times) >= 5 and time.perf_counter() > deadline:
            break
    return statistics.median(times)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = float(expected.abs().max()) or 1.0
    return float((actual.double() - expected.double()).abs().max()) / scale


class Tf32:
    """Context: cuDNN convolutions with TF32 on or off (restores the old setting)."""

    def __init__(self, allow: bool):
        self.allow = allow

    def __enter__(self):
        self.saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = self.allow

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32 = self.saved


def conv_rows(layer: ConvShape, args) -> List[Dict]:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(layer.N, layer.C, layer.H, layer.W, device=dev, generator=gen)
    w = torch.randn(layer.K, layer.C, layer.R, layer.S, device=dev, generator=gen) / math.sqrt(layer.C * layer.R * layer.S)
    p = conv_params(layer)
    stride, pad = [layer.stride] * 2, [layer.pad] * 2
    y_shape = (layer.N, layer.K, p.out_h(), p.out_w())
    gy = torch.randn(y_shape, device=dev, generator=gen)

    def torch_bwd(mask):
        return lambda: torch.ops.aten.convolution_backward(gy, x, w, None, stride, pad, [1, 1], False, [0, 0], 1,
                                                           mask)
    directions = {
        "forward": (lambda: _cuda_kernels.conv2d_forward(p, x, w, None, "auto"),
                    lambda: torch.nn.functional.conv2d(x, w, None, layer.stride, layer.pad)),
        "backward_data": (lambda: _cuda_kernels.conv2d_backward_data(p, gy, w, "auto"),
                          lambda: torch_bwd([True, False, False])()[0]),
        "backward_weight": (lambda: _cuda_kernels.conv2d_backward_weight(p, gy, x, "auto"),
                            lambda: torch_bwd([False, True, False])()[1]),
    }
    rows = []
    for direction, (cx_fn, th_fn) in directions.items():
        with convx.record_algos() as log:
            got = cx_fn()
        with Tf32(False):
            expected = th_fn()
        err = rel_error(got, expected)
        del got, expected
        row = dict(kind="conv", name=layer.label, direction=direction,
                   shape=f"{layer.N},{layer.C},{layer.H},{layer.W},{layer.K},{layer.R},{layer.S},"
                         f"{layer.stride},{layer.pad}",
                   algo=log[0].split(":")[1] if log else "?", rel_error=err, valid=err <= 1e-3)
        # Interleave: convx, torch (TF32 off), torch (default), repeated in rounds.
        t_cx, t_off, t_def = [], [], []
        for _ in range(args.rounds):
            t_cx.append(time_ms(cx_fn, args.warmup, args.repeats, args.budget))
            with Tf32(False):
                t_off.append(time_ms(th_fn, args.warmup, args.repeats, args.budget))
            with Tf32(args.default_tf32):
                t_def.append(time_ms(th_fn, args.warmup, args.repeats, args.budget))
        ms_cx, ms_off, ms_def = (statistics.median(t) for t in (t_cx, t_off, t_def))
        flops = conv_shape_flops(layer)
        row.update(ms_convx=ms_cx, ms_torch_tf32_off=ms_off, ms_torch_default=ms_def,
                   tflops_convx=flops / ms_cx / 1e9, tflops_torch_tf32_off=flops / ms_off / 1e9,
                   speed_vs_tf32_off=ms_off / ms_cx, speed_vs_default=ms_def / ms_cx)
        rows.append(row)
        print(f"  {layer.label:<16} {direction:<16} convx {ms_cx:8.3f} ms ({row['algo']}), torch tf32-off "
              f"{ms_off:8.3f} ms, default {ms_def:8.3f} ms, speed {row['speed_vs_tf32_off']:.2f}x"
              f"{'' if row['valid'] else '  INVALID rel_error=%.2e' % err}", flush=True)
    return rows


def copy_bandwidth_gbs(args) -> float:
    """Device-to-device copy of 1 GiB: the memory bandwidth a streaming kernel can hope for."""
    src = torch.empty(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), args.warmup, args.repeats, args.budget)
    return 2 * src.numel() * 4 / ms / 1e6


def pool_rows(args, peak_gbs: float) -> List[Dict]:
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(POOL_SHAPE, device="cuda", generator=gen)
    for name, k, s, pad in POOLS:
        y, idx = cxF.max_pool2d(x, k, s, pad, return_indices=True)
        ey, ei = torch.nn.functional.max_pool2d(x, k, s, pad, return_indices=True)
        gy = torch.randn(y.shape, device="cuda", generator=gen)
        pp = _C.Pool2dParams()
        pp.N, pp.C, pp.H, pp.W = POOL_SHAPE
        pp.kernel_h = pp.kernel_w = k
        pp.stride_h = pp.stride_w = s
        pp.pad_h = pp.pad_w = pad
        gx = _cuda_kernels.max_pool2d_backward(pp, gy, idx)
        egx = torch.ops.aten.max_pool2d_with_indices_backward(gy, x, [k, k], [s, s], [pad, pad], [1, 1], False, ei)
        valid = bool(torch.equal(y, ey) and torch.equal(idx, ei) and torch.allclose(gx, egx, rtol=1e-5, atol=1e-6))

        def cx_fn():
            yy, ii = _cuda_kernels.max_pool2d_forward(pp, x)
            _cuda_kernels.max_pool2d_backward(pp, gy, ii)

        def torch_fn(t):
            def run():
                yy, ii = torch.nn.functional.max_pool2d(t, k, s, pad, return_indices=True)
                torch.ops.aten.max_pool2d_with_indices_backward(gy_t[t.is_contiguous()], t, [k, k], [s, s],
                                                                [pad, pad], [1, 1], False, ii)
            return run

        x_cl = x.contiguous(memory_format=torch.channels_last)
        gy_t = {True: gy, False: gy.contiguous(memory_format=torch.channels_last)}
        t_cx, t_nchw, t_cl = [], [], []
        for _ in range(args.rounds):
            t_cx.append(time_ms(cx_fn, args.warmup, args.repeats, args.budget))
            t_nchw.append(time_ms(torch_fn(x), args.warmup, args.repeats, args.budget))
            t_cl.append(time_ms(torch_fn(x_cl), args.warmup, args.repeats, args.budget))
        ms_cx, ms_nchw, ms_cl = (statistics.median(t) for t in (t_cx, t_nchw, t_cl))
        # Compulsory traffic: forward reads x, writes y and the int64 indices;
        # backward reads grad_output and indices, writes grad_input.
        nbytes = x.numel() * 4 + y.numel() * (4 + 8) + y.numel() * (4 + 8) + x.numel() * 4
        gbs = nbytes / ms_cx / 1e6
        rows.append(dict(kind="pool", name=name, direction="forward+backward",
                         shape="x".join(map(str, POOL_SHAPE)), algo="gather", valid=valid,
                         rel_error=0.0 if valid else float("nan"), ms_convx=ms_cx, ms_torch_tf32_off=ms_nchw,
                         ms_torch_default=ms_cl, speed_vs_tf32_off=ms_nchw / ms_cx, speed_vs_default=ms_cl / ms_cx,
                         gbs_convx=gbs, pct_of_copy_bandwidth=100.0 * gbs / peak_gbs))
        print(f"  {name:<20} convx {ms_cx:.3f} ms ({gbs:.0f} GB/s, {100 * gbs / peak_gbs:.0f}% of copy), torch NCHW "
              f"{ms_nchw:.3f} ms, channels_last {ms_cl:.3f} ms{'' if valid else '  INVALID'}", flush=True)
    return rows


def markdown(rows: List[Dict], meta: Dict) -> str:
    lines = [f"GPU: {meta['gpu']} ({meta['sm_count']} SMs), torch {meta['torch']}, CUDA (torch) {meta['torch_cuda']}, "
             f"convx {meta['convx']} ({meta['convx_cuda']}); cudnn.benchmark=True; float32; median of CUDA-event "
             f"timings after warm-up. Speed = t_torch / t_convx (> 1: convx faster).", "",
             "| layer (N,C,H,W,K,R,S,stride,pad) | pass | convx ms | algo | torch ms (TF32 off) | speed | "
             "torch ms (default) | speed | convx TFLOP/s | valid |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["kind"] != "conv":
            continue
        lines.append(f"| {r['name']} ({r['shape']}) | {r['direction']} | {r['ms_convx']:.3f} | {r['algo']} | "
                     f"{r['ms_torch_tf32_off']:.3f} | {r['speed_vs_tf32_off']:.2f}x | {r['ms_torch_default']:.3f} | "
                     f"{r['speed_vs_default']:.2f}x | {r['tflops_convx']:.1f} | {'yes' if r['valid'] else 'NO'} |")
    conv = [r for r in rows if r["kind"] == "conv"]
    if conv:
        geo = math.exp(statistics.mean(math.log(r["speed_vs_tf32_off"]) for r in conv))
        fwd = [r["speed_vs_tf32_off"] for r in conv if r["direction"] == "forward"]
        lines += ["", f"Geometric mean speed vs torch with TF32 off: {geo:.2f}x over all conv rows; forward rows "
                  f"from {min(fwd):.2f}x to {max(fwd):.2f}x."]
    lines += ["", f"Max-pool forward+backward, {'x'.join(map(str, POOL_SHAPE))} float32; measured device copy "
              f"bandwidth {meta['copy_gbs']:.0f} GB/s.", "",
              "| pool | convx ms | GB/s | % of copy bandwidth | torch NCHW ms | speed | torch channels_last ms | speed "
              "| valid |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["kind"] == "pool":
            lines.append(f"| {r['name']} | {r['ms_convx']:.3f} | {r['gbs_convx']:.0f} | "
                         f"{r['pct_of_copy_bandwidth']:.0f}% | {r['ms_torch_tf32_off']:.3f} | "
                         f"{r['speed_vs_tf32_off']:.2f}x | {r['ms_torch_default']:.3f} | {r['speed_vs_default']:.2f}x "
                         f"| {'yes' if r['valid'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="convx-out/bench_gpu", help="directory for the CSV, JSON and markdown")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and layers (a smoke run)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of convx/torch timings per row")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per timing before cutting repeats short")
    args = ap.parse_args(argv)
    args.default_tf32 = torch.backends.cudnn.allow_tf32  # torch's default for convolutions
    if args.quick:
        args.repeats, args.rounds, args.budget = 10, 1, 0.3
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU visible to torch (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if not convx.has_cuda:
        print("bench_gpu: convx was built without CUDA (convx.has_cuda is False)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    meta = dict(gpu=props.name, sm_count=props.multi_processor_count, torch=torch.__version__,
                torch_cuda=torch.version.cuda, convx=convx.__version__, convx_cuda=_C.cuda_build_info(),
                python=platform.python_version(), default_tf32=args.default_tf32)
    print(f"bench_gpu on {props.name}: {props.multi_processor_count} SMs, torch {torch.__version__}", flush=True)
    meta["copy_gbs"] = copy_bandwidth_gbs(args)
    rows: List[Dict] = []
    layers = LAYERS[2:5] + LAYERS[6:7] if args.quick else LAYERS
    for layer in layers:
        rows += conv_rows(layer, args)
        torch.cuda.empty_cache()
    rows += pool_rows(args, meta["copy_gbs"])

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    keys = sorted({k for r in rows for k in r})
    with open(os.path.join(args.out, "bench_gpu.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, meta)
    with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
        f.write(table)
    print()
    print(table)
    invalid = [f"{r['name']}/{r['direction']}" for r in rows if not r["valid"]]
    if invalid:
        print(f"bench_gpu: INVALID results (convx disagrees with torch): {', '.join(invalid)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
