// Attention of a few new tokens over the whole KV, in float32: grouped-query heads
// sharing their KV head, each new token seeing the KV up to its own position (the
// causal mask of a decode step, of a verifying forward of speculative decoding, and
// of a short prefill after a prefix-cache hit, all aligned to the end of the KV).
//
// torch's CPU kernels spend about 2.5 times the time it takes to stream the KV
// from memory on this shape (runtime/attention.py gives the figures), and split
// the work by head, which leaves one of two cores idle on a model with 3 KV
// heads. Here the KV of each head is cut into chunks of kChunk tokens, each
// chunk is one task (the way flash-decoding splits it): every query head of the
// group is scored against each key read once, then softmax-weighted values are
// summed in registers; the chunks' partial results are merged with their
// maxima. exp is a degree-6 polynomial after range reduction (relative error
// about 2e-7). The order of the sums is fixed by the chunking and the vector width
// alone (16 floats with AVX-512, 8 with AVX2 and FMA: simd.h), never by the number
// of threads, and a token's result never depends on the tokens after it.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "simd.h"

namespace {

constexpr int64_t kChunk = 256;
// Floats per vector; the scalar loops keep the AVX-512 template arguments.
constexpr int64_t kLanes = ctxproto::kVectorWidth > 0 ? ctxproto::kVectorWidth : 16;
static_assert(64 % kLanes == 0 && kChunk % kLanes == 0, "whole vectors per head and chunk");

struct KV {
  const float* data;
  int64_t batch_stride;
  int64_t head_stride;
  int64_t token_stride;

