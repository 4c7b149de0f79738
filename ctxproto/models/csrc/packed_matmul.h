// The packed products, for the other kernels of this library (decoder_layer.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace ctxproto {

// Rows of x [rows, in] times a Q4_1 matrix of blocks: [rows, out] (packed_matmul.cpp).
at::Tensor q4_1_matmul(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                       const at::Tensor& m);

}  // namespace ctxproto
