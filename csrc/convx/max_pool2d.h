// max_pool2d on the CPU. Buffers contiguous NCHW; `p` must be validated.
#pragma once
#include "convx/params.h"

namespace convx {

// output[n,c,oh,ow] = max of the window, indices[...] = its flat h*W + w offset in
// the (n, c) plane. Semantics are torch's: a NaN always wins (so the last NaN in
// scan order is kept), ties keep the first maximum, and a window of -inf returns
// -inf with the index of its first element inside the input.
// Dispatches to a row-vectorized kernel for undilated windows, else to the reference.
template <typename T>
void max_pool2d_forward_cpu(const Pool2dParams& p, const T* input, T* output, int64_t* indices);

// The readable one-window-at-a-time scan that defines the semantics above.
template <typename T>
void max_pool2d_forward_reference_cpu(const Pool2dParams& p, const T* input, T* output, int64_t* indices);

// grad_input[n,c, indices[n,c,oh,ow]] += grad_output[n,c,oh,ow]. Max is not
// differentiable, but it is piecewise the identity on the winning element: the
// gradient flows to the argmax and nowhere else (the Maxout argument).
// Returns false if any index lies outside its plane; grad_input is then partly
// written and must be discarded.
template <typename T>
bool max_pool2d_backward_cpu(const Pool2dParams& p, const T* grad_output, const int64_t* indices,
                             T* grad_input);

}  // namespace convx
