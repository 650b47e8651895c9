"""convx.nn.Conv2d / MaxPool2d / convert against torch.nn."""

import copy
import io

import pytest
import torch
import torch.nn as tnn

import convx
import convx.nn as cnn

PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]

CONV_ARGS = [
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3), id="basic"),
    pytest.param(dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=(2, 1),
                      padding=(1, 2), dilation=(1, 2), groups=2, bias=False), id="full"),
    pytest.param(dict(in_channels=2, out_channels=2, kernel_size=1), id="1x1"),
    pytest.param(dict(in_channels=3, out_channels=6, kernel_size=3, groups=3, padding="same"),
                 id="depthwise-same"),
]


def _seeded(cls, *args, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(*args, **kw)


@pytest.mark.parametrize("args", CONV_ARGS)
def test_conv2d_is_torch_subclass_and_same_parameters(args):
    ref = _seeded(tnn.Conv2d, **args)
    mod = _seeded(cnn.Conv2d, **args)
    assert isinstance(mod, tnn.Conv2d)
    assert type(mod) is not tnn.Conv2d
    ref_params = dict(ref.named_parameters())
    mod_params = dict(mod.named_parameters())
    assert list(ref_params) == list(mod_params)
    for name in ref_params:
        assert mod_params[name].shape == ref_params[name].shape, name
        assert mod_params[name].dtype == ref_params[name].dtype, name
        # same init under the same seed, bitwise
        assert torch.equal(mod_params[name], ref_params[name]), name
    assert list(ref.state_dict()) == list(mod.state_dict())
    for attr in ["in_channels", "out_channels", "kernel_size", "stride", "padding",
                 "dilation", "groups", "padding_mode"]:
        assert getattr(mod, attr) == getattr(ref, attr), attr


def test_conv2d_init_sequence_matches_torch():
    """Constructing several modules in a row consumes the RNG exactly like torch."""
    torch.manual_seed(123)
    refs = [tnn.Conv2d(2, 3, 3), tnn.Conv2d(3, 5, 2, bias=False), tnn.Conv2d(5, 5, 1)]
    r_after = torch.rand(3)
    torch.manual_seed(123)
    mods = [cnn.Conv2d(2, 3, 3), cnn.Conv2d(3, 5, 2, bias=False), cnn.Conv2d(5, 5, 1)]
    m_after = torch.rand(3)
    for r, m in zip(refs, mods):
        for (n1, p1), (n2, p2) in zip(r.named_parameters(), m.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)
    assert torch.equal(r_after, m_after)


def test_conv2d_factory_kwargs():
    torch.manual_seed(1)
    ref = tnn.Conv2d(2, 3, 3, dtype=torch.float64)
    torch.manual_seed(1)
    mod = cnn.Conv2d(2, 3, 3, dtype=torch.float64, device="cpu")
    assert mod.weight.dtype == torch.float64
    assert torch.equal(mod.weight, ref.weight) and torch.equal(mod.bias, ref.bias)


@pytest.mark.parametrize("args", CONV_ARGS)
def test_conv2d_loads_torch_state_dict_strict(args):
    ref = _seeded(tnn.Conv2d, seed=5, **args).double()
    mod = _seeded(cnn.Conv2d, seed=6, **args).double()
    result = mod.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (_, p1), (_, p2) in zip(ref.named_parameters(), mod.named_parameters()):
        assert torch.equal(p1, p2)
    x = torch.randn(2, args["in_channels"], 7, 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mod(x), ref(x), rtol=1e-10, atol=1e-10)
    # and the other way round
    ref2 = _seeded(tnn.Conv2d, seed=9, **args).double()
    ref2.load_state_dict(mod.state_dict(), strict=True)
    torch.testing.assert_close(ref2(x), ref(x), rtol=0, atol=0)


def _check_module_vs_torch(mod, ref, x, tol):
    xr = x.detach().clone().requires_grad_()
    xm = x.detach().clone().requires_grad_()
    out_r = ref(xr)
    out_m = mod(xm)
    assert out_m.shape == out_r.shape
    torch.testing.assert_close(out_m, out_r, **tol)
    g = torch.randn(out_r.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(42))
    out_r.backward(g)
    out_m.backward(g)
    torch.testing.assert_close(xm.grad, xr.grad, **tol)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), mod.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p2.grad, p1.grad, **tol, msg=lambda m, n=n1: f"{n}: {m}")


