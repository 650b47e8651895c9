"""Benchmark mode: time the candidate algorithms once per shape, cache the winner."""
import numpy as np
import pytest

import convx
from convx import _C, _kernels


@pytest.fixture(autouse=True)
def _clean_benchmark_state():
    convx.clear_benchmark_cache()
    yield
    convx.set_benchmark(False)
    convx.clear_benchmark_cache()


def _params(N=2, C=16, H=12, W=12, K=16):
    p = _C.Conv2dParams()
    p.N, p.C, p.H, p.W, p.K, p.R, p.S = N, C, H, W, K, 3, 3
    p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1
    p.validate()
    return p


class _FakeKernels:
    """Stands in for _C: each algorithm 'takes' a fixed time on a fake clock."""

    def __init__(self, cost, refuse=(), allow_winograd_4x4=True):
        self.cost, self.refuse, self.now, self.calls = cost, refuse, 0.0, []
        self.allow = allow_winograd_4x4

    def allow_winograd_4x4(self):
        return self.allow

    def clock(self):
        return self.now

    def conv2d_forward(self, p, x, w, b, y, algo):
        self.calls.append(algo)
        if algo in self.refuse:
            raise ValueError(f"algo='{algo}' does not apply")
        self.now += self.cost[algo]
        return algo

    def max_threads(self):
        return 1


def _fake_conv(monkeypatch, fake, fake_clock=True):
    """Route _kernels to `fake` (and its clock); returns a layer's params and zero inputs."""
    monkeypatch.setattr(_kernels, "_C", fake)
    if fake_clock:
        monkeypatch.setattr(_kernels.time, "perf_counter", fake.clock)
    p = _params()
    return p, np.zeros((p.N, p.C, p.H, p.W), np.float32), np.zeros((p.K, p.C, 3, 3), np.float32)


def test_benchmark_mode_picks_the_fastest_candidate_and_caches_it(monkeypatch):
    fake = _FakeKernels({"im2col": 3.0, "shifted": 2.5, "winograd_2x2": 1.0, "winograd_4x4": 1.5, "depthwise": 2.2,
                         "direct": 2.0})
    p, x, w = _fake_conv(monkeypatch, fake)
    convx.set_benchmark(True)
    with convx.record_algos() as log:
        _kernels.conv2d_forward(p, x, w, None, "auto")
        timed = list(fake.calls)
        _kernels.conv2d_forward(p, x, w, None, "auto")
    assert log == ["conv2d_forward:winograd_2x2"] * 2
    # each candidate timed
    assert sorted(set(timed[:-1])) == ["depthwise", "direct", "im2col", "shifted", "winograd_2x2", "winograd_4x4"]
    assert fake.calls[len(timed):] == ["winograd_2x2"]  # the second call only runs the winner
    assert list(convx.benchmark_cache().values()) == ["winograd_2x2"]


def test_benchmark_mode_skips_candidates_that_do_not_apply(monkeypatch):
    fake = _FakeKernels({"im2col": 3.0, "direct": 2.0},
                        refuse=("winograd_2x2", "winograd_4x4", "shifted", "depthwise"))
    p, x, w = _fake_conv(monkeypatch, fake)
    convx.set_benchmark(True)
    _kernels.conv2d_forward(p, x, w, None, "auto")
    assert list(convx.benchmark_cache().values()) == ["direct"]


def test_benchmark_mode_leaves_out_winograd_4x4_when_it_is_not_allowed(monkeypatch):
    fake = _FakeKernels({"im2col": 3.0, "shifted": 2.5, "winograd_2x2": 1.0, "winograd_4x4": 0.5, "depthwise": 2.2,
                         "direct": 2.0}, allow_winograd_4x4=False)
    p, x, w = _fake_conv(monkeypatch, fake)
    convx.set_benchmark(True)
    _kernels.conv2d_forward(p, x, w, None, "auto")
    assert "winograd_4x4" not in fake.calls
    assert list(convx.benchmark_cache().values()) == ["winograd_2x2"]


def test_benchmark_mode_off_or_forced_algo_never_times(monkeypatch):
    fake = _FakeKernels({"im2col": 1.0, "auto": 1.0})
    p, x, w = _fake_conv(monkeypatch, fake, fake_clock=False)
    _kernels.conv2d_forward(p, x, w, None, "auto")
    convx.set_benchmark(True)
    _kernels.conv2d_forward(p, x, w, None, "im2col")
    assert fake.calls == ["auto", "im2col"]
    assert convx.benchmark_cache() == {}


def test_benchmark_mode_results_match_torch():
    torch = pytest.importorskip("torch")
    import convx.functional as F
    x = torch.randn(2, 16, 12, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    convx.set_benchmark(True)
    y = F.conv2d(x, w, padding=1)
    y.square().sum().backward()
    ops = {key[0] for key in convx.benchmark_cache()}
    assert ops == {"conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight"}
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y2 = torch.nn.functional.conv2d(x2, w2, padding=1)
    y2.square().sum().backward()
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


def test_set_benchmark_rejects_non_bool():
    with pytest.raises(TypeError, match="enabled must be a bool, got 1"):
        convx.set_benchmark(1)
