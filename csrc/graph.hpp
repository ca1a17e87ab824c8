// HNSW over int8 codes (Malkov & Yashunin, 2016/2018), after hnswlib's hnswalg.h.
//
// Storage, per slot (a slot is a position; ids are the user's uint64 labels):
//   level-0 record: [uint32 count][uint32 links[M0]][uint8 codes[dim_padded]][float |x_rec|^2]
//   labels_ (uint64), levels_ (uint8), flags_ (uint8: deleted), upper_off_ (uint32)
//   upper_pool_: levels 1..L of a node as L blocks of [count][links[M]]
//   floats_ (optional): the float32 originals, kept for rescoring and, until
//   the quantizer is final, for retraining it.
// Keeping links and codes in one record means a node's neighbour list and a
// neighbour's codes arrive in few cache lines, as in hnswlib's data_level0.
//
// Concurrency: add/remove/compaction hold the index lock exclusively and run
// inserts on a thread pool with striped per-node locks (never two held at
// once); searches hold it shared and read links without node locks.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "buffer.hpp"
#include "idmap.hpp"
#include "kernels/dispatch.hpp"
#include "parallel.hpp"
#include "quantizer.hpp"
#include "visited.hpp"

namespace simsearch {

enum class Metric : uint32_t { Cosine = 0, IP = 1, L2 = 2 };

constexpr uint32_t kNone = 0xFFFFFFFFu;
constexpr uint64_t kNoId = std::numeric_limits<uint64_t>::max();
constexpr uint8_t kDeleted = 1;
constexpr int kMaxLevel = 31;

struct IndexParams {
    size_t dim = 0;
    Metric metric = Metric::Cosine;
    size_t M = 16;
    size_t ef_construction = 200;
    bool keep_floats = false;  // rescoring
    uint64_t seed = 0x5eed5eedULL;
    size_t train_limit = 20000;  // vectors seen before the quantizer is final
};

using DistId = std::pair<float, uint32_t>;

// Attribute value that no filter matches: slots added before an attribute
// existed, or added without it.
constexpr int32_t kMissingAttr = std::numeric_limits<int32_t>::min();

// A search restriction, evaluated per node in C++: a set of allowed slots
// (from a list of ids), and/or per-attribute sets of allowed values (ANDed).
struct Filter {
    struct Condition {
        const int32_t* column;       // one value per slot
        std::vector<int32_t> values;  // sorted allowed values
    };
    std::vector<Condition> conditions;
    std::vector<uint64_t> slot_bits;  // empty: no id restriction
    bool has_ids = false;
    const uint8_t* flags = nullptr;   // deleted slots never pass

