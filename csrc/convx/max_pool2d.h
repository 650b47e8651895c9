// max_pool2d on the CPU. Buffers contiguous NCHW; `p` must be validated.
#pragma once
#include "convx/params.h"

namespace convx {

// output[n,c,oh,ow] = max of the window, indices[...] = its flat h*W + w offset in
// the (n, c) plane. Semantics are torch's: a NaN always wins (so the last NaN in
// scan order is kept), ties keep the first maximum, and a window of -inf returns
// -inf with the index of its first element inside the input.
// Index is int64_t (torch's indices) or int32_t, which halves the indices' share
// of the memory traffic of both passes (both are bound by it); int32_t needs
// planes of fewer than 2**31 elements: the caller checks that.
// Dispatches to a row-vectorized kernel for undilated windows, else to the reference.
template <typename T, typename Index>
void max_pool2d_forward_cpu(const Pool2dParams& p, const T* input, T* output, Index* indices);

// The readable one-window-at-a-time scan that defines the semantics above.
template <typename T, typename Index>
void max_pool2d_forward_reference_cpu(const Pool2dParams& p, const T* input, T* output, Index* indices);

// grad_input[n,c, indices[n,c,oh,ow]] += grad_output[n,c,oh,ow]. Max is not
// differentiable, but it is piecewise the identity on the winning element: the
// gradient flows to the argmax and nowhere else (the Maxout argument).
// Returns false if any index lies outside its plane; grad_input is then partly
// written and must be discarded.
template <typename T, typename Index>
bool max_pool2d_backward_cpu(const Pool2dParams& p, const T* grad_output, const Index* indices,
                             T* grad_input);

}  // namespace convx
