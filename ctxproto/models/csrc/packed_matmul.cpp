// Float32 rows times weights kept as GGUF blocks: Q4_1 (the body) and Q8_0 (the head).
//
// Each block holds 32 consecutive weights of one output row: Q4_1 as
// w = d * q + m with q in 0..15, Q8_0 as w = d * q with q in -127..127
// (ctxproto/models/packed_linear.py explains why and how the blocks are found).
// The kernels rebuild each weight in registers with the float32 roundings the
// GGUF loader used (a product, then a sum, never fused: -ffp-contract=off), so
// every product is against the very float32 weight of the float layer; only the
// order of the sums differs from torch's. Each output is summed by one thread in
// one fixed order, whatever the number of threads or of rows beside it.
//
// Built with AVX-512, a block is two vectors of 16 weights; with AVX2 and FMA
// (most AMD Zen 2/3 and many Intel CPUs), four vectors of 8, each with its own
// accumulator per row, added in one fixed order at the end. Any other CPU gets
// plain loops, slower than torch's own kernels (vector_width says which).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "packed_matmul.h"
#include "simd.h"

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kHalf = kBlock / 2;
// Rows that share each rebuilt weight; more rows go in groups of this many. The
// grouping changes no sum's order. AVX2's 16 registers hold the 4 accumulators of
// 3 rows and the 4 rebuilt weights.
#if defined(CTXPROTO_AVX2)
constexpr int64_t kMaxRows = 3;
#else
constexpr int64_t kMaxRows = 8;
#endif

struct Q4_1 {
  const uint8_t* qs;  // [out, in / 2]: byte j of a block holds q[j] (low) and q[j + 16]
  const float* d;     // [out, in / 32]
  const float* m;     // [out, in / 32]

  float weight(int64_t block, int64_t j) const {
    const uint8_t byte = qs[block * kHalf + j % kHalf];
    const float q = static_cast<float>(j < kHalf ? byte & 0x0F : byte >> 4);
    return d[block] * q + m[block];
  }
#if defined(CTXPROTO_AVX512)
  void weights(int64_t block, __m512& low, __m512& high) const {
    const __m512i packed = _mm512_cvtepu8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + block * kHalf)));
    const __m512 scale = _mm512_set1_ps(d[block]);
    const __m512 offset = _mm512_set1_ps(m[block]);
    const __m512 q_low = _mm512_cvtepi32_ps(_mm512_and_si512(packed, _mm512_set1_epi32(0x0F)));
    const __m512 q_high = _mm512_cvtepi32_ps(_mm512_srli_epi32(packed, 4));
    low = _mm512_add_ps(_mm512_mul_ps(scale, q_low), offset);
    high = _mm512_add_ps(_mm512_mul_ps(scale, q_high), offset);
  }
#elif defined(CTXPROTO_AVX2)
  // w[0..7], w[8..15] from the low nibbles, w[16..23], w[24..31] from the high ones.
  void weights(int64_t block, __m256 (&w)[4]) const {
    const uint8_t* bytes = qs + block * kHalf;
    const __m256 scale = _mm256_set1_ps(d[block]);
    const __m256 offset = _mm256_set1_ps(m[block]);
    const __m256i nibble = _mm256_set1_epi32(0x0F);
    for (int half = 0; half < 2; ++half) {
      const __m256i packed = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + half * 8)));
      const __m256 q_low = _mm256_cvtepi32_ps(_mm256_and_si256(packed, nibble));
      const __m256 q_high = _mm256_cvtepi32_ps(_mm256_srli_epi32(packed, 4));
      w[half] = _mm256_add_ps(_mm256_mul_ps(scale, q_low), offset);
      w[half + 2] = _mm256_add_ps(_mm256_mul_ps(scale, q_high), offset);
    }
  }
#endif
};

struct Q8_0 {
  const int8_t* qs;  // [out, in]
  const float* d;    // [out, in / 32]

  float weight(int64_t block, int64_t j) const {
    return d[block] * static_cast<float>(qs[block * kBlock + j]);
  }
#if defined(CTXPROTO_AVX512)
  void weights(int64_t block, __m512& low, __m512& high) const {
    const int8_t* q = qs + block * kBlock;
    const __m512 scale = _mm512_set1_ps(d[block]);
    low = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))));
    high = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kHalf)))));
  }
#elif defined(CTXPROTO_AVX2)
  void weights(int64_t block, __m256 (&w)[4]) const {
    const int8_t* q = qs + block * kBlock;
    const __m256 scale = _mm256_set1_ps(d[block]);
    for (int part = 0; part < 4; ++part) {
      const __m256i wide = _mm256_cvtepi8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + part * 8)));
      w[part] = _mm256_mul_ps(scale, _mm256_cvtepi32_ps(wide));
    }
  }
#endif
};