    bool operator()(uint32_t s) const {
        if (flags[s] & 1) return false;
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
using MaxHeap = std::priority_queue<DistId>;

class HnswIndex {
public:
    HnswIndex(const IndexParams& p, const std::string& isa)
        : p_(p), quant_(p.dim), kern_(select_kernels(isa)), locks_(new std::mutex[kStripes]) {
        if (p.dim == 0) throw std::invalid_argument("dim must be positive");
        if (p.M < 2) throw std::invalid_argument("M must be at least 2");
        if (p.M > 1024) throw std::invalid_argument("M must be at most 1024");
        if (p.ef_construction < 1) throw std::invalid_argument("ef_construction must be positive");
        init_layout();
    }

    // ---- properties -----------------------------------------------------
    const IndexParams& params() const { return p_; }
    size_t dim() const { return p_.dim; }
    size_t size() const { return n_live_; }
    size_t n_slots() const { return n_slots_; }
    size_t n_deleted() const { return n_slots_ - n_live_; }
    const char* isa() const { return kern_.name; }
    bool quantizer_final() const { return quant_final_; }
    bool has_floats() const { return !floats_.empty_floats(); }
    uint64_t next_auto_id() const { return next_auto_id_; }
    const Quantizer& quantizer() const { return quant_; }
    int max_level() const { return max_level_; }

    void set_isa(const std::string& isa) {
        std::unique_lock<std::shared_mutex> w(rw_);
        kern_ = select_kernels(isa);
    }

    size_t memory_bytes() const {
        size_t b = data0_.mapped() ? 0 : data0_.bytes();
        b += labels_.mapped() ? 0 : labels_.bytes();
        b += floats_.buf.mapped() ? 0 : floats_.buf.bytes();
        b += levels_.capacity() + flags_.capacity() + upper_off_.capacity() * 4 + upper_pool_.capacity() * 4;
        b += free_.capacity() * 4 + ids_.memory_bytes() + kStripes * sizeof(std::mutex);
        for (const auto& col : attr_cols_) b += col.capacity() * 4;
        if (postings_ok_.load(std::memory_order_acquire)) {
            std::lock_guard<std::mutex> g(postings_mu_);
            for (const Postings& pl : postings_)
                for (const auto& kv : pl) b += kv.second.capacity() * 4 + 48;  // + a hash node, roughly
        }
        return b;
    }

    // ---- ids ------------------------------------------------------------
    bool contains(uint64_t id) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        return ids_.find(id) != IdMap::kEmpty;
    }

    std::vector<uint64_t> ids() const {
        std::shared_lock<std::shared_mutex> r(rw_);
        std::vector<uint64_t> out;
        out.reserve(n_live_);
        for (size_t s = 0; s < n_slots_; ++s)
            if (!(flags_[s] & kDeleted)) out.push_back(label(s));
        return out;
    }

    // ---- add ------------------------------------------------------------
    // x: n x dim float32 rows (normalized by the caller for cosine); ids: n
    // labels, none present and none repeated (checked here before anything
    // changes, so a failed call leaves the index as it was).
    // attr_names/attr_values: optional attribute columns for these n rows
    // (attr_values[j] points at n int32 values); new names are registered,
    // and rows that lack a registered attribute get kMissingAttr.
    void add(const float* x, const uint64_t* ids, size_t n, size_t num_threads, const CancelCheck& cancel,
             const std::vector<std::string>& attr_names = {}, const std::vector<const int32_t*>& attr_values = {}) {
        std::unique_lock<std::shared_mutex> w(rw_);
        if (n == 0) return;
        check_new_ids(ids, n);
        if (attr_names.size() != attr_values.size()) throw std::invalid_argument("attribute names and values differ in count");
        for (size_t j = 0; j < attr_names.size(); ++j) {
            if (attr_names[j].empty() || attr_names[j].find('\0') != std::string::npos)
                throw std::invalid_argument("attribute names must be non-empty and contain no NUL");
            for (size_t i = 0; i < n; ++i)
                if (attr_values[j][i] == kMissingAttr)
                    throw std::invalid_argument("attribute '" + attr_names[j] + "' uses -2**31, which marks a missing value");
        }
        for (const std::string& name : attr_names)
            if (attr_index(name) < 0) {
                attr_names_.push_back(name);
                attr_cols_.emplace_back(capacity_, kMissingAttr);
            }
        if (n_slots_ + n - std::min(n, free_.size()) >= size_t(kNone) - 1)
            throw std::invalid_argument("index is full: at most 2^32 - 2 slots");

        // 1. Slots: reuse deleted ones first, then fresh ones. Memory is
        // reserved before anything changes.
        const size_t n_reuse = std::min(n, free_.size());
        const size_t first_fresh = n_slots_;
        const size_t new_n_slots = first_fresh + (n - n_reuse);
        reserve(new_n_slots);
        std::vector<uint32_t> slots(n);
        for (size_t i = 0; i < n_reuse; ++i) {
            slots[i] = free_.back();
            free_.pop_back();
        }
        for (size_t i = n_reuse; i < n; ++i) slots[i] = uint32_t(first_fresh + (i - n_reuse));

        // 2. Detach reused slots from the graph while their old data is intact.
        std::vector<uint32_t> reused(slots.begin(), slots.begin() + n_reuse);
        if (!reused.empty()) unlink_slots(reused, num_threads);

        // 3. Write floats, (re)train the quantizer if due, encode.
        n_slots_ = new_n_slots;
        if (floats_.active())
            for (size_t i = 0; i < n; ++i) std::memcpy(floats_.row(slots[i]), x + i * p_.dim, p_.dim * 4);
        const bool retrain = !quant_final_ && n_slots_ >= next_retrain_;
        if (retrain) train_quantizer();
        for (size_t i = 0; i < n; ++i) {
            const uint32_t s = slots[i];
            set_norm2(s, quant_.encode(x + i * p_.dim, codes(s)));
            set_label(s, ids[i]);
            flags_[s] = 0;
            for (auto& col : attr_cols_) col[s] = kMissingAttr;
            for (size_t j = 0; j < attr_names.size(); ++j) attr_cols_[size_t(attr_index(attr_names[j]))][s] = attr_values[j][i];
            // A reused slot keeps its level: nodes that still link to it at
            // upper levels must find a list there.
            if (i < n_reuse) clear_links(s);
            else assign_level(s, level_for(ids[i]));
            ids_.insert(ids[i], s);
            next_auto_id_ = std::max(next_auto_id_, ids[i] == kNoId - 1 ? ids[i] : ids[i] + 1);
        }
        if (retrain) reencode_all();
        postings_ok_.store(false, std::memory_order_release);
        if (quant_final_ && !p_.keep_floats) floats_.drop();
        n_live_ += n;
        visited_.clear();

        // 4. Link. The first new node becomes the entry point if there is none.
        parallel_for(
            n, num_threads, [&](size_t i) { insert(slots[i], x + i * p_.dim); }, cancel, 1);
    }

    // ---- remove ---------------------------------------------------------
    void remove(const uint64_t* ids, size_t n) {
        std::unique_lock<std::shared_mutex> w(rw_);
        std::vector<uint32_t> slots(n);
        for (size_t i = 0; i < n; ++i) {
            slots[i] = ids_.find(ids[i]);
            if (slots[i] == IdMap::kEmpty) throw std::out_of_range("unknown id " + std::to_string(ids[i]));
        }
        std::vector<uint32_t> sorted(slots);
        std::sort(sorted.begin(), sorted.end());
        if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
            throw std::invalid_argument("ids contains duplicates");
        for (size_t i = 0; i < n; ++i) {
            flags_[slots[i]] |= kDeleted;
            ids_.erase(ids[i]);
            free_.push_back(slots[i]);
        }
        n_live_ -= n;
    }

    // ---- search ---------------------------------------------------------
    // q: n x dim float32 rows (normalized for cosine). Writes k ids and
    // scores per row, best first, padded with kNoId / NaN.
    void search(const float* q, size_t n, size_t k, size_t ef, bool rescore, size_t num_threads,
                uint64_t* out_ids, float* out_scores, const CancelCheck& cancel) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        rescore = rescore && has_floats();
        ef = std::max(ef, k);
        parallel_for(
            n, num_threads,
            [&](size_t i) { search_one(q + i * p_.dim, k, ef, rescore, out_ids + i * k, out_scores + i * k); },
            cancel, n > 256 ? 16 : 1);
    }

