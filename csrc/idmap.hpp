// User id (uint64) -> slot (uint32): open addressing with linear probing.
// The table has any size (fastrange maps the hash onto it, no power of two)
// and is kept at most 80% full: about 20 bytes per id, a third of what a
// std::unordered_map node costs; this matters for the memory per vector.
#pragma once
#include <cstdint>
#include <vector>

namespace simsearch {

class IdMap {
public:
    static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
    static constexpr uint32_t kTomb = 0xFFFFFFFEu;

    size_t size() const { return size_; }
    size_t memory_bytes() const { return table_.capacity() * sizeof(Entry); }

    uint32_t find(uint64_t key) const {
        if (table_.empty()) return kEmpty;
        size_t i = slot_of(key);
        while (true) {
            const Entry& e = table_[i];
            if (e.val == kEmpty) return kEmpty;
            if (e.val != kTomb && e.key == key) return e.val;
            i = next(i);
        }
    }

    void insert(uint64_t key, uint32_t val) {  // key must be absent
        if ((size_ + tombs_ + 1) * 5 > table_.size() * 4) rehash(std::max<size_t>(16, (size_ + 1) * 3 / 2 * 5 / 4));
        size_t i = slot_of(key);
        while (table_[i].val != kEmpty && table_[i].val != kTomb) i = next(i);
        if (table_[i].val == kTomb) --tombs_;
        table_[i] = Entry{key, val};
        ++size_;
    }

    bool erase(uint64_t key) {
        if (table_.empty()) return false;
        size_t i = slot_of(key);
        while (true) {
            Entry& e = table_[i];
            if (e.val == kEmpty) return false;
            if (e.val != kTomb && e.key == key) {
                e.val = kTomb;
                --size_;
                ++tombs_;
                return true;
            }
            i = next(i);
        }
    }

    void clear() {
        table_.clear();
        table_.shrink_to_fit();
        size_ = tombs_ = 0;
    }

    // Room for n ids without rehashing.
    void reserve(size_t n) {
        if ((n + tombs_) * 5 > table_.size() * 4) rehash(n * 5 / 4 + 1);
    }

private:
    struct Entry {
        uint64_t key;
        uint32_t val;
    };

    static size_t hash(uint64_t x) {  // splitmix64 finalizer
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebULL;
        x ^= x >> 31;
        return size_t(x);
    }

    size_t slot_of(uint64_t key) const {  // fastrange: hash * size / 2^64
        return size_t((unsigned __int128)hash(key) * table_.size() >> 64);
    }
    size_t next(size_t i) const { return i + 1 == table_.size() ? 0 : i + 1; }

    void rehash(size_t want) {
        const size_t cap = std::max<size_t>(16, want);
        std::vector<Entry> old;
        old.swap(table_);
        table_.assign(cap, Entry{0, kEmpty});
        table_.shrink_to_fit();
        size_ = tombs_ = 0;
        for (const Entry& e : old)
            if (e.val != kEmpty && e.val != kTomb) insert(e.key, e.val);
    }

    std::vector<Entry> table_;
    size_t size_ = 0, tombs_ = 0;
};

}  // namespace simsearch
