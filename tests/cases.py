"""Shared case tables for convx tests and benchmarks (plain data, no torch/convx imports).

Usage:
    from cases import CONV_CASES, POOL_CASES, FOLD_CASES
    @pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)

Every case is kept small (a few thousand elements at most) so that the whole
parametrised suite runs quickly on a couple of CPU cores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

IntPair = Union[int, Tuple[int, int]]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------- conv2d
@dataclass(frozen=True)
class ConvCase:
    id: str
    N: int
    C: int
    H: int
    W: int
    K: int  # out channels
    R: int  # kernel height
    S: int  # kernel width
    stride: IntPair = 1
    padding: Union[int, Tuple[int, int], str] = 0  # int, pair, 'same' or 'valid'
    dilation: IntPair = 1
    groups: int = 1
    bias: bool = True

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def bias_shape(self):
        return (self.K,) if self.bias else None

    def kwargs(self):
        """Keyword arguments for F.conv2d / convx.functional.conv2d."""
        return dict(stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups)


CONV_CASES = [
    # basics
    ConvCase("basic_3x3_pad1", 2, 3, 7, 7, 4, 3, 3, padding=1),
    ConvCase("odd_nonsquare_9x6_k3x2", 2, 2, 9, 6, 3, 3, 2),
    ConvCase("nonsquare_kernel_1x5_pad0_2", 2, 3, 5, 9, 2, 1, 5, padding=(0, 2)),
    ConvCase("nonsquare_kernel_4x2", 2, 2, 7, 5, 3, 4, 2),
    ConvCase("C1", 2, 1, 8, 8, 4, 3, 3),
    ConvCase("K1", 2, 4, 6, 7, 1, 3, 3, padding=1),
    ConvCase("C1_K1", 2, 1, 5, 6, 1, 2, 2),
    ConvCase("no_bias", 2, 3, 6, 6, 4, 3, 3, bias=False),
    ConvCase("3x3_pad1_nobias", 2, 3, 7, 7, 4, 3, 3, padding=1, bias=False),
    ConvCase("deep_reduction_C16", 2, 16, 8, 8, 8, 3, 3, padding=1),
    # groups
    ConvCase("groups2", 2, 4, 6, 6, 6, 3, 3, padding=1, groups=2),
    ConvCase("groups3_K3", 2, 6, 7, 5, 3, 3, 3, groups=3),
    ConvCase("groups3_K9_k2x3", 2, 6, 6, 7, 9, 2, 3, groups=3, bias=False),
    ConvCase("groups2_stride2_dil2", 2, 4, 9, 9, 4, 3, 3, stride=2, padding=2, dilation=2, groups=2),
    # depthwise
    ConvCase("depthwise_K_eq_C", 2, 4, 7, 7, 4, 3, 3, padding=1, groups=4),
    ConvCase("depthwise_K_eq_2C", 2, 3, 6, 8, 6, 3, 3, padding=1, groups=3),
    ConvCase("depthwise_stride2_nobias", 2, 5, 8, 7, 5, 3, 3, stride=2, padding=1, groups=5, bias=False),
    # dilation
    ConvCase("dilation2", 2, 3, 9, 9, 2, 3, 3, dilation=2),
    ConvCase("dilation3_pad3", 2, 2, 8, 8, 3, 3, 3, padding=3, dilation=3),
    ConvCase("dilation_tuple_2_1", 2, 2, 9, 7, 3, 3, 3, padding=(2, 1), dilation=(2, 1)),
    ConvCase("dilation_tuple_1_3_k2", 2, 2, 6, 10, 2, 2, 2, dilation=(1, 3)),
    # stride
    ConvCase("stride3_gt_kernel2", 2, 2, 8, 8, 3, 2, 2, stride=3),
    ConvCase("stride4_gt_kernel1", 2, 3, 9, 9, 2, 1, 1, stride=4),
    ConvCase("stride_tuple_2_1", 2, 3, 7, 8, 4, 3, 3, stride=(2, 1), padding=1),
    ConvCase("stride_tuple_1_3", 2, 2, 6, 11, 3, 3, 2, stride=(1, 3)),
    ConvCase("stride2_odd_input", 2, 3, 7, 9, 2, 3, 3, stride=2),
    # padding
    ConvCase("padding_tuple_1_2", 2, 3, 6, 5, 2, 3, 3, padding=(1, 2)),
    ConvCase("padding_tuple_0_3_k2", 2, 2, 5, 5, 3, 2, 2, padding=(0, 3)),
    ConvCase("padding_gt_kernel", 2, 2, 4, 4, 2, 2, 2, padding=3),
    ConvCase("same_3x3", 2, 3, 7, 6, 4, 3, 3, padding="same"),
    ConvCase("same_even_4x4", 2, 2, 6, 7, 3, 4, 4, padding="same"),
    ConvCase("same_even_2x3", 2, 3, 5, 6, 2, 2, 3, padding="same"),
    ConvCase("same_1x4", 2, 2, 5, 7, 2, 1, 4, padding="same"),
    ConvCase("same_dil2_k3", 2, 2, 8, 8, 3, 3, 3, padding="same", dilation=2),
    ConvCase("same_dil3_k2_asym", 2, 2, 7, 7, 2, 2, 2, padding="same", dilation=3),
    ConvCase("same_dil_tuple_k2x3", 2, 2, 7, 8, 2, 2, 3, padding="same", dilation=(3, 2)),
    ConvCase("same_groups2", 2, 4, 6, 6, 4, 3, 3, padding="same", groups=2),
    ConvCase("valid", 2, 3, 7, 6, 2, 3, 3, padding="valid"),
    ConvCase("valid_stride2", 2, 2, 8, 9, 3, 2, 3, stride=2, padding="valid"),
    # 1x1 kernels
    ConvCase("1x1", 2, 5, 4, 5, 3, 1, 1),
    ConvCase("1x1_stride2", 2, 4, 7, 6, 3, 1, 1, stride=2),
    ConvCase("1x1_pad1", 2, 3, 4, 4, 2, 1, 1, padding=1),
    # kernel == input size
    ConvCase("kernel_eq_input", 2, 3, 5, 5, 4, 5, 5),
    ConvCase("kernel_eq_input_nonsquare", 2, 2, 3, 6, 3, 3, 6),
    ConvCase("kernel_eq_input_pad1_stride2", 2, 2, 4, 4, 2, 4, 4, stride=2, padding=1),
    # batch sizes
    ConvCase("N0", 0, 3, 6, 6, 4, 3, 3, padding=1),
    ConvCase("N0_groups", 0, 4, 5, 5, 4, 3, 3, groups=2, bias=False),
    ConvCase("N1", 1, 3, 6, 7, 4, 3, 3),
    ConvCase("N1_1x1_output", 1, 2, 3, 3, 2, 3, 3),
    ConvCase("N3", 3, 3, 6, 6, 2, 3, 3, stride=2, padding=1),
    ConvCase("N3_mixed", 3, 6, 7, 8, 4, 3, 2, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
    # a slightly larger case so that multi-threaded / blocked code paths are exercised
    ConvCase("medium_N4_C4_16x16", 4, 4, 16, 16, 8, 3, 3, padding=1),
]


# --------------------------------------------------------------------------- max_pool2d
@dataclass(frozen=True)
class PoolCase:
    id: str
    N: int
    C: int
    H: int
    W: int
    kernel_size: IntPair
    stride: Optional[IntPair] = None  # None -> default (= kernel_size)
    padding: IntPair = 0
    dilation: IntPair = 1
    ceil_mode: bool = False

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    def kwargs(self):
        """Keyword arguments (besides kernel_size) for F.max_pool2d / convx.functional.max_pool2d."""
        return dict(stride=self.stride, padding=self.padding,
                    dilation=self.dilation, ceil_mode=self.ceil_mode)


POOL_CASES = [
    PoolCase("k2_default_stride", 2, 3, 8, 8, 2),
    PoolCase("k2_default_stride_odd", 2, 2, 7, 9, 2),
    PoolCase("k3_s2_p1_odd", 2, 3, 7, 9, 3, 2, 1),
    PoolCase("k3_s1_p0", 2, 2, 6, 5, 3, 1, 0),
    PoolCase("k3_s1_p1", 2, 2, 5, 6, 3, 1, 1),
    PoolCase("k_tuple_2x3_s_1x2_p1", 2, 2, 6, 7, (2, 3), (1, 2), (1, 1)),
    PoolCase("k3_default_stride_p1", 2, 2, 9, 5, 3, None, 1),
    PoolCase("k4_p2_even", 2, 2, 7, 8, 4, 2, 2),
    PoolCase("k_tuple_3x1_p_1x0", 2, 2, 6, 5, (3, 1), 1, (1, 0)),
    PoolCase("dilation2", 2, 2, 9, 9, 3, 1, 1, 2),
    PoolCase("dilation_tuple_2_1", 2, 2, 8, 7, 3, 2, 1, (2, 1)),
    PoolCase("dilation3_k2", 2, 2, 8, 8, 2, 1, 0, 3),
    PoolCase("stride3_gt_kernel2", 2, 2, 8, 8, 2, 3),
    PoolCase("k1_identity", 2, 2, 4, 5, 1, 1),
    PoolCase("k1_s2", 2, 2, 5, 6, 1, 2),
    PoolCase("kernel_eq_input", 2, 3, 5, 5, 5),
    PoolCase("kernel_eq_input_nonsquare", 2, 2, 3, 6, (3, 6)),
    PoolCase("C1", 2, 1, 6, 6, 2, 2),
    PoolCase("N1", 1, 3, 7, 7, 3, 2),
    PoolCase("N3", 3, 2, 6, 7, 2, 2, 1),
    PoolCase("N0", 0, 3, 6, 6, 2),
    PoolCase("medium_N4_C4_16x16", 4, 4, 16, 16, 3, 2, 1),
    # ceil_mode
    PoolCase("ceil_k3_s2_p0_extra_window", 2, 2, 6, 8, 3, 2, 0, ceil_mode=True),
    # last window starts at the last input row/col and runs through the padding and beyond
    PoolCase("ceil_k3_s2_p1_last_window_in_pad", 2, 2, 6, 6, 3, 2, 1, ceil_mode=True),
    PoolCase("ceil_k4_s3_p2_last_window_in_pad", 2, 2, 8, 8, 4, 3, 2, ceil_mode=True),
    # ceil would add a window starting in the right padding: torch drops it
    PoolCase("ceil_k2_s2_p1_dropped_window", 2, 2, 5, 5, 2, 2, 1, ceil_mode=True),
    PoolCase("ceil_dilation2", 2, 2, 7, 8, 3, 2, 1, 2, ceil_mode=True),
    PoolCase("ceil_nonsquare_mixed", 2, 2, 7, 10, (2, 3), (2, 3), (1, 1), ceil_mode=True),
    PoolCase("ceil_default_stride_odd", 2, 2, 7, 5, 2, None, 0, ceil_mode=True),
    PoolCase("ceil_no_effect", 2, 2, 7, 7, 3, 2, 0, ceil_mode=True),
]


# --------------------------------------------------------------------------- unfold / fold
@dataclass(frozen=True)
class FoldCase:
    """unfold: input (N, C, H, W) -> (N, C*kh*kw, L); fold: (N, C*kh*kw, L) -> (N, C, H, W).

    N=None means unbatched: unfold input (C, H, W), fold input (C*kh*kw, L).
    """
    id: str
    N: Optional[int]
    C: int
    H: int
    W: int
    kernel_size: IntPair
    dilation: IntPair = 1
    padding: IntPair = 0
    stride: IntPair = 1

    @property
    def image_shape(self):
        s = (self.C, self.H, self.W)
        return s if self.N is None else (self.N,) + s

    @property
    def num_blocks(self):
        (kh, kw), (dh, dw) = _pair(self.kernel_size), _pair(self.dilation)
        (ph, pw), (sh, sw) = _pair(self.padding), _pair(self.stride)
        lh = (self.H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        lw = (self.W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return lh * lw

    @property
    def columns_shape(self):
        kh, kw = _pair(self.kernel_size)
        s = (self.C * kh * kw, self.num_blocks)
        return s if self.N is None else (self.N,) + s

    @property
    def output_size(self):
        return (self.H, self.W)

    def kwargs(self):
        return dict(kernel_size=self.kernel_size, dilation=self.dilation,
                    padding=self.padding, stride=self.stride)


FOLD_CASES = [
    FoldCase("k2", 2, 2, 4, 5, 2),
    FoldCase("k3_p1_overlap", 2, 2, 6, 6, 3, padding=1),
    FoldCase("k3_s1_odd", 2, 3, 5, 7, 3),
    FoldCase("mixed_tuples", 2, 2, 7, 8, (2, 3), dilation=(1, 2), padding=(1, 0), stride=(2, 1)),
    FoldCase("dilation2", 2, 2, 9, 9, 3, dilation=2),
    FoldCase("dilation2_pad2_stride2", 2, 2, 8, 7, 3, dilation=2, padding=2, stride=2),
    FoldCase("stride3_gt_kernel2_gaps", 2, 2, 8, 8, 2, stride=3),
    FoldCase("kernel_eq_input", 2, 2, 4, 4, 4),
    FoldCase("kernel_eq_input_pad1", 2, 2, 4, 3, (4, 3), padding=1),
    FoldCase("k1", 2, 3, 4, 5, 1),
    FoldCase("k1_stride2", 2, 2, 5, 5, 1, stride=2),
    FoldCase("nonsquare_kernel_1x4", 2, 2, 5, 6, (1, 4), padding=(0, 2)),
    FoldCase("C1", 2, 1, 6, 6, 3),
    FoldCase("N1", 1, 2, 5, 5, 2, stride=2, padding=1),
    FoldCase("N3", 3, 2, 6, 5, 3, stride=(1, 2), padding=(1, 1)),
    FoldCase("N0", 0, 2, 5, 5, 2),
    FoldCase("medium_N4_C4_16x16", 4, 4, 16, 16, 3, padding=1, stride=2),
    FoldCase("unbatched_k2", None, 2, 5, 6, 2),
    FoldCase("unbatched_mixed", None, 3, 7, 6, (3, 2), dilation=(2, 1), padding=(1, 1), stride=(1, 2)),
]


ALL_CASE_TABLES = {"conv": CONV_CASES, "pool": POOL_CASES, "fold": FOLD_CASES}