    // Filtered search. ids/n_ids: allowed ids (unknown ones are ignored);
    // conditions: attribute name -> allowed values. The index knows how many
    // items can pass (posting lists per attribute value, the id list) and
    // estimates the share that does (exactly when one source decides it,
    // from a sample of slots otherwise). It scans the candidates exactly over
    // the codes when the share is below brute_fraction or the scan costs
    // fewer distance computations than the walk would (walk_cost: distance
    // computations per entry of the walk's candidate list); otherwise it
    // walks the graph through every node, bounded by a candidate list
    // widened as the share falls, and keeps only allowed ones. A walk that
    // finds fewer than k allowed items falls back to the scan, so every
    // query gets k results whenever k items pass.
    void search_filtered(const float* q, size_t n, size_t k, size_t ef, bool rescore, size_t num_threads,
                         const uint64_t* ids, size_t n_ids, bool has_ids,
                         const std::vector<std::pair<std::string, std::vector<int32_t>>>& conditions,
                         double brute_fraction, double walk_cost, uint64_t* out_ids, float* out_scores,
                         const CancelCheck& cancel) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        rescore = rescore && has_floats();
        ef = std::max(ef, k);
        Filter f;
        f.flags = flags_.data();
        for (const auto& c : conditions) {
            const int a = attr_index(c.first);
            if (a < 0) throw std::invalid_argument("unknown attribute '" + c.first + "'");
            Filter::Condition cond{attr_cols_[size_t(a)].data(), c.second};
            std::sort(cond.values.begin(), cond.values.end());
            cond.values.erase(std::unique(cond.values.begin(), cond.values.end()), cond.values.end());
            f.conditions.push_back(std::move(cond));
        }
        // Candidates for an exact scan: the smallest of the id list and each
        // condition's posting lists, so the scan touches only items that can
        // pass instead of every slot.
        std::vector<uint32_t> from_ids;
        if (has_ids) {
            f.has_ids = true;
            f.slot_bits.assign((n_slots_ + 63) / 64, 0);
            for (size_t i = 0; i < n_ids; ++i) {
                const uint32_t s = ids_.find(ids[i]);
                if (s == IdMap::kEmpty || ((f.slot_bits[s >> 6] >> (s & 63)) & 1)) continue;
                f.slot_bits[s >> 6] |= uint64_t(1) << (s & 63);
                from_ids.push_back(s);
            }
        }
        if (!conditions.empty()) ensure_postings();
        size_t n_cand = has_ids ? from_ids.size() : n_slots_;
        int best_cond = -1;
        for (size_t j = 0; j < f.conditions.size(); ++j) {
            const Postings& pl = postings_[size_t(attr_index(conditions[j].first))];
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
        // The share of items that pass: exact when one source decides it,
        // else estimated on a strided sample of slots.
        double share;
        if (f.conditions.size() + size_t(has_ids) <= 1) {
            share = n_live_ ? double(n_cand) / double(n_live_) : 0.0;
        } else {
            const size_t stride = std::max<size_t>(1, n_slots_ / 4096);
            size_t seen = 0, pass = 0;
            for (size_t s = 0; s < n_slots_; s += stride, ++seen) pass += f(uint32_t(s));
            share = seen ? double(pass) / double(seen) : 0.0;
        }
        // A filtered walk explores like an unfiltered one with a wider
        // candidate list, ef_walk ~ ef / share (the nearest ef_walk nodes of
        // any kind hold about ef allowed ones), and keeps the allowed nodes it
        // meets. Bounding the exploration by all nodes, not only allowed
        // ones, stops it from wandering far when the allowed items are few
        // (faiss bounds its selector search the same way, at ef).
        const size_t ef_walk =
            std::max(ef, size_t(double(ef) * std::min(16.0, 1.0 / std::max(share, 1e-6))));
        // Scan or walk, by cost in distance computations: a scan computes one
        // per candidate; a walk about walk_cost per entry of its candidate
        // list (every expanded node scores its unvisited neighbours; 16 by
        // default, measured on 20k and 200k x 384 synthetic data). Below
        // brute_fraction always scan.
        const bool brute = share < brute_fraction || double(n_cand) <= walk_cost * double(ef_walk);
        std::vector<uint32_t> cands;
        const std::vector<uint32_t>* scan_list = nullptr;  // null: every slot
        if (best_cond >= 0) {
            const Postings& pl = postings_[size_t(attr_index(conditions[size_t(best_cond)].first))];
            cands.reserve(n_cand);
            for (int32_t v : f.conditions[size_t(best_cond)].values) {
                auto it = pl.find(v);
                if (it != pl.end()) cands.insert(cands.end(), it->second.begin(), it->second.end());
            }
            scan_list = &cands;
        } else if (has_ids) {
            scan_list = &from_ids;
        }
        parallel_for(
            n, num_threads,
            [&](size_t i) {
                const float* qi = q + i * p_.dim;
                uint64_t* oi = out_ids + i * k;
                float* os = out_scores + i * k;
                if (!brute) {
                    search_one(qi, k, ef, rescore, oi, os, &f, ef_walk);
                    if (oi[k - 1] != kNoId) return;
                }
                scan_filtered(qi, k, ef, rescore, f, scan_list, oi, os);
            },
            cancel, n > 256 ? 16 : 1);
    }

