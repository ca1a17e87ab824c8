// Run-time kernel choice: CPUID + XGETBV, never compile-time flags.
#include <cpuid.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/dispatch.hpp"

namespace simsearch {
namespace {

struct CpuFeatures {
    bool avx2 = false, fma = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
};

uint64_t xgetbv0() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (uint64_t(edx) << 32) | eax;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27);
    const bool fma = c & (1u << 12);
    if (!osxsave) return f;
    const uint64_t xcr0 = xgetbv0();
    const bool ymm_os = (xcr0 & 0x6) == 0x6;      // SSE + AVX state saved by the OS
    const bool zmm_os = (xcr0 & 0xE6) == 0xE6;    // + opmask and both ZMM halves
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm_os && (b & (1u << 5));
    f.fma = ymm_os && fma;
    f.avx512f = zmm_os && (b & (1u << 16));
    f.avx512dq = zmm_os && (b & (1u << 17));
    f.avx512bw = zmm_os && (b & (1u << 30));
    f.avx512vl = zmm_os && (b & (1u << 31));
    f.avx512vnni = zmm_os && (c & (1u << 11));
    return f;
}

bool supported(const std::string& name, const CpuFeatures& f) {
    if (name == "scalar") return true;
    if (name == "avx2") return f.avx2 && f.fma;
    if (name == "avx512vnni")
        return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni && f.fma;
    return false;
}

const char* const kAll[] = {"avx512vnni", "avx2", "scalar"};  // best first

}  // namespace

std::vector<std::string> available_isas() {
    static const CpuFeatures f = detect();
    std::vector<std::string> out;
    for (const char* n : kAll)
        if (supported(n, f)) out.emplace_back(n);
    return out;
}

std::vector<std::string> known_isas() { return {kAll, kAll + 3}; }

Kernels select_kernels(const std::string& requested) {
    static const CpuFeatures f = detect();
    std::string name = requested;
    if (name.empty()) {
        const char* env = std::getenv("SIMSEARCH_ISA");
        name = env && *env ? env : "auto";
    }
    if (name == "auto") name = available_isas().front();
    bool known = false;
    for (const char* n : kAll) known = known || name == n;
    if (!known)
        throw std::invalid_argument("unknown ISA '" + name + "': expected one of auto, avx512vnni, avx2, scalar");
    if (!supported(name, f))
        throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU");
    if (name == "avx512vnni") return kernels_avx512vnni();
    if (name == "avx2") return kernels_avx2();
    return kernels_scalar();
}

}  // namespace simsearch
