"""Determinism and thread-safety.

* Bitwise repeatability: the same call twice gives torch.equal forward and grads
  (conv2d each algo, max_pool2d, unfold, fold).
* convx uses OpenMP internally; calling it from 4 Python threads at once on
  different inputs must give exactly the results of sequential calls.
Results are also checked against torch (with tolerance) so a consistently wrong
answer cannot pass.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

import convx.functional as CF

ALGOS = [None, "direct", "im2col"]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- cases: each returns (inputs, fn_convx, fn_torch); fn(*inputs) -> output tensor(s)

def conv_case(seed, dtype, algo):
    g = _gen(seed)
    x = torch.randn(2, 8, 19, 21, generator=g, dtype=dtype)
    w = torch.randn(12, 4, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(12, generator=g, dtype=dtype)
    kw = dict(stride=(1, 2), padding=1, dilation=(1, 2), groups=2)
    return ([x, w, b],
            lambda x, w, b: CF.conv2d(x, w, b, algo=algo, **kw),
            lambda x, w, b: F.conv2d(x, w, b, **kw))


def pool_case(seed, dtype):
    g = _gen(seed)
    x = torch.randn(2, 6, 23, 20, generator=g, dtype=dtype)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    return ([x],
            lambda x: CF.max_pool2d(x, return_indices=True, **kw),
            lambda x: F.max_pool2d(x, return_indices=True, **kw))


def unfold_case(seed, dtype):
    g = _gen(seed)
    x = torch.randn(2, 5, 17, 16, generator=g, dtype=dtype)
    kw = dict(kernel_size=(3, 2), dilation=(1, 2), padding=1, stride=(1, 2))
    return ([x], lambda x: CF.unfold(x, **kw), lambda x: F.unfold(x, **kw))


def fold_case(seed, dtype):
    g = _gen(seed)
    # 3x3 kernel, stride 1, padding 1 on 18x17: heavy overlap -> accumulation order matters
    L = 18 * 17
    x = torch.randn(2, 4 * 9, L, generator=g, dtype=dtype)
    kw = dict(output_size=(18, 17), kernel_size=3, padding=1, stride=1)
    return ([x], lambda x: CF.fold(x, **kw), lambda x: F.fold(x, **kw))


def run(inputs, fn, grad_seed):
    """Forward + backward with a fixed random upstream gradient; returns a list of
    plain tensors: outputs (incl. int indices) and every input grad."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = list(out) if isinstance(out, tuple) else [out]
    main = outs[0]
    gout = torch.randn(main.shape, generator=_gen(grad_seed), dtype=main.dtype)
    grads = torch.autograd.grad(main, leaves, gout)
    return [o.detach().clone() for o in outs] + [gr.clone() for gr in grads]


def assert_bitwise(a_list, b_list):
    assert len(a_list) == len(b_list)
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert torch.equal(a, b), f"result #{i} differs (max abs diff {(a - b).abs().max()})"


def assert_close_to_torch(got, ref, dtype):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, **TOL[dtype])


CASES = (
    [pytest.param(lambda s, d, a=a: conv_case(s, d, a), id=f"conv2d-{a}") for a in ALGOS]
    + [pytest.param(pool_case, id="max_pool2d"),
       pytest.param(unfold_case, id="unfold"),
       pytest.param(fold_case, id="fold")]
)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("make_case", CASES)
def test_bitwise_repeatable(make_case, dtype):
    inputs, fn, fn_ref = make_case(0, dtype)
    first = run(inputs, fn, grad_seed=100)
    for _ in range(3):
        assert_bitwise(first, run(inputs, fn, grad_seed=100))
    assert_close_to_torch(first, run(inputs, fn_ref, grad_seed=100), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("make_case", CASES)
def test_concurrent_threads_match_sequential(make_case, dtype):
    seeds = [11, 22, 33, 44]
    cases = [make_case(s, dtype) for s in seeds]
    sequential = [run(inputs, fn, grad_seed=s + 1) for (inputs, fn, _), s in zip(cases, seeds)]
    for (inputs, _, fn_ref), s, seq in zip(cases, seeds, sequential):
        assert_close_to_torch(seq, run(inputs, fn_ref, grad_seed=s + 1), dtype)

    def job(k):
        inputs, fn, _ = cases[k % 4]
        return k % 4, run(inputs, fn, grad_seed=seeds[k % 4] + 1)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            results = list(pool.map(job, range(8)))  # 2 rounds of the 4 inputs per batch
            for k, res in results:
                assert_bitwise(sequential[k], res)


def test_concurrent_mixed_ops():
    """Different ops interleaved from 4 threads at once."""
    dtype = torch.float64
    makers = [lambda s: conv_case(s, dtype, "im2col"), lambda s: conv_case(s, dtype, "direct"),
              lambda s: pool_case(s, dtype), lambda s: fold_case(s, dtype)]
    cases = [m(50 + i) for i, m in enumerate(makers)]
    sequential = [run(inp, fn, grad_seed=7) for inp, fn, _ in cases]

    def job(k):
        inp, fn, _ = cases[k % 4]
        return k % 4, run(inp, fn, grad_seed=7)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for k, res in pool.map(job, range(16)):
            assert_bitwise(sequential[k], res)
