"""Which torch entry point is the fair opponent for convx's backward kernels?

torch offers three ways to get one conv gradient: autograd (y.backward, both
gradients at once), torch.nn.grad.conv2d_input / conv2d_weight, and
torch.ops.aten.convolution_backward with an output_mask. The suite uses the last
with the real input and weight tensors (what autograd itself calls). This script
times all of them on the suite's conv shapes at one thread, so the choice can be
re-checked on another machine or torch version:

    python benchmarks/check_torch_backward_paths.py
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.nn import grad as nn_grad

from convx.bench.cases import CONV_SHAPES


def median_ms(fn, repeats=15):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, median ms")
    print(f"{'shape':18s} {'bwd-data: aten':>15s} {'nn.grad':>8s} | {'bwd-weight: aten':>17s} {'nn.grad':>8s} "
          f"| {'fwd + both grads via autograd':>30s}")
    for s in CONV_SHAPES:
        P, Q = s.out_hw
        x, w = torch.randn(s.N, s.C, s.H, s.W), torch.randn(s.K, s.C, s.R, s.S)
        gy = torch.randn(s.N, s.K, P, Q)
        st, pd = [s.stride] * 2, [s.pad] * 2

        def aten(mask):
            return torch.ops.aten.convolution_backward(gy, x, w, None, st, pd, [1, 1], False, [0, 0], 1, mask)

        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()

        def autograd_step():
            xr.grad = wr.grad = None
            torch.nn.functional.conv2d(xr, wr, None, s.stride, s.pad).backward(gy)

        times = [
            median_ms(lambda: aten([True, False, False])[0]),
            median_ms(lambda: nn_grad.conv2d_input(x.shape, w, gy, s.stride, s.pad)),
            median_ms(lambda: aten([False, True, False])[1]),
            median_ms(lambda: nn_grad.conv2d_weight(x, w.shape, gy, s.stride, s.pad)),
            median_ms(autograd_step),
        ]
        print(f"{s.label:18s} {times[0]:15.2f} {times[1]:8.2f} | {times[2]:17.2f} {times[3]:8.2f} | {times[4]:30.2f}")


if __name__ == "__main__":
    main()