    // Rebuild from the live items only (same parameters, same quantizer, ids
    // and attributes kept): storage shrinks to fit and the links are those a
    // fresh build of the survivors gets.
    std::unique_ptr<HnswIndex> compacted(size_t num_threads) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        auto fresh = std::make_unique<HnswIndex>(p_, kern_.name);
        fresh->quant_ = quant_;
        fresh->quant_final_ = quant_final_;
        fresh->next_retrain_ = quant_final_ ? 0 : next_retrain_;
        std::vector<uint64_t> labels;
        std::vector<float> rows;
        labels.reserve(n_live_);
        rows.reserve(n_live_ * p_.dim);
        std::vector<std::vector<int32_t>> attrs(attr_cols_.size());
        for (size_t s = 0; s < n_slots_; ++s) {
            if (flags_[s] & kDeleted) continue;
            labels.push_back(label(s));
            const size_t at = rows.size();
            rows.resize(at + p_.dim);
            // decode(encode) is exact with the same quantizer, so codes survive unchanged
            if (has_floats()) std::memcpy(rows.data() + at, floats_.row(uint32_t(s)), p_.dim * 4);
            else quant_.decode(codes(uint32_t(s)), rows.data() + at);
            for (size_t a = 0; a < attr_cols_.size(); ++a) attrs[a].push_back(attr_cols_[a][s]);
        }
        std::vector<const int32_t*> cols;
        for (auto& a : attrs) cols.push_back(a.data());
        // Register every attribute even when all survivors lack it.
        fresh->attr_names_ = attr_names_;
        fresh->attr_cols_.assign(attr_names_.size(), {});
        std::vector<std::string> names;
        std::vector<const int32_t*> vals;
        for (size_t a = 0; a < attr_names_.size(); ++a) {
            bool any = false;
            for (int32_t v : attrs[a]) any |= v != kMissingAttr;
            if (any) {
                names.push_back(attr_names_[a]);
                vals.push_back(cols[a]);
            }
        }
        fresh->add(rows.data(), labels.data(), labels.size(), num_threads, nullptr, names, vals);
        fresh->next_auto_id_ = std::max(fresh->next_auto_id_, next_auto_id_);
        return fresh;
    }

    const std::vector<std::string>& attribute_names() const { return attr_names_; }

    // Exact search over the int8 codes (no graph): the reference that
    // separates what quantization loses from what the graph loses.
    void search_exact(const float* q, size_t n, size_t k, bool use_floats, size_t num_threads,
                      uint64_t* out_ids, float* out_scores, const CancelCheck& cancel) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        if (use_floats && !has_floats())
            throw std::invalid_argument("exact float search needs the float originals (rescore=True)");
        parallel_for(
            n, num_threads,
            [&](size_t i) {
                const float* qi = q + i * p_.dim;
                QueryCode qc;
                quant_.make_query(qi, qc);
                MaxHeap top;
                for (size_t s = 0; s < n_slots_; ++s) {
                    if (flags_[s] & kDeleted) continue;
                    const float d = use_floats ? exact_dist(qi, uint32_t(s)) : dist(qc, uint32_t(s));
                    if (top.size() < k) top.emplace(d, uint32_t(s));
                    else if (d < top.top().first) { top.pop(); top.emplace(d, uint32_t(s)); }
                }
                write_results(top, k, out_ids + i * k, out_scores + i * k);
            },
            cancel, 1);
    }

    // Originals (when kept) or reconstructions from the codes.
    void get_vectors(const uint64_t* ids, size_t n, float* out) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        for (size_t i = 0; i < n; ++i) {
            const uint32_t s = ids_.find(ids[i]);
            if (s == IdMap::kEmpty) throw std::out_of_range("unknown id " + std::to_string(ids[i]));
            if (has_floats()) std::memcpy(out + i * p_.dim, floats_.row(s), p_.dim * 4);
            else quant_.decode(codes(s), out + i * p_.dim);
        }
    }

    // ---- persistence (io.hpp) --------------------------------------------
    void save(const std::string& path) const;
    static std::unique_ptr<HnswIndex> load(const std::string& path, bool mmap, bool verify, const std::string& isa);

