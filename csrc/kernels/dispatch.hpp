#pragma once
#include <string>
#include <vector>

#include "kernels/kernels.hpp"

namespace simsearch {

// ISAs this CPU runs, best first; "scalar" is always last.
std::vector<std::string> available_isas();
// Every ISA this build carries.
std::vector<std::string> known_isas();
// Kernels for `requested` ("auto", "avx512vnni", "avx2", "scalar"); an empty
// string reads the SIMSEARCH_ISA environment variable, then falls back to
// "auto". Throws std::invalid_argument for an unknown or unsupported name.
Kernels select_kernels(const std::string& requested);

}  // namespace simsearch
