// im2col / col2im: the unfold / fold operations, and the lowering the GEMM
// convolution paths use. Geometry in Im2colParams (params.h).
#pragma once
#include "convx/params.h"

namespace convx {

// col[(c*kh + i)*kw + j][oh*out_w + ow] = image[c][oh*sh - pad_top + i*dh][ow*sw - pad_left + j*dw],
// zero where that position falls in the padding. image: C x H x W contiguous.
template <typename T>
void im2col_cpu(const Im2colParams& p, const T* image, T* col);

// The adjoint of im2col: every column entry is added back onto the pixel it was
// copied from (padding entries are dropped). Overwrites image (C x H x W).
// Each channel is summed by one thread in a fixed order: bitwise repeatable.
template <typename T>
void col2im_cpu(const Im2colParams& p, const T* col, T* image);

// Columns [l0, l1) of im2col's output only, written to col[row * ld + (l - l0)]:
// lets the GEMM paths lower an image in cache-sized pieces.
template <typename T>
void im2col_columns_cpu(const Im2colParams& p, const T* image, int64_t l0, int64_t l1, T* col, int64_t ld);

// Adds columns [l0, l1) (col[row * ld + (l - l0)]) back onto image, the adjoint of
// im2col_columns_cpu; does not clear image first. Fixed order per channel.
template <typename T>
void col2im_columns_add_cpu(const Im2colParams& p, const T* col, int64_t ld, int64_t l0, int64_t l1, T* image);

}  // namespace convx