  const float* at(int64_t b, int64_t h, int64_t t) const {
    return data + b * batch_stride + h * head_stride + t * token_stride;
  }
};

#if defined(CTXPROTO_AVX512)
inline __m512 exp_ps(__m512 x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2.
  // max returns its second operand when either is NaN: a NaN score stays NaN.
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#elif defined(CTXPROTO_AVX2)
inline __m256 exp_ps(__m256 x) {
  // The AVX-512 exp_ps with the same constants; 2^n is built in the exponent bits,
  // as AVX2 has no scalef. n >= -126 after the clamp, so 2^n is a normal float.
  // max returns its second operand when either is NaN: a NaN score stays NaN
  // (its n converts to INT_MIN, whose bits make 2^n = 1).
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i exponent = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
}

// Lanes below ``live`` all ones, the rest zero: a mask for a chunk's last scores.
inline __m256i first_lanes(int64_t live) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(live)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

// Scores, softmax and weighted values of G query heads over one chunk of one KV
// head; writes per head V * kLanes unnormalised outputs, then the chunk's maximum
// score and its sum of exponentials.
template <int G, int V>
void attend_chunk(const float* q, int64_t q_stride, const KV& keys, const KV& values, int64_t b,
                  int64_t h, int64_t begin, int64_t length, float scale, float* partial) {
  constexpr int64_t kDim = V * kLanes;
  float scores[G][kChunk];
#if defined(CTXPROTO_AVX512)
  __m512 query[G][V];
  for (int g = 0; g < G; ++g) {
    for (int j = 0; j < V; ++j) {
      query[g][j] =
          _mm512_mul_ps(_mm512_loadu_ps(q + g * q_stride + j * kLanes), _mm512_set1_ps(scale));
    }
  }
  for (int64_t t = 0; t < length; ++t) {
    const float* key = keys.at(b, h, begin + t);
    __m512 k[V];
    for (int j = 0; j < V; ++j) k[j] = _mm512_loadu_ps(key + j * kLanes);
    for (int g = 0; g < G; ++g) {
      __m512 dot = _mm512_mul_ps(query[g][0], k[0]);
      for (int j = 1; j < V; ++j) dot = _mm512_fmadd_ps(query[g][j], k[j], dot);
      scores[g][t] = _mm512_reduce_add_ps(dot);
    }
  }
  float maximum[G];
  float total[G];
  for (int g = 0; g < G; ++g) {
    maximum[g] = *std::max_element(scores[g], scores[g] + length);
    const __m512 shift = _mm512_set1_ps(maximum[g]);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t t = 0; t < length; t += kLanes) {
      const __mmask16 live = length - t >= kLanes ? 0xFFFF : (1u << (length - t)) - 1;
      const __m512 x = _mm512_maskz_loadu_ps(live, scores[g] + t);
      const __m512 e = _mm512_maskz_mov_ps(live, exp_ps(_mm512_sub_ps(x, shift)));
      _mm512_mask_storeu_ps(scores[g] + t, live, e);
      sum = _mm512_add_ps(sum, e);
    }
    total[g] = _mm512_reduce_add_ps(sum);
  }
  __m512 out[G][V];
  for (int g = 0; g < G; ++g) {
    for (int j = 0; j < V; ++j) out[g][j] = _mm512_setzero_ps();
  }
  for (int64_t t = 0; t < length; ++t) {
    const float* value = values.at(b, h, begin + t);
    __m512 v[V];
    for (int j = 0; j < V; ++j) v[j] = _mm512_loadu_ps(value + j * kLanes);
    for (int g = 0; g < G; ++g) {
      const __m512 weight = _mm512_set1_ps(scores[g][t]);
      for (int j = 0; j < V; ++j) out[g][j] = _mm512_fmadd_ps(weight, v[j], out[g][j]);
    }
  }
  for (int g = 0; g < G; ++g) {
    float* row = partial + g * (kDim + 2);
    for (int j = 0; j < V; ++j) _mm512_storeu_ps(row + j * kLanes, out[g][j]);
    row[kDim] = maximum[g];
    row[kDim + 1] = total[g];
  }
#elif defined(CTXPROTO_AVX2)
  __m256 query[G][V];
  for (int g = 0; g < G; ++g) {
    for (int j = 0; j < V; ++j) {
      query[g][j] =
          _mm256_mul_ps(_mm256_loadu_ps(q + g * q_stride + j * kLanes), _mm256_set1_ps(scale));
    }
  }
  for (int64_t t = 0; t < length; ++t) {
    const float* key = keys.at(b, h, begin + t);
    __m256 k[V];
    for (int j = 0; j < V; ++j) k[j] = _mm256_loadu_ps(key + j * kLanes);
    for (int g = 0; g < G; ++g) {
      __m256 dot = _mm256_mul_ps(query[g][0], k[0]);
      for (int j = 1; j < V; ++j) dot = _mm256_fmadd_ps(query[g][j], k[j], dot);
      scores[g][t] = ctxproto::sum_lanes(dot);
    }
  }
  float maximum[G];
  float total[G];
  for (int g = 0; g < G; ++g) {
    maximum[g] = *std::max_element(scores[g], scores[g] + length);
    const __m256 shift = _mm256_set1_ps(maximum[g]);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t t = 0; t < length; t += kLanes) {
      const __m256i live = first_lanes(length - t);
      const __m256 x = _mm256_maskload_ps(scores[g] + t, live);
      const __m256 e =
          _mm256_and_ps(_mm256_castsi256_ps(live), exp_ps(_mm256_sub_ps(x, shift)));
      _mm256_maskstore_ps(scores[g] + t, live, e);
      sum = _mm256_add_ps(sum, e);
    }
    total[g] = ctxproto::sum_lanes(sum);
  }
  __m256 out[G][V];
  for (int g = 0; g < G; ++g) {
    for (int j = 0; j < V; ++j) out[g][j] = _mm256_setzero_ps();
  }
  for (int64_t t = 0; t < length; ++t) {
    const float* value = values.at(b, h, begin + t);
    __m256 v[V];
    for (int j = 0; j < V; ++j) v[j] = _mm256_loadu_ps(value + j * kLanes);
    for (int g = 0; g < G; ++g) {
      const __m256 weight = _mm256_set1_ps(scores[g][t]);
      for (int j = 0; j < V; ++j) out[g][j] = _mm256_fmadd_ps(weight, v[j], out[g][j]);
    }
  }
  for (int g = 0; g < G; ++g) {
    float* row = partial + g * (kDim + 2);
    for (int j = 0; j < V; ++j) _mm256_storeu_ps(row + j * kLanes, out[g][j]);
    row[kDim] = maximum[g];
    row[kDim + 1] = total[g];
  }
#else
  for (int64_t t = 0; t < length; ++t) {
    const float* key = keys.at(b, h, begin + t);
    for (int g = 0; g < G; ++g) {
      float dot = 0.0f;
      for (int64_t d = 0; d < kDim; ++d) dot += q[g * q_stride + d] * scale * key[d];
      scores[g][t] = dot;
    }
  }
  for (int g = 0; g < G; ++g) {
    float* row = partial + g * (kDim + 2);
    const float maximum = *std::max_element(scores[g], scores[g] + length);
    float total = 0.0f;
    std::fill(row, row + kDim, 0.0f);
    for (int64_t t = 0; t < length; ++t) {
      const float weight = std::exp(scores[g][t] - maximum);
      total += weight;
      const float* value = values.at(b, h, begin + t);
      for (int64_t d = 0; d < kDim; ++d) row[d] += weight * value[d];
    }
    row[kDim] = maximum;
    row[kDim + 1] = total;
  }
#endif
}

using ChunkFn = void (*)(const float*, int64_t, const KV&, const KV&, int64_t, int64_t, int64_t,
                         int64_t, float, float*);

template <int V>
ChunkFn chunk_function(int64_t groups) {
  switch (groups) {
    case 1: return &attend_chunk<1, V>;
    case 2: return &attend_chunk<2, V>;
    case 3: return &attend_chunk<3, V>;
    case 4: return &attend_chunk<4, V>;
    case 5: return &attend_chunk<5, V>;
    case 6: return &attend_chunk<6, V>;
    case 7: return &attend_chunk<7, V>;
    case 8: return &attend_chunk<8, V>;
    default: return nullptr;
  }
}

KV kv_view(const at::Tensor& tensor) {
  return {tensor.data_ptr<float>(), tensor.stride(0), tensor.stride(1), tensor.stride(2)};
}

