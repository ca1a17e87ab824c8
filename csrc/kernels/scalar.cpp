// Portable reference kernels: the ground truth the SIMD kernels are tested against.
#include "kernels/kernels.hpp"

namespace simsearch {
namespace {

int32_t dot_u8s8(const uint8_t* codes, const int8_t* q8, const int16_t*, size_t n) {
    int32_t acc = 0;
    for (size_t i = 0; i < n; ++i) acc += int32_t(codes[i]) * int32_t(q8[i]);
    return acc;
}

float dot_f32(const float* a, const float* b, size_t n) {
    float acc = 0.f;
    for (size_t i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

float l2sq_f32(const float* a, const float* b, size_t n) {
    float acc = 0.f;
    for (size_t i = 0; i < n; ++i) {
        const float d = a[i] - b[i];
        acc += d * d;
    }
    return acc;
}

}  // namespace

Kernels kernels_scalar() { return Kernels{"scalar", dot_u8s8, dot_f32, l2sq_f32}; }

}  // namespace simsearch
