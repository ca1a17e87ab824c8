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
// Concurrency: add/remove hold the index lock exclusively and run inserts on
// a thread pool with striped per-node locks (never two held at once);
// searches, saves, compaction and every read of mutable state hold it
// shared; searches read links without node locks.
//
// Next to this header: construction.hpp (how nodes are linked; included at
// the end of this file), filter.hpp (the filtered-search policy passed into
// the walk), compaction.hpp, io.hpp (file layout, save) and load.hpp.
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
#include <utility>
#include <vector>

#include "buffer.hpp"
#include "filter.hpp"
#include "idmap.hpp"
#include "kernels/dispatch.hpp"
#include "parallel.hpp"
#include "quantizer.hpp"
#include "visited.hpp"

namespace simsearch {

enum class Metric : uint32_t { Cosine = 0, IP = 1, L2 = 2 };

constexpr uint32_t kNone = 0xFFFFFFFFu;
constexpr uint64_t kNoId = std::numeric_limits<uint64_t>::max();
constexpr int kMaxLevel = 31;

// An added id that is already in the index: simsearch.DuplicateIdError.
struct DuplicateId : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

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
    // Parameters fixed at construction: read without the lock.
    const IndexParams& params() const { return p_; }
    size_t dim() const { return p_.dim; }
    // State that add/remove/set_isa change: read under the shared lock, so a
    // caller on another thread never sees a half-updated index.
    size_t size() const { return read([&] { return n_live_; }); }
    size_t n_slots() const { return read([&] { return n_slots_; }); }
    size_t n_deleted() const { return read([&] { return n_slots_ - n_live_; }); }
    const char* isa() const { return read([&] { return kern_.name; }); }
    bool quantizer_final() const { return read([&] { return quant_final_; }); }
    bool has_floats() const { return read([&] { return floats_kept(); }); }
    uint64_t next_auto_id() const { return read([&] { return next_auto_id_; }); }
    int max_level() const { return read([&] { return max_level_; }); }
    std::vector<float> quantizer_lo() const { return read([&] { return quant_.lo(); }); }
    std::vector<float> quantizer_step() const { return read([&] { return quant_.step(); }); }
    // Install trained quantizer ranges as final (no retraining). Only on an
    // index that has never held a vector: existing codes were made with the
    // old ranges, and a mapped file's codes cannot be rewritten.
    void set_quantizer(const float* lo, const float* step) {
        std::unique_lock<std::shared_mutex> w(rw_);
        if (n_slots_ > 0) throw std::invalid_argument("set_quantizer needs an empty index (this one has held vectors)");
        quant_.set(lo, step);
        quant_final_ = true;
        if (!p_.keep_floats) floats_.drop();
    }
    std::vector<std::string> attribute_names() const { return read([&] { return attrs_.names; }); }
    // Default search effort, saved with the index; searches take theirs as an argument.
    size_t ef() const { return ef_.load(std::memory_order_relaxed); }
    void set_ef(size_t ef) {
        if (ef < 1) throw std::invalid_argument("ef must be positive");
        ef_.store(ef, std::memory_order_relaxed);
    }

    void set_isa(const std::string& isa) {
        const Kernels k = select_kernels(isa);
        std::unique_lock<std::shared_mutex> w(rw_);
        kern_ = k;
    }

    size_t memory_bytes() const {
        std::shared_lock<std::shared_mutex> r(rw_);
        size_t b = data0_.mapped() ? 0 : data0_.bytes();
        b += labels_.mapped() ? 0 : labels_.bytes();
        b += floats_.buf.mapped() ? 0 : floats_.buf.bytes();
        b += levels_.capacity() + flags_.capacity() + upper_off_.capacity() * 4 + upper_pool_.capacity() * 4;
        b += free_.capacity() * 4 + ids_.memory_bytes() + kStripes * sizeof(std::mutex);
        for (const auto& col : attrs_.cols) b += col.capacity() * 4;
        return b + postings_.memory_bytes();
    }