private:
    friend struct IndexFile;
    static constexpr size_t kStripes = 1 << 12;  // plenty for any thread count; 160 KB

    // ---- layout -----------------------------------------------------------
    void init_layout() {
        dim_padded_ = quant_.dim_padded();
        M0_ = 2 * p_.M;
        off_codes_ = sizeof(uint32_t) * (1 + M0_);
        off_norm_ = off_codes_ + dim_padded_;
        rec_size_ = off_norm_ + sizeof(float);
        level_mult_ = 1.0 / std::log(double(p_.M));
        floats_.dim = p_.dim;
        floats_.enabled = true;  // until the quantizer is final, or for good with rescoring
    }

    uint32_t* links0(uint32_t s) const { return reinterpret_cast<uint32_t*>(data0_.data() + size_t(s) * rec_size_); }
    uint8_t* codes(uint32_t s) const { return reinterpret_cast<uint8_t*>(data0_.data() + size_t(s) * rec_size_ + off_codes_); }
    float norm2(uint32_t s) const {
        float v;
        std::memcpy(&v, data0_.data() + size_t(s) * rec_size_ + off_norm_, 4);
        return v;
    }
    void set_norm2(uint32_t s, float v) { std::memcpy(data0_.data() + size_t(s) * rec_size_ + off_norm_, &v, 4); }
    uint64_t label(size_t s) const { return reinterpret_cast<const uint64_t*>(labels_.data())[s]; }
    void set_label(uint32_t s, uint64_t v) { reinterpret_cast<uint64_t*>(labels_.data())[s] = v; }
    uint32_t* links(uint32_t s, int level) const {
        if (level == 0) return links0(s);
        return const_cast<uint32_t*>(upper_pool_.data()) + upper_off_[s] + size_t(level - 1) * (p_.M + 1);
    }
    size_t max_links(int level) const { return level == 0 ? M0_ : p_.M; }
    std::mutex& lock_of(uint32_t s) const { return locks_[s & (kStripes - 1)]; }

    void reserve(size_t slots) {
        if (slots <= capacity_) return;
        size_t cap = std::max<size_t>({slots, capacity_ + capacity_ / 2, 1024});
        data0_.resize(cap * rec_size_);
        labels_.resize(cap * 8);
        levels_.resize(cap, 0);
        for (auto& col : attr_cols_) col.resize(cap, kMissingAttr);
        flags_.resize(cap, 0);
        upper_off_.resize(cap, kNone);
        if (floats_.active()) floats_.buf.resize(cap * p_.dim * 4);
        ids_.reserve(n_live_ + slots - n_slots_);
        capacity_ = cap;
    }

    // ---- quantizer ----------------------------------------------------------
    struct Floats {
        Buffer buf;
        size_t dim = 0;
        bool enabled = false;
        bool active() const { return enabled; }
        bool empty_floats() const { return !enabled || buf.bytes() == 0; }
        float* row(uint32_t s) const { return reinterpret_cast<float*>(buf.data()) + size_t(s) * dim; }
        void drop() {
            buf.release();
            enabled = false;
        }
    };

    void train_quantizer() {
        // A strided sample of at most train_limit slots (live or not: all are in the graph).
        const size_t n = n_slots_;
        const size_t m = std::min(n, p_.train_limit);
        quant_.train(m, [&](size_t i) { return floats_.row(uint32_t(i * n / m)); });
        if (n >= p_.train_limit) quant_final_ = true;
        else next_retrain_ = 2 * n;
    }

    void reencode_all() {
        for (size_t s = 0; s < n_slots_; ++s) set_norm2(uint32_t(s), quant_.encode(floats_.row(uint32_t(s)), codes(uint32_t(s))));
    }

    int level_for(uint64_t id) const {
        // splitmix64: the additive constant keeps id == seed from hashing to 0.
        uint64_t h = (id ^ p_.seed) + 0x9E3779B97F4A7C15ULL;
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL;
        h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL;
        h ^= h >> 31;
        const double u = (double(h >> 11) + 1.0) * (1.0 / 9007199254740993.0);  // (0, 1]
        const int l = int(-std::log(u) * level_mult_);
        return std::min(l, kMaxLevel);
    }

    void clear_links(uint32_t s) {
        for (int l = levels_[s]; l >= 0; --l) links(s, l)[0] = 0;
    }

    void assign_level(uint32_t s, int level) {
        links0(s)[0] = 0;
        levels_[s] = uint8_t(level);
        if (level == 0) {
            upper_off_[s] = kNone;
            return;
        }
        upper_off_[s] = uint32_t(upper_pool_.size());
        upper_pool_.resize(upper_pool_.size() + size_t(level) * (p_.M + 1), 0);
    }

    int attr_index(const std::string& name) const {
        for (size_t a = 0; a < attr_names_.size(); ++a)
            if (attr_names_[a] == name) return int(a);
        return -1;
    }

    // Exact scan of the allowed items: over the codes (then the float
    // originals for the best ef when rescoring).
    void scan_filtered(const float* qf, size_t k, size_t ef, bool rescore, const Filter& f,
                       const std::vector<uint32_t>* slots, uint64_t* ids, float* scores) const {
        thread_local QueryCode q;
        quant_.make_query(qf, q);
        const size_t keep = rescore ? ef : k;
        MaxHeap top;
        auto visit = [&](uint32_t s) {
            if (!f(s)) return;
            const float d = dist(q, s);
            if (top.size() < keep) top.emplace(d, s);
            else if (d < top.top().first) {
                top.pop();
                top.emplace(d, s);
            }
        };
        if (slots) {
            // Scattered slots: fetch a few records ahead.
            const std::vector<uint32_t>& c = *slots;
            for (size_t i = 0; i < c.size(); ++i) {
                if (i + 4 < c.size()) prefetch_node(c[i + 4]);
                visit(c[i]);
            }
        } else {
            for (size_t s = 0; s < n_slots_; ++s) visit(uint32_t(s));
        }
        if (rescore) rescore_heap(qf, top);
        write_results(top, k, ids, scores);
    }

    void ensure_postings() const {
        if (postings_ok_.load(std::memory_order_acquire)) return;
        std::lock_guard<std::mutex> g(postings_mu_);
        if (postings_ok_.load(std::memory_order_relaxed)) return;
        std::vector<Postings> built(attr_cols_.size());
        for (size_t a = 0; a < attr_cols_.size(); ++a)
            for (size_t s = 0; s < n_slots_; ++s) {
                const int32_t v = attr_cols_[a][s];
                if (v != kMissingAttr && !(flags_[s] & kDeleted)) built[a][v].push_back(uint32_t(s));
            }
        postings_.swap(built);
        postings_ok_.store(true, std::memory_order_release);
    }

    void rescore_heap(const float* qf, MaxHeap& top) const {
        MaxHeap exact;
        while (!top.empty()) {
            const uint32_t s = top.top().second;
            top.pop();
            exact.emplace(exact_dist(qf, s), s);
        }
        top.swap(exact);
    }

    void check_new_ids(const uint64_t* ids, size_t n) const {
        std::vector<uint64_t> sorted(ids, ids + n);
        std::sort(sorted.begin(), sorted.end());
        auto dup = std::adjacent_find(sorted.begin(), sorted.end());
        if (dup != sorted.end()) throw std::invalid_argument("ids contains duplicate id " + std::to_string(*dup));
        for (size_t i = 0; i < n; ++i) {
            if (ids[i] == kNoId) throw std::invalid_argument("id 2**64-1 is reserved as the padding sentinel");
            if (ids_.find(ids[i]) != IdMap::kEmpty)
                throw std::invalid_argument("id " + std::to_string(ids[i]) + " is already in the index");
        }
    }

    // ---- distances ------------------------------------------------------------
    // Smaller is closer: -q.x for cosine and ip, the squared distance for l2.
    float dist(const QueryCode& q, uint32_t s) const {
        const int32_t dot = kern_.dot_u8s8(codes(s), q.q8.data(), q.q16.data(), dim_padded_);
        const float ip = q.offset + q.alpha * float(dot);
        if (p_.metric == Metric::L2) return q.norm2 + norm2(s) - 2.f * ip;
        return -ip;
    }

    float exact_dist(const float* q, uint32_t s) const {
        if (p_.metric == Metric::L2) return kern_.l2sq_f32(q, floats_.row(s), p_.dim);
        return -kern_.dot_f32(q, floats_.row(s), p_.dim);
    }

    float to_score(float d) const { return p_.metric == Metric::L2 ? std::max(0.f, d) : -d; }

    // The query form of a stored node, for node-to-node distances while building.
    void node_query(uint32_t s, QueryCode& qc) const {
        if (has_floats()) {
            quant_.make_query(floats_.row(s), qc);
            return;
        }
        thread_local std::vector<float> buf;
        buf.resize(p_.dim);
        quant_.decode(codes(s), buf.data());
        quant_.make_query(buf.data(), qc);
    }

    // Every cache line of a node's codes (the first is usually in flight already).
    void prefetch_node(uint32_t s) const {
        const char* c = reinterpret_cast<const char*>(codes(s));
        for (size_t off = 64; off < dim_padded_; off += 64) __builtin_prefetch(c + off);
    }

    // ---- construction ----------------------------------------------------------
    void copy_links(uint32_t s, int level, std::vector<uint32_t>& out) const {
        std::lock_guard<std::mutex> g(lock_of(s));
        const uint32_t* ll = links(s, level);
        out.assign(ll + 1, ll + 1 + ll[0]);
    }

    void greedy_build(const QueryCode& q, uint32_t& cur, float& curd, int level) const {
        thread_local std::vector<uint32_t> nb;
        for (bool changed = true; changed;) {
            changed = false;
            copy_links(cur, level, nb);
            for (uint32_t c : nb) {
                const float d = dist(q, c);
                if (d < curd) {
                    curd = d;
                    cur = c;
                    changed = true;
                }
            }
        }
    }

    // Best ef nodes at `level`, ascending by distance. Deleted nodes are walked
    // through but returned only if nothing else was found.
    std::vector<DistId> search_layer(const QueryCode& q, uint32_t ep, size_t ef, int level, uint32_t self) const {
        auto vl = visited_.get(capacity_);
        uint16_t* vis = vl->data();
        const uint16_t tag = vl->next_epoch();
        MaxHeap top, cand;
        DistId best_deleted{INFINITY, kNone};
        const float d0 = dist(q, ep);
        vis[ep] = tag;
        if (ep != self) {
            if (!(flags_[ep] & kDeleted)) top.emplace(d0, ep);
            else best_deleted = {d0, ep};
        }
        cand.emplace(-d0, ep);
        float bound = top.empty() ? INFINITY : d0;
        thread_local std::vector<uint32_t> nb;
        while (!cand.empty()) {
            const DistId c = cand.top();
            if (-c.first > bound && top.size() >= ef) break;
            cand.pop();
            copy_links(c.second, level, nb);
            for (uint32_t x : nb) {  // start all fetches first, as in search_base
                __builtin_prefetch(vis + x);
                __builtin_prefetch(codes(x));
            }
            for (uint32_t x : nb) {
                if (vis[x] == tag) continue;
                vis[x] = tag;
                const float d = dist(q, x);
                if (top.size() < ef || d < bound) {
                    cand.emplace(-d, x);
                    if (x == self) continue;
                    if (flags_[x] & kDeleted) {
                        if (d < best_deleted.first) best_deleted = {d, x};
                        continue;
                    }
                    top.emplace(d, x);
                    if (top.size() > ef) top.pop();
                    bound = top.top().first;
                }
            }
        }
        visited_.put(std::move(vl));
        std::vector<DistId> out(top.size());
        for (size_t i = top.size(); i-- > 0;) {
            out[i] = top.top();
            top.pop();
        }
        if (out.empty() && best_deleted.second != kNone) out.push_back(best_deleted);
        return out;
    }

    // The neighbour-selection heuristic (HNSW paper, algorithm 4): keep a
    // candidate only if it is closer to the base than to every neighbour kept
    // so far, which spreads links across directions. cand is ascending.
    void select_neighbors(const std::vector<DistId>& cand, size_t m, std::vector<uint32_t>& out) const {
        out.clear();
        if (cand.size() <= m) {
            for (const auto& c : cand) out.push_back(c.second);
            return;
        }
        thread_local std::vector<QueryCode> kept_q;
        if (kept_q.size() < m) kept_q.resize(m);
        for (const auto& c : cand) {
            if (out.size() >= m) break;
            bool good = true;
            for (size_t j = 0; j < out.size(); ++j)
                if (dist(kept_q[j], c.second) < c.first) {
                    good = false;
                    break;
                }
            if (good) {
                node_query(c.second, kept_q[out.size()]);
                out.push_back(c.second);
            }
        }
    }

    // Add s to n's list at `level`; when full, re-select n's neighbours.
    void link_back(uint32_t n, uint32_t s, int level) {
        std::lock_guard<std::mutex> g(lock_of(n));
        uint32_t* ll = links(n, level);
        const uint32_t cnt = ll[0];
        for (uint32_t j = 0; j < cnt; ++j)
            if (ll[1 + j] == s) return;
        const size_t cap = max_links(level);
        if (cnt < cap) {
            ll[1 + cnt] = s;
            ll[0] = cnt + 1;
            return;
        }
        thread_local QueryCode qn;
        node_query(n, qn);
        std::vector<DistId> cand;
        cand.reserve(cnt + 1);
        cand.emplace_back(dist(qn, s), s);
        for (uint32_t j = 0; j < cnt; ++j) cand.emplace_back(dist(qn, ll[1 + j]), ll[1 + j]);
        std::sort(cand.begin(), cand.end());
        thread_local std::vector<uint32_t> sel;
        select_neighbors(cand, cap, sel);
        // Keep pruned connections (the HNSW paper's keepPrunedConnections):
        // the heuristic may keep far fewer than cap links in a dense cluster
        // (near-duplicates dominate one another); refilling the free places
        // with the closest pruned candidates keeps in-links that a node may
        // not have anywhere else, so near-duplicates stay reachable.
        for (const DistId& c : cand) {
            if (sel.size() >= cap) break;
            if (std::find(sel.begin(), sel.end(), c.second) == sel.end()) sel.push_back(c.second);
        }
        for (size_t j = 0; j < sel.size(); ++j) ll[1 + j] = sel[j];
        ll[0] = uint32_t(sel.size());
    }

    void insert(uint32_t s, const float* x) {
        thread_local QueryCode q;
        quant_.make_query(x, q);
        const int level = levels_[s];
        std::unique_lock<std::mutex> g(global_mu_);
        if (entry_ == kNone) {
            entry_ = s;
            max_level_ = level;
            return;
        }
        const int maxl = max_level_;
        uint32_t cur = entry_;
        if (level <= maxl) g.unlock();
        float curd = dist(q, cur);
        for (int l = maxl; l > level; --l) greedy_build(q, cur, curd, l);
        // s's own lists are written level by level, but the links back to s
        // wait until all of them are: another thread's insert can only reach
        // s, and start its own lower-level search there, once s has out-links
        // at every level. (Linking back level by level, a concurrent insert
        // could descend to s at level 1 and find its level-0 list still
        // empty: its only neighbour would then be s.)
        std::vector<uint32_t> sel;
        thread_local std::vector<std::vector<uint32_t>> chosen;
        if (chosen.size() < size_t(kMaxLevel) + 1) chosen.resize(size_t(kMaxLevel) + 1);
        const int top_link = std::min(level, maxl);
        for (int l = top_link; l >= 0; --l) {
            chosen[size_t(l)].clear();
            const std::vector<DistId> cand = search_layer(q, cur, p_.ef_construction, l, s);
            if (cand.empty()) continue;
            select_neighbors(cand, p_.M, sel);
            {
                std::lock_guard<std::mutex> gs(lock_of(s));
                uint32_t* ll = links(s, l);
                for (size_t j = 0; j < sel.size(); ++j) ll[1 + j] = sel[j];
                ll[0] = uint32_t(sel.size());
            }
            chosen[size_t(l)] = sel;
            cur = cand.front().second;
        }
        for (int l = top_link; l >= 0; --l)
            for (uint32_t n : chosen[size_t(l)]) link_back(n, s, l);
        if (level > maxl) {
            entry_ = s;
            max_level_ = level;
        }
    }

    // Reused slots: every node that s links to loses s and picks new
    // neighbours among its own and s's, so the graph stays connected once s
    // takes another vector (hnswlib's repairConnectionsForUpdate does the
    // same for updated points). Links into s from nodes that s does not link
    // back to stay and simply lead to the new vector.
    void unlink_slots(const std::vector<uint32_t>& slots, size_t num_threads) {
        parallel_for(slots.size(), num_threads, [&](size_t i) {
            const uint32_t s = slots[i];
            std::vector<uint32_t> mine, theirs;
            std::vector<DistId> cand;
            std::vector<uint32_t> sel;
            QueryCode qn;
            for (int l = levels_[s]; l >= 0; --l) {
                copy_links(s, l, mine);
                for (uint32_t n : mine) {
                    if (n == s || levels_[n] < l) continue;
                    std::lock_guard<std::mutex> g(lock_of(n));
                    uint32_t* ll = links(n, l);
                    theirs.assign(ll + 1, ll + 1 + ll[0]);
                    if (std::find(theirs.begin(), theirs.end(), s) == theirs.end()) continue;
                    node_query(n, qn);
                    cand.clear();
                    for (uint32_t c : theirs)
                        if (c != s) cand.emplace_back(dist(qn, c), c);
                    for (uint32_t c : mine)
                        if (c != s && c != n && std::find(theirs.begin(), theirs.end(), c) == theirs.end())
                            cand.emplace_back(dist(qn, c), c);
                    std::sort(cand.begin(), cand.end());
                    select_neighbors(cand, max_links(l), sel);
                    for (size_t j = 0; j < sel.size(); ++j) ll[1 + j] = sel[j];
                    ll[0] = uint32_t(sel.size());
                }
            }
        });
        // A reused entry point hands over to the highest remaining node.
        std::vector<uint8_t> is_reused(n_slots_, 0);
        for (uint32_t s : slots) is_reused[s] = 1;
        if (entry_ != kNone && is_reused[entry_]) {
            entry_ = kNone;
            max_level_ = -1;
            for (size_t s = 0; s < n_slots_; ++s)
                if (!is_reused[s] && int(levels_[s]) > max_level_) {
                    max_level_ = levels_[s];
                    entry_ = uint32_t(s);
                }
        }
    }

    // ---- query-time search -------------------------------------------------------
    // Allowed(x) decides which visited nodes may be results; every node is
    // walked through. The no-deletion predicate is a constant and compiles away.
    // ef_walk == 0: the walk is bounded by the ef best allowed nodes (hnswlib's
    // way, right when nearly all pass: deleted nodes). ef_walk > 0 (filters):
    // it is bounded by the ef_walk best nodes of any kind, and the ef best
    // allowed ones among them are kept.
    template <class Allowed>
    void search_base(const QueryCode& q, uint32_t ep, size_t ef, MaxHeap& top, VisitedList& vl,
                     const Allowed& allowed, size_t ef_walk = 0) const {
        uint16_t* vis = vl.data();
        const uint16_t tag = vl.next_epoch();
        MaxHeap cand, seen;
        const bool by_all = ef_walk > 0;
        const size_t width = by_all ? ef_walk : ef;
        MaxHeap& bounding = by_all ? seen : top;
        const float d0 = dist(q, ep);
        vis[ep] = tag;
        if (allowed(ep)) top.emplace(d0, ep);
        if (by_all) seen.emplace(d0, ep);
        float bound = bounding.empty() ? INFINITY : d0;
        cand.emplace(-d0, ep);
        thread_local std::vector<uint32_t> fresh;
        fresh.resize(M0_);
        while (!cand.empty()) {
            const DistId c = cand.top();
            if (-c.first > bound && bounding.size() >= width) break;
            cand.pop();
            const uint32_t* ll = links0(c.second);
            const uint32_t cnt = ll[0];
            // Gather the unvisited neighbours and start fetching all their
            // codes before computing any distance, so the cache misses of
            // one neighbour list overlap instead of queueing one by one.
            for (uint32_t j = 1; j <= cnt; ++j) __builtin_prefetch(vis + ll[j]);
            size_t m = 0;
            for (uint32_t j = 1; j <= cnt; ++j) {
                const uint32_t x = ll[j];
                if (vis[x] == tag) continue;
                vis[x] = tag;
                fresh[m++] = x;
                __builtin_prefetch(codes(x));
            }
            for (size_t i = 0; i < m; ++i) {
                if (i + 1 < m) prefetch_node(fresh[i + 1]);
                const uint32_t x = fresh[i];
                const float d = dist(q, x);
                if (bounding.size() < width || d < bound) {
                    cand.emplace(-d, x);
                    if (by_all) {
                        seen.emplace(d, x);
                        if (seen.size() > width) seen.pop();
                    }
                    if (allowed(x) && (top.size() < ef || d < top.top().first)) {
                        top.emplace(d, x);
                        if (top.size() > ef) top.pop();
                    }
                    if (!bounding.empty()) bound = bounding.top().first;
                }
            }
            if (!cand.empty()) __builtin_prefetch(links0(cand.top().second));
        }
    }

    void write_results(MaxHeap& top, size_t k, uint64_t* ids, float* scores) const {
        while (top.size() > k) top.pop();
        const size_t m = top.size();
        for (size_t i = m; i-- > 0;) {
            ids[i] = label(top.top().second);
            scores[i] = to_score(top.top().first);
            top.pop();
        }
        for (size_t i = m; i < k; ++i) {
            ids[i] = kNoId;
            scores[i] = std::numeric_limits<float>::quiet_NaN();
        }
    }

    void search_one(const float* qf, size_t k, size_t ef, bool rescore, uint64_t* ids, float* scores,
                    const Filter* filter = nullptr, size_t ef_walk = 0) const {
        MaxHeap top;
        if (entry_ != kNone && n_live_ > 0) {
            thread_local QueryCode q;
            quant_.make_query(qf, q);
            uint32_t cur = entry_;
            float curd = dist(q, cur);
            for (int l = max_level_; l > 0; --l) {
                for (bool changed = true; changed;) {
                    changed = false;
                    const uint32_t* ll = links(cur, l);
                    for (uint32_t j = 1; j <= ll[0]; ++j) {
                        const float d = dist(q, ll[j]);
                        if (d < curd) {
                            curd = d;
                            cur = ll[j];
                            changed = true;
                        }
                    }
                }
            }
            auto vl = visited_.get(capacity_);
            if (filter) search_base(q, cur, ef, top, *vl, *filter, ef_walk);
            else if (n_live_ == n_slots_) search_base(q, cur, ef, top, *vl, [](uint32_t) { return true; });
            else search_base(q, cur, ef, top, *vl, [this](uint32_t x) { return !(flags_[x] & kDeleted); });
            visited_.put(std::move(vl));
            if (rescore) rescore_heap(qf, top);
        }
        write_results(top, k, ids, scores);
    }

    // ---- state -----------------------------------------------------------------
    IndexParams p_;
    Quantizer quant_;
    Kernels kern_;
    size_t dim_padded_ = 0, M0_ = 0, off_codes_ = 0, off_norm_ = 0, rec_size_ = 0;
    double level_mult_ = 0;

    Buffer data0_, labels_;
    std::vector<uint8_t> levels_, flags_;
    std::vector<uint32_t> upper_off_, upper_pool_, free_;
    std::vector<std::string> attr_names_;
    std::vector<std::vector<int32_t>> attr_cols_;  // [attribute][slot]
    // Posting lists: per attribute, value -> the live slots holding it, built
    // on the first filtered search after an add (removals leave them valid:
    // the filter rejects deleted slots anyway).
    using Postings = std::unordered_map<int32_t, std::vector<uint32_t>>;
    mutable std::mutex postings_mu_;
    mutable std::atomic<bool> postings_ok_{false};
    mutable std::vector<Postings> postings_;
    Floats floats_;
    IdMap ids_;
    size_t capacity_ = 0, n_slots_ = 0, n_live_ = 0;
    bool quant_final_ = false;
    size_t next_retrain_ = 0;
    uint64_t next_auto_id_ = 0;
    uint32_t entry_ = kNone;
    int max_level_ = -1;

    std::unique_ptr<std::mutex[]> locks_;
    std::mutex global_mu_;
    mutable std::shared_mutex rw_;
    mutable VisitedPool visited_;
};

}  // namespace simsearch