TOL64 = dict(rtol=1e-10, atol=1e-10)
TOL32 = dict(rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("cfg", [
    pytest.param(dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), id="p1"),
    pytest.param(dict(in_channels=4, out_channels=4, kernel_size=(3, 2), padding=(2, 1),
                      stride=(2, 1), groups=2), id="p21-s21-g2"),
    pytest.param(dict(in_channels=2, out_channels=3, kernel_size=3, padding=2, dilation=2),
                 id="p2-d2"),
    pytest.param(dict(in_channels=2, out_channels=3, kernel_size=3, padding="same"), id="same"),
    pytest.param(dict(in_channels=2, out_channels=2, kernel_size=(2, 4), padding="same",
                      dilation=(1, 2), bias=False), id="same-even-dilated"),
    pytest.param(dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid"), id="valid"),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_conv2d_forward_backward_matches_torch(cfg, padding_mode, dtype):
    ref = _seeded(tnn.Conv2d, seed=3, padding_mode=padding_mode, **cfg).to(dtype)
    mod = _seeded(cnn.Conv2d, seed=3, padding_mode=padding_mode, **cfg).to(dtype)
    x = torch.randn(2, cfg["in_channels"], 7, 9, dtype=dtype,
                    generator=torch.Generator().manual_seed(1))
    _check_module_vs_torch(mod, ref, x, TOL64 if dtype == torch.float64 else TOL32)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_conv2d_unbatched_input(padding_mode):
    ref = _seeded(tnn.Conv2d, 2, 3, 3, padding=1, padding_mode=padding_mode).double()
    mod = _seeded(cnn.Conv2d, 2, 3, 3, padding=1, padding_mode=padding_mode).double()
    x = torch.randn(2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _check_module_vs_torch(mod, ref, x, TOL64)


# positional-argument constructor, like torch
def test_conv2d_positional_constructor():
    ref = _seeded(tnn.Conv2d, 3, 5, 3, 2, 1, 1, 1, False)
    mod = _seeded(cnn.Conv2d, 3, 5, 3, 2, 1, 1, 1, False)
    assert mod.bias is None and ref.bias is None
    assert mod.stride == (2, 2) and mod.padding == (1, 1)
    assert torch.equal(mod.weight, ref.weight)


# ---------------------------------------------------------------------------
# MaxPool2d
# ---------------------------------------------------------------------------

POOL_CFGS = [
    pytest.param(dict(kernel_size=2), id="k2"),
    pytest.param(dict(kernel_size=3, stride=2, padding=1), id="k3s2p1"),
    pytest.param(dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), id="ceil"),
    pytest.param(dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(2, 1),
                      ceil_mode=True), id="mixed-ceil"),
    pytest.param(dict(kernel_size=2, stride=2, ceil_mode=True), id="ceil-odd-size"),
]


@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("cfg", POOL_CFGS)
def test_maxpool2d_matches_torch(cfg, return_indices):
    ref = tnn.MaxPool2d(return_indices=return_indices, **cfg)
    mod = cnn.MaxPool2d(return_indices=return_indices, **cfg)
    assert isinstance(mod, tnn.MaxPool2d) and type(mod) is not tnn.MaxPool2d
    for attr in ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]:
        assert getattr(mod, attr) == getattr(ref, attr), attr
    assert list(mod.state_dict()) == list(ref.state_dict()) == []
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xr = x.clone().requires_grad_()
    xm = x.clone().requires_grad_()
    out_r = ref(xr)
    out_m = mod(xm)
    if return_indices:
        assert isinstance(out_m, tuple) and len(out_m) == 2
        assert torch.equal(out_m[1], out_r[1])
        assert out_m[1].dtype == torch.int64
        out_r, out_m = out_r[0], out_m[0]
    assert torch.equal(out_m, out_r)
    g = torch.randn(out_r.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out_r.backward(g)
    out_m.backward(g)
    torch.testing.assert_close(xm.grad, xr.grad, **TOL64)


def test_maxpool2d_unbatched_and_positional():
    ref = tnn.MaxPool2d(3, 2, 1, 1, True, True)
    mod = cnn.MaxPool2d(3, 2, 1, 1, True, True)
    x = torch.randn(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    (vr, ir), (vm, im) = ref(x), mod(x)
    assert torch.equal(vm, vr) and torch.equal(im, ir)


# ---------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------

def lenet(seed=0):
    torch.manual_seed(seed)
    return tnn.Sequential(
        tnn.Sequential(                      # nested submodule
            tnn.Conv2d(1, 4, 3, padding=1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
        ),
        tnn.Conv2d(4, 8, 3, padding_mode="reflect", padding=1),
        tnn.ReLU(),
        tnn.MaxPool2d(2, ceil_mode=True),
        tnn.Flatten(),
        tnn.Linear(8 * 3 * 3, 10),
    ).double()


class Net(tnn.Module):
    def __init__(self):
        super().__init__()
        self.features = tnn.Sequential(tnn.Conv2d(2, 4, 3, groups=2), tnn.ReLU())
        self.pool = tnn.MaxPool2d(3, stride=2, padding=1)
        self.blocks = tnn.ModuleDict({"a": tnn.Conv2d(4, 4, 1), "b": tnn.Identity()})
        self.head = tnn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        x = self.pool(self.features(x))
        x = self.blocks["b"](self.blocks["a"](x))
        return self.head(x.flatten(1))


def _types(model):
    return {name: type(m) for name, m in model.named_modules()}


def _check_converted(model, ref, x):
    params_before = dict(model.named_parameters())
    orig_types = _types(model)
    converted = convx.nn.convert(model)
    assert converted is model
    new_types = _types(converted)
    assert list(new_types) == list(orig_types)  # same module tree / names
    n_conv = n_pool = 0
    for name, t in orig_types.items():
        if t is tnn.Conv2d:
            assert new_types[name] is cnn.Conv2d, name
            n_conv += 1
        elif t is tnn.MaxPool2d:
            assert new_types[name] is cnn.MaxPool2d, name
            n_pool += 1
        else:
            assert new_types[name] is t, name
    assert n_conv >= 2 and n_pool >= 1
    # configuration preserved
    ref_mods = dict(ref.named_modules())
    for name, m in converted.named_modules():
        if isinstance(m, tnn.Conv2d):
            for attr in ["in_channels", "out_channels", "kernel_size", "stride", "padding",
                         "dilation", "groups", "padding_mode"]:
                assert getattr(m, attr) == getattr(ref_mods[name], attr), (name, attr)
        if isinstance(m, tnn.MaxPool2d):
            for attr in ["kernel_size", "stride", "padding", "dilation", "ceil_mode",
                         "return_indices"]:
                assert getattr(m, attr) == getattr(ref_mods[name], attr), (name, attr)
    # the very same Parameter objects
    params_after = dict(converted.named_parameters())
    assert list(params_after) == list(params_before)
    for name, p in params_after.items():
        assert p is params_before[name], name
    # outputs and parameter gradients equal to the torch original
    out = converted(x)
    out_ref = ref(x)
    torch.testing.assert_close(out, out_ref, **TOL64)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(8))
    out.backward(g)
    out_ref.backward(g)
    ref_params = dict(ref.named_parameters())
    for name, p in params_after.items():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL64,
                                   msg=lambda m, n=name: f"{n}: {m}")
    return converted


def test_convert_lenet_sequential():
    model = lenet()
    ref = copy.deepcopy(model)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _check_converted(model, ref, x)


def test_convert_custom_module_nested():
    torch.manual_seed(0)
    model = Net().double()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _check_converted(model, ref, x)


def test_convert_is_idempotent():
    model = convx.nn.convert(lenet())
    params = dict(model.named_parameters())
    again = convx.nn.convert(model)
    assert again is model
    for name, m in again.named_modules():
        assert type(m) not in (tnn.Conv2d, tnn.MaxPool2d), name
    for name, p in again.named_parameters():
        assert p is params[name]


def test_convert_bare_conv2d():
    conv = _seeded(tnn.Conv2d, 3, 4, 3, stride=2, padding=1, padding_mode="circular").double()
    ref = copy.deepcopy(conv)
    new = convx.nn.convert(conv)
    assert type(new) is cnn.Conv2d
    assert isinstance(new, tnn.Conv2d)
    assert new.weight is conv.weight and new.bias is conv.bias
    assert new.stride == (2, 2) and new.padding == (1, 1) and new.padding_mode == "circular"
    x = torch.randn(1, 3, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _check_module_vs_torch(new, ref, x, TOL64)


def test_convert_bare_maxpool2d():
    pool = tnn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)
    new = convx.nn.convert(pool)
    assert type(new) is cnn.MaxPool2d
    assert new.ceil_mode and new.return_indices and new.kernel_size == 3
    x = torch.randn(1, 2, 8, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (v1, i1), (v2, i2) = new(x), pool(x)
    assert torch.equal(v1, v2) and torch.equal(i1, i2)


def test_converted_state_dict_save_load_roundtrip():
    model = convx.nn.convert(lenet(seed=0))
    sd = model.state_dict()
    assert list(sd) == list(lenet(seed=1).state_dict())  # same keys as the torch model
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert list(loaded) == list(sd)
    fresh = convx.nn.convert(lenet(seed=1))
    fresh.load_state_dict(loaded, strict=True)
    for k in sd:
        assert torch.equal(fresh.state_dict()[k], sd[k]), k
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert torch.equal(fresh(x), model(x))
    # the saved state_dict also loads into a plain torch model and gives the same output
    plain = lenet(seed=2)
    buf.seek(0)
    plain.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    torch.testing.assert_close(plain(x), model(x), **TOL64)


def test_converted_module_save_load_whole_model(tmp_path):
    model = convx.nn.convert(lenet(seed=0))
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded[1]) is cnn.Conv2d
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------------------
# the modules really run convx kernels (not torch's)
# ---------------------------------------------------------------------------

def _forbid_torch_kernels(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("torch's own conv/pool kernel was called")
    import torch.nn.functional as tF
    for mod, name in [(tF, "conv2d"), (torch, "conv2d"), (torch, "convolution"),
                      (tF, "max_pool2d"), (tF, "max_pool2d_with_indices"), (torch, "max_pool2d"),
                      (torch, "max_pool2d_with_indices"), (torch._C._nn, "max_pool2d_with_indices")]:
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, boom)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_conv2d_module_uses_convx_kernels(padding_mode, monkeypatch):
    mod = _seeded(cnn.Conv2d, 2, 3, 3, padding=1, padding_mode=padding_mode).double()
    ref = copy.deepcopy(mod)
    ref.__class__ = tnn.Conv2d
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    expected = ref(x)
    _forbid_torch_kernels(monkeypatch)
    with convx.record_algos() as log:
        out = mod(x)
        out.sum().backward()
    assert any(s.startswith("conv2d_forward:") for s in log), log
    assert any(s.startswith("conv2d_backward_weight:") for s in log), log
    assert any(s.startswith("conv2d_backward_data:") for s in log), log
    monkeypatch.undo()
    torch.testing.assert_close(out, expected, **TOL64)


def test_maxpool2d_module_uses_convx_kernels(monkeypatch):
    mod = cnn.MaxPool2d(2, return_indices=True)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rv, ri = tnn.MaxPool2d(2, return_indices=True)(x)
    _forbid_torch_kernels(monkeypatch)
    v, i = mod(x)
    monkeypatch.undo()
    assert torch.equal(v, rv) and torch.equal(i, ri)


def test_converted_model_uses_convx_kernels(monkeypatch):
    model = convx.nn.convert(lenet())
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _forbid_torch_kernels(monkeypatch)
    with convx.record_algos() as log:
        model(x)
    monkeypatch.undo()
    assert sum(s.startswith("conv2d_forward:") for s in log) == 2, log



def test_converted_model_loads_plain_torch_state_dict_strict():
    plain = lenet(seed=11)
    model = convx.nn.convert(lenet(seed=12))
    model.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(x), plain(x), **TOL64)


def test_converted_model_deepcopy_and_dtype_change():
    model = convx.nn.convert(lenet(seed=4))
    ref = lenet(seed=4)
    clone = copy.deepcopy(model)
    assert type(clone[1]) is cnn.Conv2d and type(clone[0][2]) is cnn.MaxPool2d
    assert clone[1].weight is not model[1].weight
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(clone(x), model(x))
    model.float()
    ref.float()
    assert model[1].weight.dtype == torch.float32
    torch.testing.assert_close(model(x.float()), ref(x.float()), rtol=1e-5, atol=1e-5)


def test_convert_leaves_subclasses_and_other_layers_alone():
    class MyConv(tnn.Conv2d):
        pass

    torch.manual_seed(0)
    model = tnn.Sequential(MyConv(1, 2, 3), tnn.Conv2d(2, 2, 1), tnn.AvgPool2d(2), tnn.Conv1d(2, 2, 1))
    convx.nn.convert(model)
    assert type(model[0]) is MyConv          # only plain torch classes are replaced
    assert type(model[1]) is cnn.Conv2d
    assert type(model[2]) is tnn.AvgPool2d
    assert type(model[3]) is tnn.Conv1d
