// Distance kernels, one translation unit per instruction set.
//
// Each kernel file is compiled with its own ISA flags (see CMakeLists.txt) and
// exports one function returning a table of plain function pointers. The
// files include no STL templates, so no inline function compiled with AVX2 or
// AVX-512 can be merged by the linker into code that runs on an older CPU.
#pragma once
#include <cstddef>
#include <cstdint>

namespace simsearch {

// Integer codes are padded with zeros to a multiple of kCodeAlign bytes, so
// the integer kernels never need a tail loop.
constexpr size_t kCodeAlign = 64;

struct Kernels {
    const char* name;
    // sum_i codes[i] * query[i] over n bytes (n a multiple of kCodeAlign).
    // codes are unsigned 8-bit; the query comes twice: as signed 8-bit
    // (VNNI multiplies u8 x s8 directly) and widened to int16 (AVX2 has no
    // non-saturating u8 x s8 multiply, so it uses vpmaddwd on 16-bit lanes).
    // All kernels return the same exact integer.
    int32_t (*dot_u8s8)(const uint8_t* codes, const int8_t* q8, const int16_t* q16, size_t n);
    // Float kernels for exact rescoring; any n.
    float (*dot_f32)(const float* a, const float* b, size_t n);
    float (*l2sq_f32)(const float* a, const float* b, size_t n);
};

Kernels kernels_scalar();
Kernels kernels_avx2();
Kernels kernels_avx512vnni();

}  // namespace simsearch
