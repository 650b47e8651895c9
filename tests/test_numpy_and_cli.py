"""numpy in -> numpy out for all four ops (matching torch), and the CLI / module info."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convx
import convx.functional as CF

NP_DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _rng_arr(seed, shape, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _check_np_out(out, ref_t, dtype, exact=False):
    assert isinstance(out, np.ndarray), type(out)
    assert out.dtype == dtype
    ref = ref_t.detach().numpy()
    assert out.shape == ref.shape
    if exact:
        np.testing.assert_array_equal(out, ref)
    else:
        np.testing.assert_allclose(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("algo", [None, "direct", "im2col"], ids=str)
@pytest.mark.parametrize("kw", [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=2),
    dict(padding="same"),
], ids=["default", "s2p1", "mixed-groups", "same"])
def test_numpy_conv2d(kw, algo, dtype):
    x = _rng_arr(0, (2, 4, 7, 6), dtype)
    w = _rng_arr(1, (6, 4 // kw.get("groups", 1), 3, 2), dtype)
    b = _rng_arr(2, (6,), dtype)
    x0, w0, b0 = x.copy(), w.copy(), b.copy()
    out = CF.conv2d(x, w, b, algo=algo, **kw)
    _check_np_out(out, F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **kw),
                  dtype)
    out_nb = CF.conv2d(x, w, algo=algo, **kw)
    _check_np_out(out_nb, F.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw), dtype)
    # inputs not modified
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
def test_numpy_conv2d_unbatched_and_noncontiguous(dtype):
    xb = _rng_arr(3, (3, 8, 14), dtype)
    x = xb[:, :, ::2]            # non-contiguous view (3, 8, 7)
    w = np.asfortranarray(_rng_arr(4, (2, 3, 3, 3), dtype))
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    out = CF.conv2d(x, w, padding=1)
    _check_np_out(out, F.conv2d(torch.from_numpy(x.copy()), torch.from_numpy(w.copy()), padding=1),
                  dtype)
    xt = _rng_arr(5, (1, 3, 6, 5), dtype).transpose(0, 1, 3, 2)  # (1, 3, 5, 6)
    out = CF.conv2d(xt, w)
    _check_np_out(out, F.conv2d(torch.from_numpy(xt.copy()), torch.from_numpy(w.copy())), dtype)


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
], ids=["k2", "ceil", "mixed"])
def test_numpy_max_pool2d(kw, dtype):
    x = _rng_arr(6, (2, 3, 7, 8), dtype)
    ref_v, ref_i = F.max_pool2d(torch.from_numpy(x), return_indices=True, **kw)
    out = CF.max_pool2d(x, **kw)
    _check_np_out(out, ref_v, dtype, exact=True)
    res = CF.max_pool2d(x, return_indices=True, **kw)
    assert isinstance(res, tuple) and len(res) == 2
    vals, idx = res
    _check_np_out(vals, ref_v, dtype, exact=True)
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_i.numpy())
    # unbatched
    v3, i3 = CF.max_pool2d(x[0], return_indices=True, **kw)
    _check_np_out(v3, ref_v[0], dtype, exact=True)
    np.testing.assert_array_equal(i3, ref_i[0].numpy())


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
def test_numpy_unfold(dtype):
    x = _rng_arr(7, (2, 3, 6, 7), dtype)
    kw = dict(kernel_size=(2, 3), dilation=(1, 2), padding=1, stride=(2, 1))
    out = CF.unfold(x, **kw)
    _check_np_out(out, F.unfold(torch.from_numpy(x), **kw), dtype, exact=True)
    out3 = CF.unfold(x[1], **kw)
    _check_np_out(out3, F.unfold(torch.from_numpy(x[1]), **kw), dtype, exact=True)


@pytest.mark.parametrize("dtype", NP_DTYPES, ids=lambda d: d.__name__)
def test_numpy_fold(dtype):
    kw = dict(output_size=(6, 7), kernel_size=(2, 3), dilation=1, padding=(1, 0), stride=1)
    L = (6 + 2 - 2 + 1) * (7 - 3 + 1)
    y = _rng_arr(8, (2, 3 * 6, L), dtype)
    out = CF.fold(y, **kw)
    _check_np_out(out, F.fold(torch.from_numpy(y), **kw), dtype)
    out2 = CF.fold(y[0], **kw)
    _check_np_out(out2, F.fold(torch.from_numpy(y[0]), **kw), dtype)


def test_numpy_rejects_mixing_and_bad_dtypes():
    x = np.zeros((1, 1, 4, 4), dtype=np.float64)
    w = np.zeros((1, 1, 2, 2), dtype=np.float64)
    with pytest.raises(TypeError):
        CF.conv2d(x, torch.from_numpy(w))
    with pytest.raises(TypeError):
        CF.conv2d(torch.from_numpy(x), w)
    with pytest.raises(TypeError):
        CF.conv2d(x, w.astype(np.float32))
    with pytest.raises(TypeError):
        CF.conv2d(x.astype(np.int64), w.astype(np.int64))
    with pytest.raises(TypeError):
        CF.max_pool2d(x.astype(np.float16), 2)
    with pytest.raises(TypeError):
        CF.unfold(x.astype(np.int32), 2)


# ---------------------------------------------------------------------------
# module-level info and CLI
# ---------------------------------------------------------------------------

def test_has_cuda_is_bool():
    assert type(convx.has_cuda) is bool


def test_simd_level():
    assert convx.simd_level() in {"avx512", "avx2", "scalar"}


def test_version_and_threads():
    assert isinstance(convx.__version__, str) and re.match(r"^\d+\.\d+", convx.__version__)
    n = convx.get_num_threads()
    assert isinstance(n, int) and n >= 1


def _run_cli(args, cwd):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "convx", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_info(tmp_path):
    proc = _run_cli(["info"], tmp_path)  # outside the repo: no reliance on cwd
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    low = out.lower()
    assert convx.__version__ in out
    assert convx.simd_level() in low
    assert "simd" in low
    assert "thread" in low
    assert "cuda" in low
    assert "build" in low


def test_cli_info_threads_value(tmp_path):
    proc = _run_cli(["info"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.lower().splitlines() if "thread" in ln]
    assert line, proc.stdout
    assert str(convx.get_num_threads()) in " ".join(line), proc.stdout


def test_cli_info_cuda_value(tmp_path):
    proc = _run_cli(["info"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = " ".join(ln for ln in proc.stdout.lower().splitlines() if "cuda" in ln)
    expected_words = ("true", "yes", "on", "1") if convx.has_cuda else ("false", "no", "off", "0")
    assert any(re.search(rf"\b{w}\b", line) for w in expected_words), proc.stdout


def test_cli_selfcheck(tmp_path):
    proc = _run_cli(["selfcheck"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_unknown_command_fails(tmp_path):
    proc = _run_cli(["definitely-not-a-command"], tmp_path)
    assert proc.returncode != 0


def test_console_script_info(tmp_path):
    script = Path(sys.executable).parent / "convx"
    if not script.exists():  # an interpreter outside the install's venv: the one on PATH
        script = Path(shutil.which("convx") or script)
    assert script.exists(), f"console script {script} not installed"
    proc = subprocess.run([str(script), "info"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert convx.__version__ in proc.stdout


_NO_TORCH_SCRIPT = r'''
import sys
sys.modules["torch"] = None          # any "import torch" now raises ImportError
import numpy as np
import convx
import convx.functional as CF

def ref_conv(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    oh, ow = (h - r) // stride + 1, (wd - s) // stride + 1
    out = np.zeros((n, k, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + r, j * stride:j * stride + s]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return out

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 2))
out = CF.conv2d(x, w, stride=2, padding=1)
assert isinstance(out, np.ndarray) and out.dtype == np.float64
np.testing.assert_allclose(out, ref_conv(x, w, 2, 1), rtol=1e-12, atol=1e-12)

v, i = CF.max_pool2d(x, 2, return_indices=True)
blocks = x[:, :, :6, :6].reshape(2, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 3, 4)
np.testing.assert_array_equal(v, blocks.max(-1))
a = blocks.argmax(-1)
rows = np.arange(3)[:, None] * 2 + a // 2
cols = np.arange(3)[None, :] * 2 + a % 2
np.testing.assert_array_equal(i, rows * 6 + cols)

u = CF.unfold(x.astype(np.float32), 2)
assert u.dtype == np.float32 and u.shape == (2, 12, 30)
f = CF.fold(u, (7, 6), 2)
counts = CF.fold(np.ones_like(u), (7, 6), 2)
np.testing.assert_allclose(f, x.astype(np.float32) * counts, rtol=1e-6)
assert sys.modules["torch"] is None
print("OK")
'''


def test_numpy_path_needs_no_torch(tmp_path):
    """Contract: numpy arrays in -> numpy arrays out, no torch needed for that path."""
    script = tmp_path / "no_torch.py"
    script.write_text(_NO_TORCH_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


@pytest.mark.parametrize("kind", ["readonly", "broadcast", "negative-strides"])
def test_numpy_unusual_arrays(kind):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 7))
    w = rng.standard_normal((4, 3, 3, 2))
    if kind == "readonly":
        x.flags.writeable = False
        w.flags.writeable = False
    elif kind == "broadcast":
        x = np.broadcast_to(x[:1, :, :, :1], (2, 3, 6, 7))   # stride 0, read-only
    else:
        x = x[:, ::-1, :, ::-1]
        w = w[::-1, :, ::-1]
    tx, tw = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(w))  # writable copies for torch
    _check_np_out(CF.conv2d(x, w, padding=1), F.conv2d(tx, tw, padding=1), np.float64)
    v, i = CF.max_pool2d(x, 2, return_indices=True)
    rv, ri = F.max_pool2d(tx, 2, return_indices=True)
    _check_np_out(v, rv, np.float64, exact=True)
    np.testing.assert_array_equal(i, ri.numpy())
    _check_np_out(CF.unfold(x, 2), F.unfold(tx, 2), np.float64, exact=True)
    u = np.ascontiguousarray(CF.unfold(x, 2)[..., ::-1])[..., ::-1]  # fold of a reversed view
    _check_np_out(CF.fold(u, (6, 7), 2), F.fold(torch.from_numpy(u.copy()), (6, 7), 2), np.float64)
