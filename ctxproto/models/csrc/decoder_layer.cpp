// A Llama decoder layer's work around its attention, in two calls instead of about forty.
//
// On a decode step the layer's products take a few microseconds each, and the
// operators between them (two RMS norms, the rotary embedding, SiLU, two residual
// sums) less; what cost most was reaching them: about 45 operator calls per layer
// from Python, each through transformers' modules. These two operators make the
// same ATen calls in the same order, on the same shapes, so the arithmetic is
// bit for bit that of transformers' LlamaDecoderLayer over ctxproto's packed
// layers (ctxproto/models/fused_decoder.py routes to them, and its tests compare
// the bits); only the calls leave Python. The attention and the KV cache stay in
// Python between the two, where the model's cache object and attention
// function live.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "packed_matmul.h"

namespace {

// LlamaRMSNorm.forward.
at::Tensor rms_norm(const at::Tensor& hidden, const at::Tensor& weight, double eps) {
  const at::Tensor states = hidden.to(at::kFloat);
  const at::Tensor variance = states.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (states * at::rsqrt(variance + eps)).to(hidden.scalar_type());
}

// PackedLinear.forward, for a Q4_1 matrix of out_features rows.
at::Tensor packed(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                  const at::Tensor& m) {
  const int64_t in_features = x.size(-1);
  at::Tensor out = ctxproto::q4_1_matmul(x.reshape({-1, in_features}).contiguous(), qs, d, m);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = qs.size(0);
  return out.reshape(shape);
}

// transformers' rotate_half and apply_rotary_pos_emb, one tensor at a time.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

// [batch, tokens, heads * head_dim] -> [batch, heads, tokens, head_dim], as a view.
at::Tensor heads_first(const at::Tensor& x, int64_t head_dim) {
  return x.view({x.size(0), x.size(1), -1, head_dim}).transpose(1, 2);
}

// The input norm, the q, k and v products as one (their Q4_1 rows stacked in
// that order) and the rotary embedding: the query, key and value states that
// LlamaAttention hands its cache and attention function.
std::tuple<at::Tensor, at::Tensor, at::Tensor> decoder_attention_inputs(
    const at::Tensor& hidden, const at::Tensor& norm_weight, double eps, const at::Tensor& qs,
    const at::Tensor& d, const at::Tensor& m, const at::Tensor& cos, const at::Tensor& sin,
    int64_t query_features, int64_t kv_features, int64_t head_dim) {
  TORCH_CHECK(hidden.dim() == 3, "hidden states must be [batch, tokens, features]");
  TORCH_CHECK(qs.size(0) == query_features + 2 * kv_features, "q, k and v rows stacked");
  const at::Tensor projected = packed(rms_norm(hidden, norm_weight, eps), qs, d, m);
  const at::Tensor query = heads_first(projected.narrow(-1, 0, query_features), head_dim);
  const at::Tensor key = heads_first(projected.narrow(-1, query_features, kv_features), head_dim);
  const at::Tensor value =
      heads_first(projected.narrow(-1, query_features + kv_features, kv_features), head_dim);
  const at::Tensor cos_heads = cos.unsqueeze(1);
  const at::Tensor sin_heads = sin.unsqueeze(1);
  return {rotary(query, cos_heads, sin_heads), rotary(key, cos_heads, sin_heads), value};
}

// The output product and residual sum of the attention, then the MLP (gate and up
// as one product, their rows stacked in that order) and its residual sum.
at::Tensor decoder_output(const at::Tensor& attention, const at::Tensor& residual,
                          const at::Tensor& o_qs, const at::Tensor& o_d, const at::Tensor& o_m,
                          const at::Tensor& norm_weight, double eps, const at::Tensor& gate_up_qs,
                          const at::Tensor& gate_up_d, const at::Tensor& gate_up_m,
                          const at::Tensor& down_qs, const at::Tensor& down_d,
                          const at::Tensor& down_m) {
  TORCH_CHECK(residual.dim() == 3, "the residual must be [batch, tokens, features]");
  const at::Tensor merged =
      attention.reshape({residual.size(0), residual.size(1), -1}).contiguous();
  const at::Tensor hidden = residual + packed(merged, o_qs, o_d, o_m);
  const at::Tensor gate_up =
      packed(rms_norm(hidden, norm_weight, eps), gate_up_qs, gate_up_d, gate_up_m);
  const int64_t intermediate = gate_up.size(-1) / 2;
  const at::Tensor activated =
      at::silu(gate_up.narrow(-1, 0, intermediate)) * gate_up.narrow(-1, intermediate, intermediate);
  return hidden + packed(activated, down_qs, down_d, down_m);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ctxproto, library) {
  library.def(
      "decoder_attention_inputs(Tensor hidden, Tensor norm_weight, float eps, Tensor qs, "
      "Tensor d, Tensor m, Tensor cos, Tensor sin, int query_features, int kv_features, "
      "int head_dim) -> (Tensor, Tensor, Tensor)");
  library.def(
      "decoder_output(Tensor attention, Tensor residual, Tensor o_qs, Tensor o_d, Tensor o_m, "
      "Tensor norm_weight, float eps, Tensor gate_up_qs, Tensor gate_up_d, Tensor gate_up_m, "
      "Tensor down_qs, Tensor down_d, Tensor down_m) -> Tensor");
}

TORCH_LIBRARY_IMPL(ctxproto, CPU, library) {
  library.impl("decoder_attention_inputs", &decoder_attention_inputs);
  library.impl("decoder_output", &decoder_output);
}
