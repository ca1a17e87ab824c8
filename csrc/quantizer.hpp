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
#include <vector>

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

    void make_query(const float* q, QueryCode& qc) const {
        qc.q8.assign(dim_padded_, 0);
        qc.q16.assign(dim_padded_, 0);
        float amax = 0.f, offset = 0.f, norm2 = 0.f;
        for (size_t d = 0; d < dim_; ++d) {
            amax = std::max(amax, std::fabs(q[d] * step_[d]));
            offset += q[d] * lo_[d];
            norm2 += q[d] * q[d];
        }
        qc.offset = offset;
        qc.norm2 = norm2;
        qc.alpha = amax > 0.f ? amax / 127.f : 0.f;
        if (amax == 0.f) return;
        const float inv = 127.f / amax;
        for (size_t d = 0; d < dim_; ++d) {
            const float r = round_away(std::min(127.f, std::max(-127.f, q[d] * step_[d] * inv)));
            qc.q8[d] = int8_t(r);
            qc.q16[d] = int16_t(r);
        }
    }

private:
    size_t dim_ = 0, dim_padded_ = 0;
    std::vector<float> lo_, step_;
};

}  // namespace simsearch