// out[r, o] = x[r, :] . w[o, :] for output rows o in [begin, end), Rows rows of x.
template <int Rows, typename Format>
void rows_times_blocks(const Format& format, const float* x, int64_t in_features, float* out,
                       int64_t out_features, int64_t begin, int64_t end) {
  const int64_t blocks = in_features / kBlock;
  for (int64_t o = begin; o < end; ++o) {
#if defined(CTXPROTO_AVX512)
    __m512 sum_low[Rows];
    __m512 sum_high[Rows];
    for (int r = 0; r < Rows; ++r) {
      sum_low[r] = _mm512_setzero_ps();
      sum_high[r] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; ++b) {
      __m512 w_low;
      __m512 w_high;
      format.weights(o * blocks + b, w_low, w_high);
      for (int r = 0; r < Rows; ++r) {
        const float* xr = x + r * in_features + b * kBlock;
        sum_low[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xr), w_low, sum_low[r]);
        sum_high[r] = _mm512_fmadd_ps(_mm512_loadu_ps(xr + kHalf), w_high, sum_high[r]);
      }
    }
    for (int r = 0; r < Rows; ++r) {
      out[r * out_features + o] = _mm512_reduce_add_ps(_mm512_add_ps(sum_low[r], sum_high[r]));
    }
#elif defined(CTXPROTO_AVX2)
    __m256 sum[Rows][4];
    for (int r = 0; r < Rows; ++r) {
      for (int part = 0; part < 4; ++part) sum[r][part] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; ++b) {
      __m256 w[4];
      format.weights(o * blocks + b, w);
      for (int r = 0; r < Rows; ++r) {
        const float* xr = x + r * in_features + b * kBlock;
        for (int part = 0; part < 4; ++part) {
          sum[r][part] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + part * 8), w[part], sum[r][part]);
        }
      }
    }
    for (int r = 0; r < Rows; ++r) {
      const __m256 low = _mm256_add_ps(sum[r][0], sum[r][1]);
      const __m256 high = _mm256_add_ps(sum[r][2], sum[r][3]);
      out[r * out_features + o] = ctxproto::sum_lanes(_mm256_add_ps(low, high));
    }
#else
    for (int r = 0; r < Rows; ++r) {
      float sum = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t j = 0; j < kBlock; ++j) {
          sum += x[r * in_features + b * kBlock + j] * format.weight(o * blocks + b, j);
        }
      }
      out[r * out_features + o] = sum;
    }
#endif
  }
}

template <typename Format>
at::Tensor rows_times(const Format& format, const at::Tensor& x, int64_t out_features) {
  const int64_t rows = x.size(0);
  const int64_t in_features = x.size(1);
  at::Tensor out = at::empty({rows, out_features}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, out_features, 16, [&](int64_t begin, int64_t end) {
    for (int64_t first = 0; first < rows; first += kMaxRows) {
      const float* xg = xp + first * in_features;
      float* og = op + first * out_features;
      const int64_t n = in_features;
      switch (std::min<int64_t>(kMaxRows, rows - first)) {
        case 1: rows_times_blocks<1>(format, xg, n, og, out_features, begin, end); break;
        case 2: rows_times_blocks<2>(format, xg, n, og, out_features, begin, end); break;
        case 3: rows_times_blocks<3>(format, xg, n, og, out_features, begin, end); break;
        case 4: rows_times_blocks<4>(format, xg, n, og, out_features, begin, end); break;
        case 5: rows_times_blocks<5>(format, xg, n, og, out_features, begin, end); break;
        case 6: rows_times_blocks<6>(format, xg, n, og, out_features, begin, end); break;
        case 7: rows_times_blocks<7>(format, xg, n, og, out_features, begin, end); break;
        default: rows_times_blocks<8>(format, xg, n, og, out_features, begin, end); break;
      }
    }
  });
  return out;
}

void check_rows(const at::Tensor& x, const at::Tensor& d, int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 matrix");
  TORCH_CHECK(x.size(1) % kBlock == 0, "in_features must be a multiple of 32");
  TORCH_CHECK(d.scalar_type() == at::kFloat && d.is_contiguous() &&
                  d.numel() == out_features * (x.size(1) / kBlock),
              "one contiguous float32 scale per block");
}

at::Tensor q4_1_rows(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                     const at::Tensor& m) {
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kByte && qs.is_contiguous(),
              "qs must be a contiguous uint8 matrix");
  check_rows(x, d, qs.size(0));
  TORCH_CHECK(qs.size(1) * 2 == x.size(1), "two weights per byte");
  TORCH_CHECK(m.scalar_type() == at::kFloat && m.is_contiguous() && m.numel() == d.numel(),
              "one contiguous float32 offset per block");
  const Q4_1 format{qs.data_ptr<uint8_t>(), d.data_ptr<float>(), m.data_ptr<float>()};
  return rows_times(format, x, qs.size(0));
}

at::Tensor q8_0_matmul(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d) {
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kChar && qs.is_contiguous(),
              "qs must be a contiguous int8 matrix");
  check_rows(x, d, qs.size(0));
  TORCH_CHECK(qs.size(1) == x.size(1), "one weight per byte");
  const Q8_0 format{qs.data_ptr<int8_t>(), d.data_ptr<float>()};
  return rows_times(format, x, qs.size(0));
}

// Floats per vector of every kernel of this library: 16 where they were built with
// AVX-512, 8 with AVX2 and FMA; 0 where they fell back to scalar loops, slower than
// torch's own kernels, which callers then keep (kernels.py).
int64_t vector_width() { return ctxproto::kVectorWidth; }

}  // namespace

at::Tensor ctxproto::q4_1_matmul(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& d,
                                 const at::Tensor& m) {
  return q4_1_rows(x, qs, d, m);
}

TORCH_LIBRARY(ctxproto, library) {
  library.def("vector_width() -> int", &vector_width);
  library.def("q4_1_matmul(Tensor x, Tensor qs, Tensor d, Tensor m) -> Tensor");
  library.def("q8_0_matmul(Tensor x, Tensor qs, Tensor d) -> Tensor");
}

TORCH_LIBRARY_IMPL(ctxproto, CPU, library) {
  library.impl("q4_1_matmul", &ctxproto::q4_1_matmul);
  library.impl("q8_0_matmul", &q8_0_matmul);
}