    // ---- ids ------------------------------------------------------------
    void contains(const uint64_t* ids, size_t n, bool* out) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        for (size_t i = 0; i < n; ++i) out[i] = ids_.find(ids[i]) != IdMap::kEmpty;
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
        if (n_slots_ + n - std::min(n, free_.size()) >= size_t(kNone) - 1)
            throw std::invalid_argument("index is full: at most 2^32 - 2 slots");
        for (const std::string& name : attr_names)
            if (attrs_.index_of(name) < 0) {
                attrs_.names.push_back(name);
                attrs_.cols.emplace_back(capacity_, kMissingAttr);
            }

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
            for (auto& col : attrs_.cols) col[s] = kMissingAttr;
            for (size_t j = 0; j < attr_names.size(); ++j) attrs_.cols[size_t(attrs_.index_of(attr_names[j]))][s] = attr_values[j][i];
            // A reused slot keeps its level: nodes that still link to it at
            // upper levels must find a list there.
            if (i < n_reuse) clear_links(s);
            else assign_level(s, level_for(ids[i]));
            ids_.insert(ids[i], s);
            next_auto_id_ = std::max(next_auto_id_, ids[i] == kNoId - 1 ? ids[i] : ids[i] + 1);
        }
        if (retrain) reencode_all();
        postings_.invalidate();
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
        rescore = rescore && floats_kept();
        ef = std::max(ef, k);
        parallel_for(
            n, num_threads,
            [&](size_t i) { search_one(q + i * p_.dim, k, ef, rescore, out_ids + i * k, out_scores + i * k); },
            cancel, n > 256 ? 16 : 1);
    }

    // Filtered search. ids/n_ids: allowed ids (unknown ones are ignored);
    // conditions: attribute name -> allowed values. filter.hpp plans it: an
    // exact scan of the candidates, or a walk through every node, bounded by
    // a candidate list widened as the share that passes falls, that keeps
    // only allowed ones. A walk that finds fewer than k allowed items falls
    // back to the scan, so every query gets k results whenever k items pass.
    void search_filtered(const float* q, size_t n, size_t k, size_t ef, bool rescore, size_t num_threads,
                         const uint64_t* ids, size_t n_ids, bool has_ids,
                         const std::vector<std::pair<std::string, std::vector<int32_t>>>& conditions,
                         double brute_fraction, double walk_cost, uint64_t* out_ids, float* out_scores,
                         const CancelCheck& cancel) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        rescore = rescore && floats_kept();
        ef = std::max(ef, k);
        const FilterPlan plan = plan_filter(FilterSources{flags_.data(), n_slots_, n_live_, ids_, attrs_, postings_},
                                            ids, n_ids, has_ids, conditions, ef, brute_fraction, walk_cost);
        const std::vector<uint32_t>* scan_list = plan.scan_all ? nullptr : &plan.candidates;
        parallel_for(
            n, num_threads,
            [&](size_t i) {
                const float* qi = q + i * p_.dim;
                uint64_t* oi = out_ids + i * k;
                float* os = out_scores + i * k;
                if (!plan.scan) {
                    search_one(qi, k, ef, rescore, oi, os, &plan.filter, plan.ef_walk);
                    if (oi[k - 1] != kNoId) return;
                }
                scan_filtered(qi, k, ef, rescore, plan.filter, scan_list, oi, os);
            },
            cancel, n > 256 ? 16 : 1);
    }

    // Exact search over the int8 codes (no graph): the reference that
    // separates what quantization loses from what the graph loses.
    void search_exact(const float* q, size_t n, size_t k, bool use_floats, size_t num_threads,
                      uint64_t* out_ids, float* out_scores, const CancelCheck& cancel) const {
        std::shared_lock<std::shared_mutex> r(rw_);
        if (use_floats && !floats_kept())
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
            if (floats_kept()) std::memcpy(out + i * p_.dim, floats_.row(s), p_.dim * 4);
            else quant_.decode(codes(s), out + i * p_.dim);
        }
    }

    // ---- persistence (io.hpp) --------------------------------------------
    void save(const std::string& path) const;
    static std::unique_ptr<HnswIndex> load(const std::string& path, bool mmap, bool verify, const std::string& isa);

private:
    friend struct IndexFile;
    friend struct FileChecks;
    friend std::unique_ptr<HnswIndex> compacted(const HnswIndex& ix, size_t num_threads);
    template <class F>
    auto read(F f) const -> decltype(f()) {
        std::shared_lock<std::shared_mutex> r(rw_);
        return f();
    }
    bool floats_kept() const { return !floats_.empty_floats(); }
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
        for (auto& col : attrs_.cols) col.resize(cap, kMissingAttr);
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
                throw DuplicateId("id " + std::to_string(ids[i]) + " is already in the index");
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
        if (floats_kept()) {
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

    // The walks' first step on a neighbour list: mark the unvisited ones
    // visited, collect them into `fresh` and start fetching their codes
    // before any distance is computed, so the cache misses of one list
    // overlap instead of queueing one by one. Returns how many were fresh.
    size_t gather_unvisited(const uint32_t* nb, size_t n, uint16_t* vis, uint16_t tag, uint32_t* fresh) const {
        for (size_t j = 0; j < n; ++j) __builtin_prefetch(vis + nb[j]);
        size_t m = 0;
        for (size_t j = 0; j < n; ++j) {
            const uint32_t x = nb[j];
            if (vis[x] == tag) continue;
            vis[x] = tag;
            fresh[m++] = x;
            __builtin_prefetch(codes(x));
        }
        return m;
    }

    // ---- construction (construction.hpp) -----------------------------------------
    void copy_links(uint32_t s, int level, std::vector<uint32_t>& out) const;
    void greedy_build(const QueryCode& q, uint32_t& cur, float& curd, int level) const;
    std::vector<DistId> search_layer(const QueryCode& q, uint32_t ep, size_t ef, int level, uint32_t self) const;
    void select_neighbors(const std::vector<DistId>& cand, size_t m, std::vector<uint32_t>& out) const;
    void link_back(uint32_t n, uint32_t s, int level);
    void insert(uint32_t s, const float* x);
    void unlink_slots(const std::vector<uint32_t>& slots, size_t num_threads);

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
            const size_t m = gather_unvisited(ll + 1, ll[0], vis, tag, fresh.data());
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
    Attributes attrs_;
    Postings postings_;
    Floats floats_;
    IdMap ids_;
    size_t capacity_ = 0, n_slots_ = 0, n_live_ = 0;
    bool quant_final_ = false;
    size_t next_retrain_ = 0;
    uint64_t next_auto_id_ = 0;
    std::atomic<size_t> ef_{64};
    uint32_t entry_ = kNone;
    int max_level_ = -1;

    std::unique_ptr<std::mutex[]> locks_;
    std::mutex global_mu_;
    mutable std::shared_mutex rw_;
    mutable VisitedPool visited_;
};

}  // namespace simsearch

#include "construction.hpp"
