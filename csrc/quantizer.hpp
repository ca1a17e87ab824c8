// Per-dimension affine int8 quantization with integer-only distances.
//
// Scheme. Every dimension d has a range [lo_d, lo_d + 255 * step_d] learned
// from the data (min and max of that dimension). A stored vector x becomes
// unsigned codes c_d = round((x_d - lo_d) / step_d) in 0..255, so that
//     x_d ~ lo_d + step_d * c_d.
// For a float query q the inner product with the reconstruction is
//     q . x ~ sum_d q_d lo_d  +  sum_d (q_d step_d) c_d.
// The first term is one float per query (`offset`). The second folds the
// per-dimension scales into the query, w_d = q_d step_d, which is quantized
// symmetrically per query: w_d ~ alpha * r_d with r_d in -127..127. Then
//     q . x ~ offset + alpha * sum_d r_d c_d,
// and the sum is an exact u8 x s8 integer dot product (vpdpbusd on VNNI).
// L2 adds one stored float per vector, |x_rec|^2:
//     |q - x|^2 ~ |q|^2 + |x_rec|^2 - 2 q . x.
// Cosine normalizes vectors and queries first and then is inner product.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <emmintrin.h>  // SSE2: part of baseline x86-64

#include "kernels/kernels.hpp"

namespace simsearch {

inline size_t padded_dim(size_t dim) { return (dim + kCodeAlign - 1) / kCodeAlign * kCodeAlign; }

struct QueryCode {
    std::vector<int8_t> q8;    // r_d, zero-padded to the padded dimension
    std::vector<int16_t> q16;  // the same values widened for the AVX2 kernel
    float alpha = 0.f;
    float offset = 0.f;
    float norm2 = 0.f;         // |q|^2 (L2 only)
};

// Round half away from zero, written so the compiler vectorizes it on
// baseline x86-64 (std::nearbyint is a libm call per element without SSE4.1).
inline float round_away(float x) { return float(int32_t(x >= 0.f ? x + 0.5f : x - 0.5f)); }

class Quantizer {
public:
    Quantizer() = default;
    explicit Quantizer(size_t dim) : dim_(dim), dim_padded_(padded_dim(dim)), lo_(dim, 0.f), step_(dim, 1.f) {}

    size_t dim() const { return dim_; }
    size_t dim_padded() const { return dim_padded_; }
    const std::vector<float>& lo() const { return lo_; }
    const std::vector<float>& step() const { return step_; }
    std::vector<float>& lo() { return lo_; }
    std::vector<float>& step() { return step_; }

    // Learn per-dimension ranges from n row-major vectors. Row pointers let
    // the caller pass rows that are not contiguous.
    template <class RowFn>
    void train(size_t n, RowFn row) {
        if (n == 0) return;
        std::vector<float> mn(dim_, INFINITY), mx(dim_, -INFINITY);
        for (size_t i = 0; i < n; ++i) {
            const float* x = row(i);
            for (size_t d = 0; d < dim_; ++d) {
                mn[d] = std::min(mn[d], x[d]);
                mx[d] = std::max(mx[d], x[d]);
            }
        }
        for (size_t d = 0; d < dim_; ++d) {
            const float range = mx[d] - mn[d];
            lo_[d] = mn[d];
            // A constant dimension decodes exactly from code 0 with any step.
            step_[d] = range > 0.f ? range / 255.f : 1.f;
        }
    }

    // Install given ranges (dim floats each), e.g. ones trained once for
    // several shards so that their codes and scores are comparable. Checked
    // before anything changes: every lo finite, every step finite and > 0.
    void set(const float* lo, const float* step) {
        for (size_t d = 0; d < dim_; ++d)
            if (!std::isfinite(lo[d]) || !std::isfinite(step[d]) || !(step[d] > 0.f))
                throw std::invalid_argument("quantizer parameters must be finite with a positive step; dimension " +
                                            std::to_string(d) + " is not");
        lo_.assign(lo, lo + dim_);
        step_.assign(step, step + dim_);
    }

    // Codes for x (dim floats) into out (dim_padded bytes); returns |x_rec|^2.
    float encode(const float* x, uint8_t* out) const {
        float norm2 = 0.f;
        for (size_t d = 0; d < dim_; ++d) {
            // clamp before rounding: out-of-range values (after the ranges froze) saturate
            const float c = round_away(std::min(255.f, std::max(0.f, (x[d] - lo_[d]) / step_[d])));
            out[d] = uint8_t(c);
            const float rec = lo_[d] + step_[d] * c;
            norm2 += rec * rec;
        }
        std::fill(out + dim_, out + dim_padded_, uint8_t(0));
        return norm2;
    }

