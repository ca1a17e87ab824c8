// Compaction: rebuild an index from its live items only (same parameters,
// same quantizer, ids, attributes and default ef kept). Storage shrinks to
// fit and the links are those a fresh build of the survivors gets.
#pragma once
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "graph.hpp"

namespace simsearch {

inline std::unique_ptr<HnswIndex> compacted(const HnswIndex& ix, size_t num_threads) {
    std::shared_lock<std::shared_mutex> r(ix.rw_);
    auto fresh = std::make_unique<HnswIndex>(ix.p_, ix.kern_.name);
    fresh->quant_ = ix.quant_;
    fresh->quant_final_ = ix.quant_final_;
    fresh->next_retrain_ = ix.quant_final_ ? 0 : ix.next_retrain_;
    fresh->set_ef(ix.ef());
    const size_t dim = ix.p_.dim;
    const size_t n_attrs = ix.attrs_.cols.size();
    std::vector<uint64_t> labels;
    std::vector<float> rows;
    labels.reserve(ix.n_live_);
    rows.reserve(ix.n_live_ * dim);
    std::vector<std::vector<int32_t>> attrs(n_attrs);
    for (size_t s = 0; s < ix.n_slots_; ++s) {
        if (ix.flags_[s] & kDeleted) continue;
        labels.push_back(ix.label(s));
        const size_t at = rows.size();
        rows.resize(at + dim);
        // decode(encode) is exact with the same quantizer, so codes survive unchanged
        if (ix.floats_kept()) std::memcpy(rows.data() + at, ix.floats_.row(uint32_t(s)), dim * 4);
        else ix.quant_.decode(ix.codes(uint32_t(s)), rows.data() + at);
        for (size_t a = 0; a < n_attrs; ++a) attrs[a].push_back(ix.attrs_.cols[a][s]);
    }
    // Every attribute stays registered, even when all survivors lack it; the
    // fresh index fills slots 0..n-1 in order, so the columns copy over as
    // they are (missing values included, which add() would refuse).
    fresh->attrs_.names = ix.attrs_.names;
    fresh->attrs_.cols.assign(n_attrs, {});
    fresh->add(rows.data(), labels.data(), labels.size(), num_threads, nullptr);
    for (size_t a = 0; a < n_attrs; ++a) std::copy(attrs[a].begin(), attrs[a].end(), fresh->attrs_.cols[a].begin());
    fresh->next_auto_id_ = std::max(fresh->next_auto_id_, ix.next_auto_id_);
    return fresh;
}

}  // namespace simsearch
