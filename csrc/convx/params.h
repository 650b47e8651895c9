// Shapes and hyper-parameters of every convx op, with their validation.
//
// Every op is described by one plain struct. `validate()` checks every field in
// checked int64 arithmetic and throws std::invalid_argument (ValueError in Python)
// whose message names the argument as the Python API spells it and its value.
// Validation happens before anything is allocated, so bad input can never reach a
// kernel, and the kernels themselves assume a validated struct.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace convx {

// ---- checked int64 arithmetic -------------------------------------------------
// Sizes come from Python ints, so any product or sum may overflow; each overflow
// becomes an error that says which quantity overflowed.
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    throw std::invalid_argument(std::string(what) + " overflows int64");
  return r;
}
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    throw std::invalid_argument(std::string(what) + " overflows int64");
  return r;
}
inline int64_t checked_product(std::initializer_list<int64_t> factors, const char* what) {
  int64_t r = 1;
  for (int64_t f : factors) r = checked_mul(r, f, what);
  return r;
}

inline std::string pair_str(int64_t a, int64_t b) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
}

// Floor division (rounds toward -infinity), as torch's div_rtn.
inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// The size of each of the equal parts that cut n into as few as possible of at
// most `most` (the last may be shorter); at least 1, so that loops stepping by it
// end even for n = 0. Blocks of a loop made even this way leave no short
// remainder.
inline int64_t equal_part_size(int64_t n, int64_t most) {
  const int64_t parts = std::max<int64_t>(1, (n + most - 1) / most);
  return std::max<int64_t>(1, (n + parts - 1) / parts);
}

// Output length of a sliding window along one axis, in checked arithmetic:
//   out = floor((in + pad_begin + pad_end - dilation*(kernel-1) - 1) / stride) + 1
// May be <= 0; callers turn that into an error naming their own arguments.
// Callers must have checked kernel, stride and dilation positive and padding
// non-negative (validate() does so first): then nothing here can overflow.
inline int64_t window_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad_begin,
                               int64_t pad_end, int64_t dilation) {
  int64_t span = checked_add(checked_mul(dilation, kernel - 1, "dilation * (kernel_size - 1)"), 1,
                             "effective kernel size");
  int64_t padded = checked_add(checked_add(in, pad_begin, "padded input size"), pad_end,
                               "padded input size");
  return floor_div(padded - span, stride) + 1;  // padded >= 0 and span >= 1: no overflow
}

inline void require_positive_pair(const char* name, int64_t a, int64_t b) {
  if (a <= 0 || b <= 0)
    throw std::invalid_argument(std::string(name) + " must be positive, got " + pair_str(a, b));
}
inline void require_non_negative_pair(const char* name, int64_t a, int64_t b) {
  if (a < 0 || b < 0)
    throw std::invalid_argument(std::string(name) + " must be non-negative, got " + pair_str(a, b));
}

// ---- im2col / col2im (unfold / fold) ------------------------------------------
// One image of C channels, H x W, cut into kernel_h x kernel_w blocks. The column
// matrix is (C*kernel_h*kernel_w) x (out_h*out_w), row index (c*kh + i)*kw + j.
// Padding may be asymmetric because conv2d's padding='same' with an even kernel
// pads one more at the bottom/right, as torch does.
struct Im2colParams {
  int64_t C = 1, H = 1, W = 1;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t dilation_h = 1, dilation_w = 1;

  int64_t out_h() const {
    return window_out_size(H, kernel_h, stride_h, pad_top, pad_bottom, dilation_h);
  }
  int64_t out_w() const {
    return window_out_size(W, kernel_w, stride_w, pad_left, pad_right, dilation_w);
  }
  int64_t col_rows() const { return checked_product({C, kernel_h, kernel_w}, "channels * kernel_h * kernel_w"); }
  int64_t col_cols() const { return checked_mul(out_h(), out_w(), "number of blocks"); }