    void decode(const uint8_t* c, float* out) const {
        for (size_t d = 0; d < dim_; ++d) out[d] = lo_[d] + step_[d] * float(c[d]);
    }

    // Building a query form is on the build's hot path (every node-to-node
    // distance needs one), so it is written with SSE2, which every x86-64
    // has: one code path, bit-identical whichever distance kernel runs later.
    // Rounding is cvtps2dq's (to nearest even under the default MXCSR).
    void make_query(const float* q, QueryCode& qc) const {
        if (qc.q8.size() != dim_padded_) {  // the padding must stay zero
            qc.q8.assign(dim_padded_, 0);
            qc.q16.assign(dim_padded_, 0);
        }
        const float* lo = lo_.data();
        const float* st = step_.data();
        const __m128 sign = _mm_set1_ps(-0.f);
        __m128 off0 = _mm_setzero_ps(), off1 = _mm_setzero_ps();
        __m128 nrm0 = _mm_setzero_ps(), nrm1 = _mm_setzero_ps();
        __m128 mx0 = _mm_setzero_ps(), mx1 = _mm_setzero_ps();
        size_t d = 0;
        for (; d + 8 <= dim_; d += 8) {
            const __m128 v0 = _mm_loadu_ps(q + d), v1 = _mm_loadu_ps(q + d + 4);
            off0 = _mm_add_ps(off0, _mm_mul_ps(v0, _mm_loadu_ps(lo + d)));
            off1 = _mm_add_ps(off1, _mm_mul_ps(v1, _mm_loadu_ps(lo + d + 4)));
            nrm0 = _mm_add_ps(nrm0, _mm_mul_ps(v0, v0));
            nrm1 = _mm_add_ps(nrm1, _mm_mul_ps(v1, v1));
            mx0 = _mm_max_ps(mx0, _mm_andnot_ps(sign, _mm_mul_ps(v0, _mm_loadu_ps(st + d))));
            mx1 = _mm_max_ps(mx1, _mm_andnot_ps(sign, _mm_mul_ps(v1, _mm_loadu_ps(st + d + 4))));
        }
        alignas(16) float lanes[3][8];
        _mm_store_ps(lanes[0], off0); _mm_store_ps(lanes[0] + 4, off1);
        _mm_store_ps(lanes[1], nrm0); _mm_store_ps(lanes[1] + 4, nrm1);
        _mm_store_ps(lanes[2], mx0);  _mm_store_ps(lanes[2] + 4, mx1);
        for (size_t l = 0; d + l < dim_; ++l) {
            const float v = q[d + l];
            lanes[0][l] += v * lo[d + l];
            lanes[1][l] += v * v;
            lanes[2][l] = std::max(lanes[2][l], std::fabs(v * st[d + l]));
        }
        float offset = 0.f, norm2 = 0.f, amax = 0.f;
        for (size_t l = 0; l < 8; ++l) {
            offset += lanes[0][l];
            norm2 += lanes[1][l];
            amax = std::max(amax, lanes[2][l]);
        }
        qc.offset = offset;
        qc.norm2 = norm2;
        qc.alpha = amax > 0.f ? amax / 127.f : 0.f;
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        int8_t* q8 = qc.q8.data();
        int16_t* q16 = qc.q16.data();
        const __m128 vinv = _mm_set1_ps(inv), lo127 = _mm_set1_ps(-127.f), hi127 = _mm_set1_ps(127.f);
        size_t i = 0;
        for (; i + 8 <= dim_; i += 8) {
            __m128 a = _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(q + i), _mm_loadu_ps(st + i)), vinv);
            __m128 b = _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(q + i + 4), _mm_loadu_ps(st + i + 4)), vinv);
            a = _mm_min_ps(_mm_max_ps(a, lo127), hi127);
            b = _mm_min_ps(_mm_max_ps(b, lo127), hi127);
            const __m128i w = _mm_packs_epi32(_mm_cvtps_epi32(a), _mm_cvtps_epi32(b));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(q16 + i), w);
            _mm_storel_epi64(reinterpret_cast<__m128i*>(q8 + i), _mm_packs_epi16(w, w));
        }
        for (; i < dim_; ++i) {
            const float r = std::min(127.f, std::max(-127.f, q[i] * st[i] * inv));
            const int v = _mm_cvtss_si32(_mm_set_ss(r));
            q8[i] = int8_t(v);
            q16[i] = int16_t(v);
        }
    }

private:
    size_t dim_ = 0, dim_padded_ = 0;
    std::vector<float> lo_, step_;
};

}  // namespace simsearch
