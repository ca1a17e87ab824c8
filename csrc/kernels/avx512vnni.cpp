// AVX-512 VNNI kernels. Compiled with -mavx512f/bw/vl/dq/vnni; called only
// after CPUID confirmed those and OS support for the ZMM state.
#include <immintrin.h>

#include "kernels/kernels.hpp"

namespace simsearch {
namespace {

// vpdpbusd multiplies unsigned bytes (codes) by signed bytes (query) and adds
// groups of four into int32 lanes without saturation: one instruction per
// 64 dimensions.
int32_t dot_u8s8(const uint8_t* codes, const int8_t* q8, const int16_t*, size_t n) {
    __m512i acc0 = _mm512_setzero_si512();
    __m512i acc1 = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(codes + i), _mm512_loadu_si512(q8 + i));
        acc1 = _mm512_dpbusd_epi32(acc1, _mm512_loadu_si512(codes + i + 64), _mm512_loadu_si512(q8 + i + 64));
    }
    if (i < n) acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(codes + i), _mm512_loadu_si512(q8 + i));
    return _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
}

float dot_f32(const float* a, const float* b, size_t n) {
    __m512 acc0 = _mm512_setzero_ps();
    __m512 acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = (n - i) >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

float l2sq_f32(const float* a, const float* b, size_t n) {
    __m512 acc0 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i < n; i += 16) {
        const __mmask16 m = (n - i) >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        acc0 = _mm512_fmadd_ps(d, d, acc0);
    }
    return _mm512_reduce_add_ps(acc0);
}

}  // namespace

Kernels kernels_avx512vnni() { return Kernels{"avx512vnni", dot_u8s8, dot_f32, l2sq_f32}; }

}  // namespace simsearch
