// conv2d on the CPU: forward, backward to input (data), backward to weight, bias
// gradient. All buffers are contiguous NCHW (weight KCRS); `p` must be validated.
#pragma once
#include <string>
#include <utility>

#include "convx/params.h"

namespace convx {

enum class Conv2dAlgo { Auto, Direct, Im2col, Winograd4x4, Winograd2x2, Shifted, Depthwise };

Conv2dAlgo conv2d_algo_from_name(const std::string& name);  // throws on unknown names
const char* conv2d_algo_name(Conv2dAlgo algo);

enum class Conv2dDirection { Forward, BackwardData, BackwardWeight };

// The dispatcher's default choice for a shape and direction (never Auto).
Conv2dAlgo conv2d_choose_algo(const Conv2dParams& p, Conv2dDirection direction);
// Whether conv2d_choose_algo may pick Winograd F(4x4) (process-wide, on by
// default): off keeps 'auto' to F(2x2), whose float32 error is about a GEMM's.
void conv2d_set_allow_winograd_4x4(bool allow);
bool conv2d_allow_winograd_4x4();

// Each entry point resolves Auto through conv2d_choose_algo and returns the
// algorithm that actually ran. Winograd exists for all three directions of 3x3
// stride-1 layers (both tile sizes) and 5x5 ones (winograd_2x2); asking for it on
// other layers raises.

// output = conv(input, weight) + bias (bias may be null).
template <typename T>
Conv2dAlgo conv2d_forward_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                              T* output, Conv2dAlgo algo);

// grad_input = d(sum(grad_output * output)) / d input. Overwrites grad_input.
template <typename T>
Conv2dAlgo conv2d_backward_data_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                    T* grad_input, Conv2dAlgo algo);

// grad_weight = d(...) / d weight. Overwrites grad_weight.
template <typename T>
Conv2dAlgo conv2d_backward_weight_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                      T* grad_weight, Conv2dAlgo algo);

// grad_bias[k] = sum over n, oh, ow of grad_output[n, k, oh, ow].
template <typename T>
void conv2d_backward_bias_cpu(const Conv2dParams& p, const T* grad_output, T* grad_bias);

// ---- the readable references (also reachable as algo "direct") ----------------
template <typename T>
void conv2d_forward_direct_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                               T* output);
template <typename T>
void conv2d_backward_data_direct_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                     T* grad_input);
template <typename T>
void conv2d_backward_weight_direct_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                       T* grad_weight);

// ---- Winograd F(tile x tile, r x r): F(4x4, 3x3), F(2x2, 3x3) and F(2x2, 5x5);
// stride 1, dilation 1, one group ---------------------------------------------------
bool conv2d_winograd_applies(const Conv2dParams& p, int64_t tile);
template <typename T>
void conv2d_forward_winograd_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                                 T* output, int64_t tile);
template <typename T>
void conv2d_backward_data_winograd_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                       T* grad_input, int64_t tile);
// The Winograd kernels' workspace budgets in bytes (forward and backward-data;
// weight gradient), process-wide: a seam for tests, which cut small layers into
// many channel slices and tile blocks with small budgets. A value <= 0 leaves that
// budget as it is; returns the budgets before the call.
std::pair<double, double> conv2d_winograd_set_budgets(double forward_bytes, double weight_bytes);
// Weight gradient by F(3x3, 2x2), F(3x3, 4x4) or F(5x5, 2x2) (the transposes of
// F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5)), by `tile` (2 or 4) and the filter size.
template <typename T>
void conv2d_backward_weight_winograd_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                         T* grad_weight, int64_t tile);

// ---- im2col + GEMM ---------------------------------------------------------------
template <typename T>
void conv2d_forward_im2col_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                               T* output);
template <typename T>
void conv2d_backward_data_im2col_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                     T* grad_input);
template <typename T>
void conv2d_backward_weight_im2col_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                       T* grad_weight);


// ---- shifted-plane implicit GEMM: im2col's GEMM with B read in place from shifted
// views of a padded copy of the image (see conv2d_shifted_cpu.cpp) ----------------
// It applies while the padding does not dominate the padded image and the stride
// is at most the filter's reach.
bool conv2d_shifted_applies(const Conv2dParams& p);
template <typename T>
void conv2d_forward_shifted_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias, T* output);
// Whether its forward (and the flipped forward of its backward-data) runs by
// AVX-512 register tiles instead of the GEMM: float, one group, and a reduction
// of at most 32 taps or few filters over a moderate reduction on a small image
// (see forward_uses_register_tiles in conv2d_shifted_cpu.cpp).
bool conv2d_shifted_forward_uses_register_tiles(const Conv2dParams& p, int64_t elem_bytes);
// Test seam: -1 the rule above, 0 never, 1 always where the CPU and shape allow
// it; returns the previous setting.
int conv2d_shifted_set_register_tiles(int mode);
// Backward-data has three forms: the forward of the flipped filters (stride 1,
// pads within the filter's reach, 64+ input channels per group: its GEMM has C
// rows); else, with 16+ channels and 400+ taps per group, the GEMM over pixel-major
// planes (any stride: a row per output pixel, a column per tap and channel);
// else a scatter of W^T dY (any stride: its GEMM has C*R*S rows).
bool conv2d_shifted_backward_data_flips(const Conv2dParams& p);
bool conv2d_shifted_backward_data_pixel_major(const Conv2dParams& p);
// Whether one image's buffers for the scatter (its col, wide dY and planes) fit
// the 1 MiB in which the shifted kernels take their images.
bool conv2d_shifted_backward_data_scatter_fits(const Conv2dParams& p);
// Returns false, having written nothing meaningful, when it would have to take the
// scatter form with a weight that is not finite (see conv2d_shifted_cpu.cpp); the
// caller then uses im2col.
template <typename T>
bool conv2d_backward_data_shifted_cpu(const Conv2dParams& p, const T* grad_output, const T* weight, T* grad_input);
// Returns false, having written nothing meaningful, when the input holds a value
// that is not finite: this form multiplies some pixels by zeros, and 0 * inf would
// put a NaN where the true gradient has none. The caller then uses im2col.
template <typename T>
bool conv2d_backward_weight_shifted_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                        T* grad_weight);

// ---- depthwise: one input channel per group (groups == C), any number of filters
// per group, dilation, and the strides and padding that the shifted form takes;
// each (image, channel) plane a sum of shifted copies of itself (see
// conv2d_depthwise_cpu.cpp) ------------------------------------------------------
bool conv2d_depthwise_applies(const Conv2dParams& p);
template <typename T>
void conv2d_forward_depthwise_cpu(const Conv2dParams& p, const T* input, const T* weight, const T* bias,
                                  T* output);
// Returns false, having written nothing meaningful, when a weight is not finite
// (this form multiplies the weights by zeros the true sums never form); the caller
// then uses im2col.
template <typename T>
bool conv2d_backward_data_depthwise_cpu(const Conv2dParams& p, const T* grad_output, const T* weight,
                                        T* grad_input);
// Returns false likewise when a pixel of the input is not finite.
template <typename T>
bool conv2d_backward_weight_depthwise_cpu(const Conv2dParams& p, const T* grad_output, const T* input,
                                          T* grad_weight);
}  // namespace convx