  void validate() const {
    if (C < 0 || H < 0 || W < 0)
      throw std::invalid_argument("image sizes must be non-negative, got C=" + std::to_string(C) +
                                  " H=" + std::to_string(H) + " W=" + std::to_string(W));
    require_positive_pair("kernel_size", kernel_h, kernel_w);
    require_positive_pair("stride", stride_h, stride_w);
    require_positive_pair("dilation", dilation_h, dilation_w);
    require_non_negative_pair("padding", pad_top, pad_left);
    require_non_negative_pair("padding", pad_bottom, pad_right);
    int64_t oh = out_h(), ow = out_w();
    if (oh < 1 || ow < 1)
      throw std::invalid_argument(
          "spatial size " + pair_str(H, W) + " with padding (top, bottom, left, right) (" +
          std::to_string(pad_top) + ", " + std::to_string(pad_bottom) + ", " + std::to_string(pad_left) + ", " +
          std::to_string(pad_right) + ")" +
          ", kernel_size " + pair_str(kernel_h, kernel_w) + ", dilation " +
          pair_str(dilation_h, dilation_w) + " and stride " + pair_str(stride_h, stride_w) +
          " gives " + pair_str(oh, ow) + " blocks: the output size is too small");
    checked_mul(col_rows(), col_cols(), "column matrix size");
    checked_product({C, H, W}, "image size");
  }
};

// ---- conv2d --------------------------------------------------------------------
// input N x C x H x W, weight K x (C/groups) x R x S, output N x K x out_h x out_w.
struct Conv2dParams {
  int64_t N = 0, C = 1, H = 1, W = 1;
  int64_t K = 1, R = 1, S = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;

  int64_t out_h() const { return window_out_size(H, R, stride_h, pad_top, pad_bottom, dilation_h); }
  int64_t out_w() const { return window_out_size(W, S, stride_w, pad_left, pad_right, dilation_w); }
  int64_t channels_per_group() const { return C / groups; }
  int64_t filters_per_group() const { return K / groups; }

  // The im2col geometry of one group of one image.
  Im2colParams im2col() const {
    Im2colParams p;
    p.C = channels_per_group(); p.H = H; p.W = W;
    p.kernel_h = R; p.kernel_w = S;
    p.stride_h = stride_h; p.stride_w = stride_w;
    p.pad_top = pad_top; p.pad_bottom = pad_bottom; p.pad_left = pad_left; p.pad_right = pad_right;
    p.dilation_h = dilation_h; p.dilation_w = dilation_w;
    return p;
  }

  int64_t input_numel() const { return checked_product({N, C, H, W}, "input size"); }
  int64_t weight_numel() const { return checked_product({K, C / groups, R, S}, "weight size"); }
  int64_t output_numel() const { return checked_product({N, K, out_h(), out_w()}, "output size"); }

  void validate() const {
    if (N < 0) throw std::invalid_argument("batch size must be non-negative, got " + std::to_string(N));
    if (C < 1) throw std::invalid_argument("input channels must be positive, got " + std::to_string(C));
    if (K < 0) throw std::invalid_argument("out_channels must be non-negative, got " + std::to_string(K));
    // As torch: an empty image is an error (only an empty batch is allowed).
    require_positive_pair("input spatial size (input.shape[-2:])", H, W);
    require_positive_pair("kernel size (weight.shape[2:])", R, S);
    require_positive_pair("stride", stride_h, stride_w);
    require_positive_pair("dilation", dilation_h, dilation_w);
    require_non_negative_pair("padding", pad_top, pad_left);
    require_non_negative_pair("padding", pad_bottom, pad_right);
    if (groups <= 0) throw std::invalid_argument("groups must be positive, got " + std::to_string(groups));
    if (C % groups != 0)
      throw std::invalid_argument("input channels (" + std::to_string(C) +
                                  ") must be divisible by groups (" + std::to_string(groups) + ")");
    if (K % groups != 0)
      throw std::invalid_argument("out_channels (weight.shape[0] = " + std::to_string(K) +
                                  ") must be divisible by groups (" + std::to_string(groups) + ")");
    int64_t oh = out_h(), ow = out_w();
    if (oh < 1 || ow < 1)
      throw std::invalid_argument(
          "input of spatial size " + pair_str(H, W) + " padded by " +
          pair_str(pad_top + pad_bottom, pad_left + pad_right) + " is smaller than the kernel " +
          pair_str(R, S) + " with dilation " + pair_str(dilation_h, dilation_w) +
          ": the output size " + pair_str(oh, ow) + " is too small");
    input_numel();
    weight_numel();
    output_numel();
    im2col().validate();
  }
};

// ---- max_pool2d ------------------------------------------------------------------
// input N x C x H x W, output and indices N x C x out_h x out_w; each index is the
// flat h*W + w offset of the window's maximum inside its (n, c) plane, as torch.
struct Pool2dParams {
  int64_t N = 0, C = 1, H = 1, W = 1;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  bool ceil_mode = false;

