// The vector instructions the kernels of this library are built for, chosen by the
// compiler's target (-march=native): AVX-512 (16 floats a vector), else AVX2 with
// FMA (8 floats: AMD Zen 2 and 3, many Intel CPUs), else plain loops.
#pragma once

#include <cstdint>

#if defined(__AVX512F__)
#define CTXPROTO_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define CTXPROTO_AVX2 1
#include <immintrin.h>
#endif

namespace ctxproto {

#if defined(CTXPROTO_AVX512)
constexpr int64_t kVectorWidth = 16;
#elif defined(CTXPROTO_AVX2)
constexpr int64_t kVectorWidth = 8;
#else
constexpr int64_t kVectorWidth = 0;  // plain loops
#endif

#if defined(CTXPROTO_AVX2)
// The sum of a vector's 8 lanes in one fixed order: halves, then quarters, then pairs.
inline float sum_lanes(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}
#endif

}  // namespace ctxproto
