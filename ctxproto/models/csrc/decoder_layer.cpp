// A Llama decoder layer's work around its attention, in two calls instead of about forty.
//
// On a decode step the layer's products take a few microseconds each, and the
// operators between them (two RMS norms, the rotary embedding, SiLU, two residual
// sums) less; what cost most was reaching them: about 45 operator calls per layer
// from Python, each through transformers' modules. These two operators do the
// same arithmetic in C++: the products on the packed kernel, each RMS norm's mean
// and SiLU through torch's own operators (their order of summing, their exp), and
// every other step (a product, a sum, a negation, a square root, a division per
// element) as plain loops, each operation rounded on its own as torch's kernels
// round it (-ffp-contract=off). So the layer's output is bit for bit that of
// transformers' LlamaDecoderLayer over ctxproto's packed layers
// (ctxproto/models/fused_decoder.py routes to them; its tests compare the bits).
// The attention and the KV cache stay in Python between the two, where the
// model's cache object and attention function live.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "packed_matmul.h"

namespace {

float* floats(at::Tensor& tensor) { return tensor.mutable_data_ptr<float>(); }
const float* floats(const at::Tensor& tensor) { return tensor.const_data_ptr<float>(); }

// LlamaRMSNorm.forward on float32 rows: weight * (x * rsqrt(mean(x ** 2) + eps)).
// The mean is torch's (its order of summing); every other step is one IEEE
// operation per element, rounded alone (-ffp-contract=off), as torch's kernels
// round them.
at::Tensor rms_norm(const at::Tensor& hidden, const at::Tensor& weight, double eps) {
  TORCH_CHECK(hidden.size(-1) > 0 && weight.dim() == 1 && weight.numel() == hidden.size(-1) &&
                  weight.scalar_type() == at::kFloat && weight.is_contiguous(),
              "the norm weight must be one contiguous float32 value per feature");
  const at::Tensor states = hidden.contiguous();
  const at::Tensor variance = states.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor out = at::empty_like(states);
  const int64_t features = states.size(-1);
  const int64_t rows = states.numel() / features;
  const float* x = floats(states);
  const float* v = floats(variance);
  const float* w = floats(weight);
  float* o = floats(out);
  const float epsilon = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = 1.0f / std::sqrt(v[r] + epsilon);
    for (int64_t i = 0; i < features; ++i) {
      o[r * features + i] = w[i] * (x[r * features + i] * scale);
    }
  }
  return out;
}

// a + b for two float32 tensors of one shape.
at::Tensor sum(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.sizes() == b.sizes() && a.scalar_type() == at::kFloat &&
                  b.scalar_type() == at::kFloat,
              "a residual sum needs two float32 tensors of one shape");
  const at::Tensor left = a.contiguous();
  const at::Tensor right = b.contiguous();
  at::Tensor out = at::empty_like(left);
  const float* x = floats(left);
  const float* y = floats(right);
  float* o = floats(out);
  for (int64_t i = 0, n = out.numel(); i < n; ++i) o[i] = x[i] + y[i];
  return out;
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

// transformers' apply_rotary_pos_emb for one of q and k: x * cos + rotate_half(x) * sin,
// where rotate_half(x) = cat(-x[half:], x[:half]). ``projected`` is [batch * tokens,
// features] with the heads at ``first``; cos and sin are [1 or batch, tokens, head_dim].
// The result is [batch, heads, tokens, head_dim] laid out token-major, as torch lays
// out the product of the transposed view it is given.
at::Tensor rotary(const at::Tensor& projected, int64_t first, int64_t heads, int64_t head_dim,
                  int64_t batch, int64_t tokens, const at::Tensor& cos, const at::Tensor& sin) {
  at::Tensor out = at::empty({batch, tokens, heads, head_dim}, projected.options());
  const int64_t half = head_dim / 2;
  const int64_t width = projected.size(-1);
  const float* p = floats(projected);
  const float* c = floats(cos);
  const float* s = floats(sin);
  float* o = floats(out);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t angle = ((cos.size(0) == 1 ? 0 : b) * tokens + t) * head_dim;
      const float* row = p + (b * tokens + t) * width + first;
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = row + h * head_dim;
        float* y = o + ((b * tokens + t) * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          y[i] = x[i] * c[angle + i] + (-x[i + half]) * s[angle + i];
        }
        for (int64_t i = half; i < head_dim; ++i) {
          y[i] = x[i] * c[angle + i] + x[i - half] * s[angle + i];
        }
      }
    }
  }
  return out.transpose(1, 2);
}