  // torch's pooling_output_shape: with ceil_mode the last window may hang over
  // the bottom/right, but it must start inside the input or the left padding.
  static int64_t axis_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil) {
    int64_t span = checked_add(checked_mul(d, k - 1, "dilation * (kernel_size - 1)"), 1,
                               "effective kernel size");
    int64_t padded = checked_add(in, checked_mul(2, p, "2 * padding"), "padded input size");
    int64_t numerator = padded - span;  // both non-negative: cannot overflow
    if (ceil) numerator = checked_add(numerator, s - 1, "padded input size + stride");
    int64_t out = floor_div(numerator, s) + 1;
    if (ceil && out > 0 && (out - 1) * s >= in + p) --out;  // (out-1)*s <= padded: no overflow
    return out;
  }
  int64_t out_h() const { return axis_out_size(H, kernel_h, stride_h, pad_h, dilation_h, ceil_mode); }
  int64_t out_w() const { return axis_out_size(W, kernel_w, stride_w, pad_w, dilation_w, ceil_mode); }
  int64_t input_numel() const { return checked_product({N, C, H, W}, "input size"); }
  int64_t output_numel() const { return checked_product({N, C, out_h(), out_w()}, "output size"); }

  // True when window `o` along an axis holds at least one input element. With
  // dilation a window can straddle the input and still miss every row of it;
  // torch then returns an index outside the plane, convx refuses such shapes.
  static bool axis_window_hits_input(int64_t o, int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    const int64_t start = o * s - p;
    int64_t first = 0;  // first tap j with start + j*d >= 0
    if (start < 0) first = -start / d + (-start % d != 0);
    return first < k && start + first * d < in;
  }

  // Every window starts before the input ends (the output-size rule above makes
  // sure), so a window starting at or after 0 holds its first tap. Only windows
  // starting in the left padding can miss: their first tap at or after 0 falls at
  // ((o*s - p) mod d), a miss when that is >= in. So nothing can miss when in >= d,
  // and the residues repeat with a period dividing d: checking the first
  // min(#padding windows, d) windows covers all of them in bounded time, even for
  // an empty batch with a 2**40-wide plane.
  static void require_windows_hit_input(const char* axis, const char* unit, int64_t out, int64_t in, int64_t k,
                                        int64_t s, int64_t p, int64_t d) {
    if (p == 0 || in >= d) return;
    const int64_t padding_windows = std::min(out, p / s + (p % s != 0));
    const int64_t to_check = std::min(padding_windows, d);
    for (int64_t o = 0; o < to_check; ++o)
      if (!axis_window_hits_input(o, in, k, s, p, d))
        throw std::invalid_argument("pooling window " + std::to_string(o) + " along the " + axis +
                                    " covers no input " + unit + " (input " + axis + " " + std::to_string(in) +
                                    ", kernel_size " + std::to_string(k) + ", dilation " + std::to_string(d) +
                                    ", padding " + std::to_string(p) + ")");
  }

  void validate() const {
    if (N < 0 || C < 0) throw std::invalid_argument("input batch and channel sizes must be non-negative");
    if (H < 0 || W < 0)
      throw std::invalid_argument("input spatial size must be non-negative, got " + pair_str(H, W));
    require_positive_pair("kernel_size", kernel_h, kernel_w);
    require_positive_pair("stride", stride_h, stride_w);
    require_positive_pair("dilation", dilation_h, dilation_w);
    require_non_negative_pair("padding", pad_h, pad_w);
    if (pad_h > kernel_h / 2 || pad_w > kernel_w / 2)
      throw std::invalid_argument("padding must be at most half of kernel_size, got padding " +
                                  pair_str(pad_h, pad_w) + " for kernel_size " +
                                  pair_str(kernel_h, kernel_w));
    int64_t oh = out_h(), ow = out_w();
    if (oh < 1 || ow < 1)
      throw std::invalid_argument("input of spatial size " + pair_str(H, W) + " with kernel_size " +
                                  pair_str(kernel_h, kernel_w) + ", padding " + pair_str(pad_h, pad_w) +
                                  " and dilation " + pair_str(dilation_h, dilation_w) +
                                  " gives output size " + pair_str(oh, ow) + ", which is too small");
    require_windows_hit_input("height", "row", oh, H, kernel_h, stride_h, pad_h, dilation_h);
    require_windows_hit_input("width", "column", ow, W, kernel_w, stride_w, pad_w, dilation_w);
    input_numel();
    output_numel();
  }
};

}  // namespace convx
