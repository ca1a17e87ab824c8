// Building the graph: where a new node links (HNSW paper, algorithms 1-4,
// after hnswlib's addPoint), linking back, and repairing the links around a
// reused slot. Member definitions of HnswIndex (graph.hpp), which includes
// this file at its end.
#pragma once
#include <algorithm>
#include <mutex>
#include <vector>

#include "graph.hpp"

namespace simsearch {

inline void HnswIndex::copy_links(uint32_t s, int level, std::vector<uint32_t>& out) const {
    std::lock_guard<std::mutex> g(lock_of(s));
    const uint32_t* ll = links(s, level);
    out.assign(ll + 1, ll + 1 + ll[0]);
}

inline void HnswIndex::greedy_build(const QueryCode& q, uint32_t& cur, float& curd, int level) const {
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
inline std::vector<DistId> HnswIndex::search_layer(const QueryCode& q, uint32_t ep, size_t ef, int level, uint32_t self) const {
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
    thread_local std::vector<uint32_t> nb, fresh;
    while (!cand.empty()) {
        const DistId c = cand.top();
        if (-c.first > bound && top.size() >= ef) break;
        cand.pop();
        copy_links(c.second, level, nb);
        // As in search_base: fetch each fresh neighbour's remaining code
        // lines while the one before it is scored. A node's codes span
        // several cache lines, and at a million nodes nearly every one is a miss.
        fresh.resize(nb.size());
        const size_t m = gather_unvisited(nb.data(), nb.size(), vis, tag, fresh.data());
        for (size_t i = 0; i < m; ++i) {
            if (i + 1 < m) prefetch_node(fresh[i + 1]);
            const uint32_t x = fresh[i];
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
inline void HnswIndex::select_neighbors(const std::vector<DistId>& cand, size_t m, std::vector<uint32_t>& out) const {
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
inline void HnswIndex::link_back(uint32_t n, uint32_t s, int level) {
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
    for (uint32_t j = 0; j < cnt; ++j) __builtin_prefetch(codes(ll[1 + j]));
    thread_local QueryCode qn;
    node_query(n, qn);
    std::vector<DistId> cand;
    cand.reserve(cnt + 1);
    cand.emplace_back(dist(qn, s), s);
    for (uint32_t j = 0; j < cnt; ++j) {
        if (j + 1 < cnt) prefetch_node(ll[2 + j]);
        cand.emplace_back(dist(qn, ll[1 + j]), ll[1 + j]);
    }
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

inline void HnswIndex::insert(uint32_t s, const float* x) {
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
inline void HnswIndex::unlink_slots(const std::vector<uint32_t>& slots, size_t num_threads) {
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

}  // namespace simsearch
