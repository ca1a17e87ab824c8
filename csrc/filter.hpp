// Filtered search policy: which slots may be results, how many can pass, and
// whether to scan them exactly or walk the graph. The graph walk takes the
// Filter as its "allowed" predicate (hnswlib's BaseFilterFunctor), so the
// walk itself knows nothing about attributes or id lists.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "idmap.hpp"

namespace simsearch {

constexpr uint8_t kDeleted = 1;

// Attribute value that no filter matches: slots added before an attribute
// existed, or added without it.
constexpr int32_t kMissingAttr = std::numeric_limits<int32_t>::min();

// The per-slot attribute columns, by name.
struct Attributes {
    std::vector<std::string> names;
    std::vector<std::vector<int32_t>> cols;  // [attribute][slot]

    int index_of(const std::string& name) const {
        for (size_t a = 0; a < names.size(); ++a)
            if (names[a] == name) return int(a);
        return -1;
    }
};

// A search restriction, evaluated per node: a set of allowed slots (from a
// list of ids), and/or per-attribute sets of allowed values (ANDed).
struct Filter {
    struct Condition {
        const int32_t* column;        // one value per slot
        std::vector<int32_t> values;  // sorted allowed values
    };
    std::vector<Condition> conditions;
    std::vector<uint64_t> slot_bits;  // empty: no id restriction
    bool has_ids = false;
    const uint8_t* flags = nullptr;   // deleted slots never pass

    bool operator()(uint32_t s) const {
        if (flags[s] & kDeleted) return false;
        if (has_ids && !((slot_bits[s >> 6] >> (s & 63)) & 1)) return false;
        for (const Condition& c : conditions) {
            const int32_t v = c.column[s];
            if (c.values.size() <= 8) {
                bool hit = false;
                for (int32_t a : c.values) hit |= (a == v);
                if (!hit) return false;
            } else if (!std::binary_search(c.values.begin(), c.values.end(), v)) {
                return false;
            }
        }
        return true;
    }
};

// Posting lists: per attribute, value -> the live slots holding it, built on
// the first filtered search after an add (removals leave them valid: the
// filter rejects deleted slots anyway). Searches share the index lock, so
// building is serialized here.
class Postings {
public:
    using List = std::unordered_map<int32_t, std::vector<uint32_t>>;

    void invalidate() { ok_.store(false, std::memory_order_release); }

    void ensure(const Attributes& attrs, const uint8_t* flags, size_t n_slots) const {
        if (ok_.load(std::memory_order_acquire)) return;
        std::lock_guard<std::mutex> g(mu_);
        if (ok_.load(std::memory_order_relaxed)) return;
        std::vector<List> built(attrs.cols.size());
        for (size_t a = 0; a < attrs.cols.size(); ++a)
            for (size_t s = 0; s < n_slots; ++s) {
                const int32_t v = attrs.cols[a][s];
                if (v != kMissingAttr && !(flags[s] & kDeleted)) built[a][v].push_back(uint32_t(s));
            }
        lists_.swap(built);
        ok_.store(true, std::memory_order_release);
    }

    const List& of(size_t attr) const { return lists_[attr]; }