// The input norm, the q, k and v products as one (their Q4_1 rows stacked in
// that order) and the rotary embedding: the query, key and value states that
// LlamaAttention hands its cache and attention function.
std::tuple<at::Tensor, at::Tensor, at::Tensor> decoder_attention_inputs(
    const at::Tensor& hidden, const at::Tensor& norm_weight, double eps, const at::Tensor& qs,
    const at::Tensor& d, const at::Tensor& m, const at::Tensor& cos, const at::Tensor& sin,
    int64_t query_features, int64_t kv_features, int64_t head_dim) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.scalar_type() == at::kFloat,
              "hidden states must be float32 [batch, tokens, features]");
  TORCH_CHECK(qs.size(0) == query_features + 2 * kv_features, "q, k and v rows stacked");
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0 && query_features % head_dim == 0 &&
                  kv_features % head_dim == 0,
              "q, k and v must be whole heads of an even head_dim");
  const int64_t batch = hidden.size(0);
  const int64_t tokens = hidden.size(1);
  TORCH_CHECK(cos.dim() == 3 && cos.size(1) == tokens && cos.size(2) == head_dim &&
                  (cos.size(0) == 1 || cos.size(0) == batch) && cos.sizes() == sin.sizes(),
              "cos and sin must be [1 or batch, tokens, head_dim]");
  const at::Tensor projected =
      packed(rms_norm(hidden, norm_weight, eps), qs, d, m).reshape({batch * tokens, -1});
  const at::Tensor cos_rows = cos.to(at::kFloat).contiguous();
  const at::Tensor sin_rows = sin.to(at::kFloat).contiguous();
  const at::Tensor value = projected.narrow(-1, query_features + kv_features, kv_features)
                               .view({batch, tokens, -1, head_dim})
                               .transpose(1, 2);
  return {rotary(projected, 0, query_features / head_dim, head_dim, batch, tokens, cos_rows,
                 sin_rows),
          rotary(projected, query_features, kv_features / head_dim, head_dim, batch, tokens,
                 cos_rows, sin_rows),
          value};
}

// The output product and residual sum of the attention, then the MLP (gate and up
// as one product, their rows stacked in that order) and its residual sum.
at::Tensor decoder_output(const at::Tensor& attention, const at::Tensor& residual,
                          const at::Tensor& o_qs, const at::Tensor& o_d, const at::Tensor& o_m,
                          const at::Tensor& norm_weight, double eps, const at::Tensor& gate_up_qs,
                          const at::Tensor& gate_up_d, const at::Tensor& gate_up_m,
                          const at::Tensor& down_qs, const at::Tensor& down_d,
                          const at::Tensor& down_m) {
  TORCH_CHECK(residual.dim() == 3 && residual.scalar_type() == at::kFloat,
              "the residual must be float32 [batch, tokens, features]");
  const at::Tensor merged =
      attention.reshape({residual.size(0), residual.size(1), -1}).contiguous();
  const at::Tensor hidden = sum(residual, packed(merged, o_qs, o_d, o_m));
  const at::Tensor gate_up =
      packed(rms_norm(hidden, norm_weight, eps), gate_up_qs, gate_up_d, gate_up_m);
  TORCH_CHECK(gate_up.size(-1) % 2 == 0, "gate and up rows stacked");
  const int64_t intermediate = gate_up.size(-1) / 2;
  // SiLU is torch's own (its exp), on a contiguous gate as transformers gives it:
  // torch's loop computes some elements with a scalar exp and the rest with a
  // vector one, split by the layout, which can differ in the last bit. The
  // product with up is one rounding per element.
  const at::Tensor gate = at::silu(gate_up.narrow(-1, 0, intermediate).contiguous());
  at::Tensor activated = at::empty_like(gate);
  const float* g = floats(gate);
  const float* gu = floats(gate_up);
  float* a = floats(activated);
  for (int64_t r = 0, rows = gate.numel() / intermediate; r < rows; ++r) {
    for (int64_t i = 0; i < intermediate; ++i) {
      a[r * intermediate + i] = g[r * intermediate + i] * gu[(2 * r + 1) * intermediate + i];
    }
  }
  return sum(hidden, packed(activated, down_qs, down_d, down_m));
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
