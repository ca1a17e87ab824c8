// AVX2 + FMA kernels. Compiled with -mavx2 -mfma; called only after CPUID
// confirmed AVX2, FMA and OS support for the YMM state.
#include <immintrin.h>

#include "kernels/kernels.hpp"

namespace simsearch {
namespace {

inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Codes are zero-extended to 16 bits and multiplied with the pre-widened
// query by vpmaddwd, which cannot saturate (255 * 127 * 2 < 2^31). The
// u8 x s8 vpmaddubsw would be one instruction shorter but saturates at
// 2^15, which 255 * 127 * 2 exceeds.
int32_t dot_u8s8(const uint8_t* codes, const int8_t*, const int16_t* q16, size_t n) {
    __m256i acc0 = _mm256_setzero_si256();
    __m256i acc1 = _mm256_setzero_si256();
    for (size_t i = 0; i < n; i += 32) {
        const __m256i c0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
        const __m256i c1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i + 16)));
        const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q16 + i));
        const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q16 + i + 16));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(c0, q0));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(c1, q1));
    }
    return hsum_epi32(_mm256_add_epi32(acc0, acc1));
}

float dot_f32(const float* a, const float* b, size_t n) {
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float acc = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

float l2sq_f32(const float* a, const float* b, size_t n) {
    __m256 acc0 = _mm256_setzero_ps();
    __m256 acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        acc0 = _mm256_fmadd_ps(d0, d0, acc0);
        acc1 = _mm256_fmadd_ps(d1, d1, acc1);
    }
    float acc = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) {
        const float d = a[i] - b[i];
        acc += d * d;
    }
    return acc;
}

}  // namespace

Kernels kernels_avx2() { return Kernels{"avx2", dot_u8s8, dot_f32, l2sq_f32}; }

}  // namespace simsearch