    size_t memory_bytes() const {
        if (!ok_.load(std::memory_order_acquire)) return 0;
        std::lock_guard<std::mutex> g(mu_);
        size_t b = 0;
        for (const List& pl : lists_)
            for (const auto& kv : pl) b += kv.second.capacity() * 4 + 48;  // + a hash node, roughly
        return b;
    }

private:
    mutable std::mutex mu_;
    mutable std::atomic<bool> ok_{false};
    mutable std::vector<List> lists_;
};

// What the index knows when it plans a filtered search.
struct FilterSources {
    const uint8_t* flags;
    size_t n_slots, n_live;
    const IdMap& ids;
    const Attributes& attrs;
    const Postings& postings;
};

// The plan for one filtered search: the predicate, the candidates an exact
// scan visits (null: every slot), the widened walk width, and the choice.
struct FilterPlan {
    Filter filter;
    std::vector<uint32_t> candidates;
    bool scan_all = true;  // the scan visits every slot, not `candidates`
    size_t ef_walk = 0;
    bool scan = false;     // exact scan instead of a graph walk
};

// The index knows how many items can pass (posting lists per attribute value,
// the id list) and estimates the share that does (exactly when one source
// decides it, from a sample of slots otherwise). It scans the candidates
// exactly when the share is below brute_fraction or the scan costs fewer
// distance computations than the walk would (walk_cost: distance
// computations per entry of the walk's candidate list); otherwise it walks
// the graph with a candidate list widened as the share falls.
inline FilterPlan plan_filter(const FilterSources& src, const uint64_t* ids, size_t n_ids, bool has_ids,
                              const std::vector<std::pair<std::string, std::vector<int32_t>>>& conditions,
                              size_t ef, double brute_fraction, double walk_cost) {
    FilterPlan plan;
    Filter& f = plan.filter;
    f.flags = src.flags;
    std::vector<size_t> attr_of;
    for (const auto& c : conditions) {
        const int a = src.attrs.index_of(c.first);
        if (a < 0) throw std::invalid_argument("unknown attribute '" + c.first + "'");
        Filter::Condition cond{src.attrs.cols[size_t(a)].data(), c.second};
        std::sort(cond.values.begin(), cond.values.end());
        cond.values.erase(std::unique(cond.values.begin(), cond.values.end()), cond.values.end());
        f.conditions.push_back(std::move(cond));
        attr_of.push_back(size_t(a));
    }
    // Candidates for an exact scan: the smallest of the id list and each
    // condition's posting lists, so the scan touches only items that can
    // pass instead of every slot.
    std::vector<uint32_t> from_ids;
    if (has_ids) {
        f.has_ids = true;
        f.slot_bits.assign((src.n_slots + 63) / 64, 0);
        for (size_t i = 0; i < n_ids; ++i) {
            const uint32_t s = src.ids.find(ids[i]);
            if (s == IdMap::kEmpty || ((f.slot_bits[s >> 6] >> (s & 63)) & 1)) continue;
            f.slot_bits[s >> 6] |= uint64_t(1) << (s & 63);
            from_ids.push_back(s);
        }
    }
    if (!conditions.empty()) src.postings.ensure(src.attrs, src.flags, src.n_slots);
    size_t n_cand = has_ids ? from_ids.size() : src.n_slots;
    int best_cond = -1;
    for (size_t j = 0; j < f.conditions.size(); ++j) {
        const Postings::List& pl = src.postings.of(attr_of[j]);
        size_t m = 0;
        for (int32_t v : f.conditions[j].values) {
            auto it = pl.find(v);
            if (it != pl.end()) m += it->second.size();
        }
        if (m < n_cand) {
            n_cand = m;
            best_cond = int(j);
        }
    }
    // The share of items that pass: exact when one source decides it, else
    // estimated on a strided sample of slots.
    double share;
    if (f.conditions.size() + size_t(has_ids) <= 1) {
        share = src.n_live ? double(n_cand) / double(src.n_live) : 0.0;
    } else {
        const size_t stride = std::max<size_t>(1, src.n_slots / 4096);
        size_t seen = 0, pass = 0;
        for (size_t s = 0; s < src.n_slots; s += stride, ++seen) pass += f(uint32_t(s));
        share = seen ? double(pass) / double(seen) : 0.0;
    }
    // A filtered walk explores like an unfiltered one with a wider candidate
    // list, ef_walk ~ ef / share (the nearest ef_walk nodes of any kind hold
    // about ef allowed ones), and keeps the allowed nodes it meets. Bounding
    // the exploration by all nodes, not only allowed ones, stops it from
    // wandering far when the allowed items are few (faiss bounds its
    // selector search the same way, at ef).
    plan.ef_walk = std::max(ef, size_t(double(ef) * std::min(16.0, 1.0 / std::max(share, 1e-6))));
    // Scan or walk, by cost in distance computations: a scan computes one per
    // candidate; a walk about walk_cost per entry of its candidate list
    // (every expanded node scores its unvisited neighbours; 16 by default,
    // measured on 20k and 200k x 384 synthetic data). Below brute_fraction
    // always scan.
    plan.scan = share < brute_fraction || double(n_cand) <= walk_cost * double(plan.ef_walk);
    if (best_cond >= 0) {
        const Postings::List& pl = src.postings.of(attr_of[size_t(best_cond)]);
        plan.candidates.reserve(n_cand);
        for (int32_t v : f.conditions[size_t(best_cond)].values) {
            auto it = pl.find(v);
            if (it != pl.end()) plan.candidates.insert(plan.candidates.end(), it->second.begin(), it->second.end());
        }
        plan.scan_all = false;
    } else if (has_ids) {
        plan.candidates = std::move(from_ids);
        plan.scan_all = false;
    }
    return plan;
}

}  // namespace simsearch