// query [B, Hq, N, D], key and value [B, Hkv, L, D] (any strides but the last), N <= L:
// query token i of row b sees keys starts[b] .. L - N + i (starts empty: all 0, else one
// per row, the left padding of a batch of rows of different lengths). Returns
// [B, N, Hq, D], the layout attention layers reshape into their output. A row's chunks
// begin at its own start, and a padded row merges empty chunks after its own, which
// add zeros: each row gets the same bits as alone, unpadded.
at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, double scale, at::IntArrayRef starts) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4, "4-d query, key, value");
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
                  value.scalar_type() == at::kFloat,
              "float32 query, key, value");
  TORCH_CHECK(query.is_contiguous(), "a contiguous query");
  TORCH_CHECK(key.stride(3) == 1 && value.stride(3) == 1, "contiguous head dimension");
  TORCH_CHECK(key.sizes() == value.sizes(), "key and value of one shape");
  const int64_t batch = query.size(0);
  const int64_t query_heads = query.size(1);
  const int64_t tokens = query.size(2);
  const int64_t dim = query.size(3);
  const int64_t kv_heads = key.size(1);
  const int64_t length = key.size(2);
  TORCH_CHECK(key.size(0) == batch && key.size(3) == dim, "matching shapes");
  TORCH_CHECK(tokens >= 1 && tokens <= length, "1 to L query tokens");
  TORCH_CHECK(kv_heads >= 1 && query_heads % kv_heads == 0, "query heads in whole groups");
  TORCH_CHECK(starts.empty() || static_cast<int64_t>(starts.size()) == batch,
              "no starts, or one per row");
  for (const int64_t start : starts) {
    TORCH_CHECK(start >= 0 && start <= length - tokens, "each row sees its first token's key");
  }
  const auto start_of = [&](int64_t b) { return starts.empty() ? 0 : starts[b]; };
  const int64_t groups = query_heads / kv_heads;
  ChunkFn attend = dim == 64 ? chunk_function<64 / kLanes>(groups)
                   : dim == 128 ? chunk_function<128 / kLanes>(groups)
                                : nullptr;
  TORCH_CHECK(attend != nullptr, "head dimension 64 or 128, at most 8 query heads per KV head");

  const int64_t chunks = (length + kChunk - 1) / kChunk;
  const int64_t row = dim + 2;
  // [B, Hkv, chunks, N, G, D + 2]: per chunk and token, each head's partial result.
  at::Tensor partial = at::empty({batch, kv_heads, chunks, tokens, groups, row}, query.options());
  const KV keys = kv_view(key);
  const KV values = kv_view(value);
  const float* q = query.data_ptr<float>();
  float* p = partial.data_ptr<float>();
  const float factor = static_cast<float>(scale);
  at::parallel_for(0, batch * kv_heads * chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t h = (task / chunks) % kv_heads;
      const int64_t b = task / (chunks * kv_heads);
      const int64_t begin = start_of(b) + chunk * kChunk;
      for (int64_t i = 0; i < tokens; ++i) {
        float* target = p + (task * tokens + i) * groups * row;
        const int64_t visible = std::min(kChunk, length - tokens + i + 1 - begin);
        if (visible <= 0) {  // the whole chunk is after this token (or the row's last key)
          for (int64_t g = 0; g < groups; ++g) {
            std::fill(target + g * row, target + g * row + dim, 0.0f);
            target[g * row + dim] = -std::numeric_limits<float>::infinity();
            target[g * row + dim + 1] = 0.0f;
          }
          continue;
        }
        const float* first_query = q + ((b * query_heads + h * groups) * tokens + i) * dim;
        attend(first_query, tokens * dim, keys, values, b, h, begin, visible, factor, target);
      }
    }
  });

  at::Tensor out = at::empty({batch, tokens, query_heads, dim}, query.options());
  float* o = out.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < kv_heads; ++h) {
      for (int64_t i = 0; i < tokens; ++i) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t chunk_stride = tokens * groups * row;
          const float* first = p + (((b * kv_heads + h) * chunks * tokens + i) * groups + g) * row;
          float maximum = -std::numeric_limits<float>::infinity();
          for (int64_t c = 0; c < chunks; ++c) {
            maximum = std::max(maximum, first[c * chunk_stride + dim]);
          }
          float* result = o + ((b * tokens + i) * query_heads + h * groups + g) * dim;
          std::fill(result, result + dim, 0.0f);
          float total = 0.0f;
          for (int64_t c = 0; c < chunks; ++c) {
            const float* part = first + c * chunk_stride;
            const float weight = std::exp(part[dim] - maximum);
            total += weight * part[dim + 1];
            for (int64_t d = 0; d < dim; ++d) result[d] += weight * part[d];
          }
          for (int64_t d = 0; d < dim; ++d) result[d] /= total;
        }
      }
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ctxproto, library) {
  library.def(
      "decode_attention(Tensor query, Tensor key, Tensor value, float scale, int[] starts=[]) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(ctxproto, CPU, library) {
  library.impl("decode_attention", &decode_attention);
}
